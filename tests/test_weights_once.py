"""What a PR adds: a tied weight is stored once per file, and any checkpoint dtype or sharding exports alike.

GPT-2's `lm_head` is its input embedding (`wte`). The TorchScript-based ONNX exporter used to fold the head's
transpose into a second initializer, storing the embedding twice; these tests read the written files.
"""

import hashlib
import json
import zipfile

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from bot.job import Job, make_options
from bot.pipeline import run_export
from tests.tiny import build_checkpoint


def _digests(array: np.ndarray) -> set[str]:
    """The content of an initializer as stored and, for a matrix, as its transpose (a folded `Transpose`)."""
    views = [array] + ([array.T] if array.ndim == 2 else [])
    return {hashlib.sha256(np.ascontiguousarray(v).tobytes() + str(v.shape).encode()).hexdigest() for v in views}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _duplicates(path) -> list[str]:
    seen: dict[str, str] = {}
    duplicates = []
    for tensor in onnx.load(str(path)).graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.size < 64:  # scalars and shape constants may repeat; weights may not
            continue
        hits = {seen[d] for d in _digests(array) if d in seen}
        duplicates += [f"{tensor.name} == {other}" for other in hits]
        seen.update({d: tensor.name for d in _digests(array)})
    return duplicates


@pytest.fixture(scope="module")
def tied_gpt2(tmp_path_factory):
    path = build_checkpoint(tmp_path_factory.mktemp("gpt2") / "ckpt", "gpt2", "causal-lm")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.lm_head.weight is model.transformer.wte.weight  # the premise: a tied head
    return path


def test_tied_lm_head_is_stored_once_in_each_file(tied_gpt2, tmp_path):
    result = run_export(Job(model=str(tied_gpt2), output_dir=tmp_path,
                            options=make_options(["causal-lm"], ["onnx", "torchscript"])))
    assert result.ok, [f.error for f in result.failures]
    graph = tmp_path / "onnx" / "model.onnx"
    assert _duplicates(graph) == []
    embedding = 99 * 32 * 4  # vocab x n_embd float32
    model = onnx.load(str(graph))
    assert sum(numpy_helper.to_array(t).nbytes == embedding for t in model.graph.initializer) == 1
    with zipfile.ZipFile(tmp_path / "torchscript" / "model.pt") as archive:
        records = [i.file_size for i in archive.infolist() if "/data/" in i.filename]
    assert records.count(embedding) == 1

    # the PR description states what merging adds, against the checkpoint's weights
    from bot.card import context, render_pr_description
    from bot.render import human_size

    added = (tmp_path / "onnx" / "model.onnx").stat().st_size + (tmp_path / "torchscript" / "model.pt").stat().st_size
    weights = (tied_gpt2 / "model.safetensors").stat().st_size
    text = render_pr_description(context(result, "acme/tiny-gpt2"))
    assert f"In all, **{human_size(added)}** of exports, {added / weights:.2f}x the checkpoint's weights" in text


