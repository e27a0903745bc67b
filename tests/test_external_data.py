"""Graphs at the protobuf limit ship as model.onnx plus ONE model.onnx_data, and still validate and publish.

The 2 GB limit is lowered for these tests so a tiny model takes the large-model path; the real > 2 GB run is in
benchmarks/big_checkpoint.py.
"""

import json

import onnx
import onnxruntime
import pytest

from bot.export import onnx as onnx_export
from bot.job import Job, PublishJob, make_options
from bot.pipeline import run_export
from bot.publish import OPENED, publish
from tests.emulators.hub import HubEmulator


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 4096)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_large_graphs_get_one_external_data_file(tiny, tmp_path, small_limit, exporter):
    result = run_export(Job(model=str(tiny("bert")), output_dir=tmp_path,
                            options=make_options(["default"], ["onnx"], exporter=exporter)))
    assert result.ok, [(f.error, f.validation and f.validation.to_dict()) for f in result.failures]
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["model.onnx", "model.onnx_data"]
    onnx.checker.check_model(str(tmp_path / "onnx" / "model.onnx"))
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx"), load_external_data=False)
    locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx_data"}
    onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    (artifact,) = json.loads((tmp_path / "export_manifest.json").read_text())["artifacts"]
    assert set(artifact["files"]) == {"onnx/model.onnx", "onnx/model.onnx_data"}
    assert artifact["size"] == sum(f["size"] for f in artifact["files"].values())


def test_external_data_is_published_with_its_graph(tiny, tmp_path, small_limit):
    files = {p.name: p.read_bytes() for p in tiny("bert").iterdir() if p.is_file()}
    with HubEmulator() as hub:
        hub.create_repo("acme/big", files)
        result = publish(PublishJob(repo_id="acme/big", options=make_options(["default"], ["onnx"],
                                                                             exporter="torchscript")),
                         endpoint=hub.url, token="hf_test_token", work_dir=tmp_path)
        assert result.status == OPENED
        pr_files = hub.files("acme/big", "refs/pr/1")
        assert {"onnx/model.onnx", "onnx/model.onnx_data"} <= set(pr_files)
        assert "onnx/model.onnx_data" in hub.get_commit("acme/big", "refs/pr/1").lfs


def test_a_side_file_over_a_chunk_is_rechunked_from_disk(tiny, tmp_path, small_limit, monkeypatch):
    """dynamo writes one side file; over the chunk size it is copied into chunks a block at a time, never loaded
    into memory as a whole (onnx.load with external data would hold the model's weights a second time)."""
    from bot.export import external

    monkeypatch.setattr(external, "CHUNK_BYTES", 64 * 1024)
    load = onnx.load

    def graph_only(path, *args, **kwargs):
        assert kwargs.get("load_external_data") is False, "the exporter's weights were loaded into memory"
        return load(path, *args, **kwargs)

    monkeypatch.setattr(onnx, "load", graph_only)
    result = run_export(Job(model=str(tiny("bert")), output_dir=tmp_path,
                            options=make_options(["default"], ["onnx"], exporter="dynamo")))
    monkeypatch.setattr(onnx, "load", load)
    assert result.ok, [(f.error, f.validation and f.validation.to_dict()) for f in result.failures]
    chunks = sorted(p.name for p in (tmp_path / "onnx").iterdir() if p.name != "model.onnx")
    assert len(chunks) >= 2 and chunks[:2] == ["model.onnx_data", "model.onnx_data_1"]
    assert all((tmp_path / "onnx" / name).stat().st_size <= 64 * 1024 for name in chunks)
    onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_large_graphs_read_a_tied_head_as_stored(tmp_path, small_limit, monkeypatch, exporter):
    """Over 2 GB a tied LM head is `Gemm(x, W, transB=1)` on the one stored embedding, not `MatMul(x, Transpose(W))`:
    the lean session validation uses there would transpose the whole embedding on every run (0.41 GB at 2.2 GB).
    A vocabulary of 300 makes the head larger than what dynamo's optimiser folds into a transposed copy."""
    from bot import pipeline, validate
    from tests.tiny import build_checkpoint

    monkeypatch.setattr(validate, "LEAN_SESSION_BYTES", 4096)  # validate as a > 2 GB graph is: lean, model released
    monkeypatch.setattr(pipeline, "RELEASE_MODEL_BYTES", 4096)
    checkpoint = build_checkpoint(tmp_path / "gpt2", "gpt2", "causal-lm", lively=True, vocab_size=300)
    out = tmp_path / "out"
    result = run_export(Job(model=str(checkpoint), output_dir=out,
                            options=make_options(["causal-lm-with-past"], ["onnx"], exporter=exporter)))
    assert result.ok, [(f.error, f.validation and f.validation.to_dict()) for f in result.failures]
    (artifact,) = result.artifacts
    assert artifact.validation.generation["passed"]
    graph = onnx.load(str(out / "onnx" / "model.onnx"), load_external_data=False).graph
    nodes = [graph.node] + [[n for a in n.attribute for n in a.g.node] for n in graph.node if n.op_type == "If"]
    nodes = [n for group in nodes for n in group]
    stored = {t.name: list(t.dims) for t in graph.initializer}
    assert not [n.name for n in nodes if n.op_type == "Transpose" and len(stored.get(n.input[0], ())) == 2]
    heads = [n for n in nodes if n.op_type == "Gemm" and stored.get(n.input[1]) == [300, 32]]
    assert heads and all(a.i == 1 for n in heads for a in n.attribute if a.name == "transB")