def test_sharded_bf16_checkpoint_exports_fp32_graphs(tmp_path):
    source = build_checkpoint(tmp_path / "fp32", "gpt2", "causal-lm")
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(source).to(torch.bfloat16).save_pretrained(sharded, max_shard_size="20KB")
    shards = sorted(p.name for p in sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (sharded / "model.safetensors.index.json").exists()

    out = tmp_path / "out"
    result = run_export(Job(model=str(sharded), output_dir=out,
                            options=make_options(["causal-lm-with-past"], ["onnx", "torchscript"])))
    assert result.ok, [(f.error, f.validation and f.validation.to_dict()) for f in result.failures]
    initializers = onnx.load(str(out / "onnx" / "model.onnx")).graph.initializer
    assert {t.data_type for t in initializers if len(t.dims) == 2} == {onnx.TensorProto.FLOAT}
    manifest = json.loads((out / "export_manifest.json").read_text())
    assert set(shards) | {"model.safetensors.index.json"} <= set(manifest["source"]["files"])
    assert all(a["validation"]["generation"]["passed"] for a in manifest["artifacts"])


def test_auto_tries_dynamo_first_for_large_weights(tiny, tmp_path, monkeypatch):
    from bot.export import onnx as onnx_export

    monkeypatch.setattr(onnx_export, "DYNAMO_FIRST_BYTES", 1)  # every checkpoint counts as large
    result = run_export(Job(model=str(tiny("bert")), output_dir=tmp_path, options=make_options(["default"], ["onnx"])))
    assert result.ok, [f.error for f in result.failures]
    assert [a.exporter for a in result.artifacts] == ["dynamo"]


def test_encoder_decoder_torchscript_is_one_file_storing_each_shared_tensor_once(tmp_path):
    """t5's encoder, decoder and decoder-with-past are submodules of one TorchScript file: the shared embedding (also
    the tied LM head) and the decoder's weights, used by both decoding steps, are each stored once."""
    from safetensors.torch import load_file

    checkpoint = build_checkpoint(tmp_path / "t5", "t5", "seq2seq-lm")
    out = tmp_path / "out"
    result = run_export(Job(model=str(checkpoint), output_dir=out,
                            options=make_options(["seq2seq-lm-with-past"], ["torchscript"])))
    assert result.ok, [f.error for f in result.failures]
    assert sorted(p.name for p in (out / "torchscript").iterdir()) == ["model.pt"]
    with zipfile.ZipFile(out / "torchscript" / "model.pt") as archive:
        records = [archive.read(i) for i in archive.infolist() if "data/" in i.filename]
    weights = load_file(checkpoint / "model.safetensors")  # each tensor once, the tied head not at all
    stored = sorted(_digest(r) for r in records if len(r) >= 256)  # matrices, not norms or traced constants
    assert stored == sorted(_digest(t.numpy().tobytes()) for t in weights.values() if t.nbytes >= 256)
    assert stored.count(_digest(weights["shared.weight"].numpy().tobytes())) == 1
    assert sum(map(len, records)) < sum(t.nbytes for t in weights.values()) * 1.01  # three files: 2.6x (t5-small)

    module = torch.jit.load(str(out / "torchscript" / "model.pt"))
    children = dict(module.named_children())
    assert list(children) == ["encoder_model", "decoder_model", "decoder_with_past_model"]
    assert children["decoder_model"].model.shared.weight.data_ptr() == \
        children["decoder_with_past_model"].model.shared.weight.data_ptr()  # one tensor once loaded, too

    # the card shows one file and each submodule's contract; the PR's total counts its bytes once
    from bot.card import context, render_card_section, render_pr_description
    from bot.render import human_size

    ctx = context(result, "acme/tiny-t5")
    card = render_card_section(ctx)
    assert card.count("`torchscript/model.pt`") == 1
    assert "`encoder_model`: input_ids, attention_mask → last_hidden_state; `decoder_model`: " in card
    size = (out / "torchscript" / "model.pt").stat().st_size
    assert f"In all, **{human_size(size)}** of exports" in render_pr_description(ctx)


def test_half_precision_weights_load_from_float32_copies(tmp_path, monkeypatch, caplog):
    """Over FLOAT32_COPY_BYTES, bf16/fp16 safetensors are rewritten as float32 files a block at a time and loaded
    from there (transformers then maps them instead of converting: 6.94 -> 4.9 GB peak for 2.22 GB of bf16 shards).
    The model is the same, bit for bit, as transformers' own conversion; the copies are gone afterwards; with no disk
    for them the stored files are loaded."""
    import logging
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM

    from bot import upcast

    source = build_checkpoint(tmp_path / "fp32", "llama", "causal-lm")
    half = tmp_path / "half"
    AutoModelForCausalLM.from_pretrained(source).to(torch.bfloat16).save_pretrained(half, max_shard_size="20KB")
    weights = sorted(half.glob("*.safetensors"))
    assert len(weights) > 1
    monkeypatch.setattr(upcast, "FLOAT32_COPY_BYTES", 1)
    monkeypatch.setattr(upcast, "BLOCK_BYTES", 1024)  # several blocks per tensor
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()

    converted = AutoModelForCausalLM.from_pretrained(half, dtype=torch.float32).state_dict()
    with upcast.float32_files(half, weights) as folder:
        assert folder != half and {p.name for p in weights} <= {p.name for p in folder.iterdir()}
        loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
    assert set(loaded) == set(converted)
    assert all(loaded[k].dtype == converted[k].dtype and torch.equal(loaded[k], converted[k]) for k in converted)
    assert list((tmp_path / "scratch").iterdir()) == []

    written = []
    write = upcast._write_float32
    monkeypatch.setattr(upcast, "_write_float32", lambda s, t: (written.append(s.name), write(s, t)))
    result = run_export(Job(model=str(half), output_dir=tmp_path / "out",
                            options=make_options(["causal-lm"], ["onnx"])))
    assert result.ok, [(f.error, f.validation and f.validation.to_dict()) for f in result.failures]
    assert sorted(written) == [p.name for p in weights]
    assert list((tmp_path / "scratch").iterdir()) == []

    def no_space(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(upcast, "_write_float32", no_space)
    with caplog.at_level(logging.WARNING, logger="bot.upcast"):
        result = run_export(Job(model=str(half), output_dir=tmp_path / "out2",
                                options=make_options(["causal-lm"], ["onnx"])))
    assert result.ok and "loading them as stored" in caplog.text
    assert list((tmp_path / "scratch").iterdir()) == []

    caplog.clear()  # too little free disk for the copies: none is attempted
    usage = shutil.disk_usage
    monkeypatch.setattr(upcast.shutil, "disk_usage", lambda path: usage(path)._replace(free=0))
    with caplog.at_level(logging.WARNING, logger="bot.upcast"):
        assert upcast.float32_files(half, weights).__enter__() == half
    assert "not enough free disk" in caplog.text
