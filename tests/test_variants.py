"""Dtype variants (bot.export.variants): names, options, quality gates that publish or refuse, card and manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from bot import card, layout
from bot.errors import UsageError
from bot.export import recipes, variants
from bot.job import PUBLISH_DTYPES, Job, make_options
from bot.pipeline import run_export

SENTENCES = ["A man is playing a guitar.", "Ok.", "How do I reset my password?",
             "The quick brown fox jumps over the lazy dog near the river bank."]


def export(checkpoint: Path, out: Path, dtypes, features=(), formats=("onnx",)):
    options = make_options(features, formats, dtypes=dtypes)
    return run_export(Job(model=str(checkpoint), output_dir=out, options=options))


def manifest_of(result) -> dict:
    return json.loads(result.manifest_path.read_text())


def gate_passed_on_its_own_figures(entry: dict) -> None:
    """Every published variant says what it was measured on, and each figure meets its threshold."""
    quality = entry["validation"]["quality"]
    assert entry["validation"]["passed"] and quality["passed"] and quality["probe"]
    assert quality["criteria"], entry["path"]
    for criterion in quality["criteria"]:
        name, kind = criterion["name"], quality["kind"]
        bound = dict((n, b) for n, b, _ in variants.THRESHOLDS[kind][entry["dtype"]])[name]
        assert criterion["bound"] == bound
        value = criterion["value"]
        assert value >= bound if criterion["at_least"] else value <= bound, (entry["path"], criterion)


# -- names and options ---------------------------------------------------------------------------------------------


def test_file_names_follow_transformers_js_for_every_graph():
    path = layout.artifact_path
    assert path("onnx", "default", "model", "default", "q8") == "onnx/model_quantized.onnx"
    assert path("onnx", "default", "model", "default", "fp16") == "onnx/model_fp16.onnx"
    assert path("onnx", "seq2seq-lm-with-past", "encoder_model", "seq2seq-lm-with-past", "q8") == \
        "onnx/encoder_model_quantized.onnx"
    assert path("onnx", "seq2seq-lm-with-past", "decoder_model_merged", "seq2seq-lm-with-past", "q4") == \
        "onnx/decoder_model_merged_q4.onnx"
    assert path("onnx", "sequence-classification", "model", "default", "q4f16") == \
        "onnx/model_sequence_classification_q4f16.onnx"
    assert path("onnx", "default", "model", "default") == "onnx/model.onnx"  # fp32 keeps its name


def test_dtype_options():
    assert make_options().dtypes == ("fp32",)
    assert make_options(dtypes=["q4", "Q8", "fp16", "q8"]).dtypes == ("fp32", "fp16", "q8", "q4")  # fp32 always
    assert make_options(default_dtypes=PUBLISH_DTYPES).dtypes == ("fp32", "q8")
    assert make_options(dtypes=["fp32"], default_dtypes=PUBLISH_DTYPES).dtypes == ("fp32",)
    assert make_options(formats=["torchscript"], default_dtypes=PUBLISH_DTYPES).dtypes == ("fp32",)
    with pytest.raises(UsageError, match="unknown dtype 'int3'"):
        make_options(dtypes=["int3"])
    with pytest.raises(UsageError, match="ONNX variant"):
        make_options(formats=["torchscript"], dtypes=["q8"])


def test_gemm_with_a_constant_weight_becomes_matmul_for_the_nbit_quantizer():
    from onnx import TensorProto, helper, numpy_helper

    weight = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="gemm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.ones(4, np.float32), "b")])
    model = recipes.gemm_to_matmul(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add"]
    import onnxruntime

    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ weight.T + 1, rtol=1e-6)


# -- all-MiniLM-L6-v2: fp32 + q8 + fp16 + q4, each gated -----------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_export(minilm, tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm-variants")
    return export(minilm, out, ["q8", "fp16", "q4"]), out


def test_minilm_variants_are_gated_and_named_for_transformers_js(minilm_export):
    result, out = minilm_export
    manifest = manifest_of(result)
    assert [a["path"] for a in manifest["artifacts"]] == ["onnx/model.onnx"]  # the fp32 graphs; variants apart
    by_dtype = {"fp32": manifest["artifacts"][0], **{v["dtype"]: v for v in manifest["variants"]}}
    assert {d: a["path"] for d, a in by_dtype.items()} == {
        "fp32": "onnx/model.onnx", "fp16": "onnx/model_fp16.onnx", "q8": "onnx/model_quantized.onnx",
        "q4": "onnx/model_q4.onnx"}
    assert manifest["refused_variants"] == [] and manifest["options"]["dtypes"] == ["fp32", "fp16", "q8", "q4"]
    for dtype in ("fp16", "q8", "q4"):
        entry = by_dtype[dtype]
        gate_passed_on_its_own_figures(entry)
        assert entry["validation"]["quality"]["kind"] == "embedding"
        assert "real text" in entry["validation"]["quality"]["probe"]  # the tokenizer's sentences
        assert (out / entry["path"]).stat().st_size == entry["size"]
    sizes = {d: a["size"] for d, a in by_dtype.items()}
    assert sizes["q4"] < sizes["q8"] < sizes["fp16"] < sizes["fp32"]
    # one activation range per tensor costs MiniLM its accuracy: dynamic int8 is refused, blocks of 32 published
    q8 = by_dtype["q8"]["validation"]
    assert q8["quality"]["recipe"] == "int8 in blocks of 32"
    assert [g["recipe"] for g in q8["refused_recipes"]] == ["dynamic int8"]
    assert not q8["refused_recipes"][0]["passed"]


def test_minilm_q8_embedding_matches_pytorch(minilm, minilm_export):
    """Checked independently of the gate: onnxruntime on the published file, sentence-transformers' pooling."""
    import onnxruntime
    from transformers import AutoModel, AutoTokenizer

    result, out = minilm_export
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    mask = batch["attention_mask"].unsqueeze(-1).float()
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(minilm).eval()(**batch).last_hidden_state
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    for name, bound in (("model_quantized.onnx", 0.99), ("model_fp16.onnx", 0.999)):
        session = onnxruntime.InferenceSession(str(out / "onnx" / name), providers=["CPUExecutionProvider"])
        (got,) = session.run(["last_hidden_state"], {k: v.numpy() for k, v in batch.items()})
        pooled = (got * mask.numpy()).sum(1) / mask.numpy().sum(1)
        cosine = (pooled / np.linalg.norm(pooled, axis=1, keepdims=True) * expected).sum(1)
        assert cosine.min() >= bound, (name, cosine)


def test_fp16_keeps_fp32_inputs_and_outputs(minilm_export):
    _, out = minilm_export
    model = onnx.load(str(out / "onnx" / "model_fp16.onnx"))
    floats = [v for v in list(model.graph.input) + list(model.graph.output)
              if v.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert floats and all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in floats)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)


def test_card_and_pr_show_the_variants_table(minilm_export):
    result, _ = minilm_export
    ctx = card.context(result, "acme/minilm", has_tokenizer=True)
    section, description = card.render_card_section(ctx), card.render_pr_description(ctx)
    for text in (section, description):
        assert "| default | `q8`: int8 in blocks of 32 | `onnx/model_quantized.onnx` |" in text
        assert '`{ dtype: "q8" }`' in text and '`{ dtype: "q4" }`' in text and '`{ dtype: "fp16" }`' in text
        assert "min cosine 0.99" in text and "(≥ 0.99)" in text
        assert "not used: dynamic int8: min cosine" in text
    # the fp32 table and the snippets are about the fp32 file only
    assert [a["path"] for a in ctx["artifacts"]] == ["onnx/model.onnx"]
    assert ctx["usage"]["onnx_path"] == "onnx/model.onnx"


# -- generation gates: tiny GPT-2 and T5 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lively(tmp_path_factory):
    from tests.tiny import build_checkpoint

    root = tmp_path_factory.mktemp("lively")
    return {"gpt2": build_checkpoint(root / "gpt2", "gpt2", "causal-lm", lively=True),
            "t5": build_checkpoint(root / "t5", "t5", "seq2seq-lm", lively=True)}


@pytest.mark.parametrize("model_type, feature, components", [
    ("gpt2", "causal-lm-with-past", ["model"]),
    ("t5", "seq2seq-lm-with-past", ["encoder_model", "decoder_model_merged"]),
])
def test_published_language_model_variants_pass_their_generation_gate(lively, tmp_path, model_type, feature,
                                                                       components):
    result = export(lively[model_type], tmp_path / "out", ["fp16", "q8", "q4"], features=[feature])
    manifest = manifest_of(result)
    published = manifest["variants"]
    assert {a["dtype"] for a in published} >= {"fp16"}  # fp16 always keeps greedy decoding here
    for dtype in {a["dtype"] for a in published}:
        group = [a for a in published if a["dtype"] == dtype]
        assert [a["component"] for a in group] == components  # every graph of the feature, or none
        for entry in group:
            assert entry["path"] == f"onnx/{entry['component']}{layout.DTYPE_SUFFIXES[dtype]}.onnx"
            assert (tmp_path / "out" / entry["path"]).is_file()
            quality = entry["validation"]["quality"]
            assert quality["kind"] == "generation"
            assert [c["name"] for c in quality["criteria"]] == ["greedy agreement", "next-token agreement"]
            gate_passed_on_its_own_figures(entry)
    for refusal in manifest["refused_variants"]:  # whatever was refused says why and is not on disk
        assert refusal["reason"] and refusal["attempts"]
        assert not (tmp_path / "out" / layout.artifact_path("onnx", feature, components[0], feature,
                                                             refusal["dtype"])).exists()
    fp16 = next(a for a in published if a["dtype"] == "fp16")["validation"]["quality"]
    assert fp16["details"]["expected"] == fp16["details"]["actual"]  # greedy tokens identical


def _corrupted(source: Path, target: Path) -> None:
    """A variant whose weights were damaged on the way (every large weight matrix shuffled)."""
    from onnx import numpy_helper

    model = onnx.load(str(source))
    rng = np.random.default_rng(0)
    for tensor in model.graph.initializer:
        if len(tensor.dims) == 2 and min(tensor.dims) > 8:
            array = numpy_helper.to_array(tensor).copy()
            rng.shuffle(array.reshape(-1))
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    onnx.save(model, str(target))


def _two_bit(source: Path, target: Path) -> None:
    recipes.save(recipes.nbits(recipes.load(source), 2, symmetric=False, embeddings=False), target)


@pytest.mark.parametrize("recipe", [_corrupted, _two_bit])
def test_a_broken_variant_is_refused_and_not_published(lively, tmp_path, monkeypatch, recipe):
    monkeypatch.setitem(recipes.RECIPES, "q8", (recipes.Recipe("broken on purpose", recipe),))
    result = export(lively["gpt2"], tmp_path / "out", ["q8", "fp16"], features=["causal-lm-with-past"])
    assert result.ok  # a refused variant is not a failed export: fp32 and fp16 are published
    manifest = manifest_of(result)
    assert [v["dtype"] for v in manifest["variants"]] == ["fp16"]
    (refusal,) = manifest["refused_variants"]
    assert refusal["dtype"] == "q8" and refusal["feature"] == "causal-lm-with-past"
    (attempt,) = refusal["attempts"]
    assert attempt["recipe"] == "broken on purpose" and not attempt["passed"]
    assert any(not c["passed"] for c in attempt["criteria"])
    assert "broken on purpose: " in refusal["reason"] and "next-token agreement" in refusal["reason"]
    assert not (tmp_path / "out" / "onnx" / "model_quantized.onnx").exists()
    assert not list((tmp_path / "out").glob(".hub-export-bot-*"))
    # the PR says why
    description = card.render_pr_description(card.context(result, "acme/gpt2"))
    assert "| causal-lm-with-past | `q8` | not included | — | ❌ broken on purpose: " in description


def test_classifier_variants_are_judged_on_labels(tiny, tmp_path, monkeypatch):
    result = export(tiny("bert", "sequence-classification"), tmp_path / "ok", ["q8"],
                    features=["sequence-classification"])
    (q8,) = manifest_of(result)["variants"]
    assert q8["path"] == "onnx/model_quantized.onnx"
    assert [c["name"] for c in q8["validation"]["quality"]["criteria"]] == ["label agreement",
                                                                            "max probability shift"]
    gate_passed_on_its_own_figures(q8)
    monkeypatch.setitem(recipes.RECIPES, "q8", (recipes.Recipe("broken on purpose", _corrupted),))
    broken = export(tiny("bert", "sequence-classification"), tmp_path / "broken", ["q8"],
                    features=["sequence-classification"])
    assert [r["dtype"] for r in manifest_of(broken)["refused_variants"]] == ["q8"]


def test_a_recipe_that_crashes_is_a_refusal_with_its_error_escaped_in_the_pr(tiny, tmp_path, monkeypatch):
    hostile = "no kernel | <img src=x> [x](http://evil)\n# heading"

    def crash(source, target):
        raise RuntimeError(hostile)

    monkeypatch.setitem(recipes.RECIPES, "q4", (recipes.Recipe("crashing", crash),))
    result = export(tiny("bert"), tmp_path / "out", ["q4"])
    (refusal,) = manifest_of(result)["refused_variants"]
    assert refusal["reason"] == f"crashing: RuntimeError: {hostile}"
    assert result.ok and [a.dtype for a in result.artifacts] == ["fp32"]
    description = card.render_pr_description(card.context(result, "acme/bert"))
    (row,) = [line for line in description.splitlines() if "crashing" in line]
    assert row.startswith("| default | `q4` | not included |") and row.count(" | ") == 5  # one row, six cells
    assert "\\<img" in row and "[x](http://" not in row and "kernel \\| " in row  # markdown-escaped


# -- publishing ----------------------------------------------------------------------------------------------------


def test_published_variants_are_the_bots_files(tiny, tmp_path):
    """The PR carries the variants and the manifest lists them, so a later run may replace or delete them (they are
    the bot's, by the manifest's hashes) and never takes them for a maintainer's files."""
    from bot import publish as pub
    from bot.job import PublishJob
    from tests.emulators.hub import HubEmulator

    repo = "acme/tiny-classifier"
    checkpoint = tiny("bert", "sequence-classification")
    with HubEmulator() as hub:
        hub.create_repo(repo, {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()})

        def publish(dtypes):
            options = make_options(formats=["onnx"], exporter="torchscript", dtypes=dtypes)
            return pub.publish(PublishJob(repo_id=repo, options=options), endpoint=hub.url, token="hf_test_token",
                               work_dir=tmp_path / f"work-{len(dtypes)}")

        first = publish(["q8"])
        assert first.status == pub.OPENED, first.message
        files = hub.files(repo, "refs/pr/1")
        manifest = json.loads(files["export_manifest.json"])
        variant_paths = {v["path"] for v in manifest["variants"]}
        assert variant_paths == {"onnx/model_quantized.onnx", "onnx/model_default_quantized.onnx"}
        assert variant_paths <= set(files) and "onnx/model.onnx" in files
        (pr,) = hub.discussions(repo)
        assert "| sequence-classification | `q8`: " in pr.description and '`{ dtype: "q8" }`' in pr.description
        assert '`{ model_file_name: "model_default", dtype: "q8" }`' in pr.description

        second = publish(["fp32"])  # other options: the same PR is updated and the variants go
        assert second.status == pub.UPDATED, second.message
        files = hub.files(repo, "refs/pr/1")
        assert not variant_paths & set(files) and "onnx/model.onnx" in files
        assert json.loads(files["export_manifest.json"])["variants"] == []


@pytest.mark.parametrize("model_type, checkpoint_feature, features", [
    ("bert", "default", ["masked-lm", "token-classification", "question-answering", "multiple-choice"]),
    ("vit", "image-classification", ["image-classification", "default"]),
    ("gpt2", "default", ["default-with-past"]),
    ("t5", "default", ["default-with-past"]),
    ("perceiver", "sequence-classification", ["sequence-classification"]),
])
def test_every_family_gets_a_gate_that_runs(tiny, tmp_path, model_type, checkpoint_feature, features):
    """Whether a tiny random model's variant passes is not the point here: its gate must run and measure."""
    options = make_options(features, ["onnx"], allow_random_heads=True, dtypes=["q8"])
    result = run_export(Job(model=str(tiny(model_type, checkpoint_feature)), output_dir=tmp_path, options=options))
    manifest = manifest_of(result)
    judged = {v["feature"]: v["validation"]["quality"] for v in manifest["variants"]}
    for refusal in manifest["refused_variants"]:
        (attempt,) = [a for a in refusal["attempts"] if a["recipe"] == "dynamic int8"]
        assert attempt["error"] is None and attempt["criteria"], refusal
        judged[refusal["feature"]] = attempt
    assert set(judged) == {a["feature"] for a in manifest["artifacts"]}
    for feature, quality in judged.items():
        kind = "embedding" if feature.startswith("default") else "labels"
        assert quality["kind"] == kind and all(np.isfinite(c["value"]) for c in quality["criteria"]), quality


def test_reports_are_strict_json(minilm_export):
    """Manifest, refusals and the figures readers copy are plain JSON: no NaN or Infinity anywhere."""
    result, _ = minilm_export
    text = result.manifest_path.read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in export_manifest.json"))
    for artifact in result.artifacts:
        assert np.isfinite(artifact.validation.atol)  # what the summary and the Action's report show
    refusal = variants.Refusal("default", "q4", ["model"], [variants.Gate(
        "embedding", "r", "p", [variants.Criterion("min cosine", float("nan"), 0.9)], details={"measured": {
            "min cosine": float("nan")}})])
    json.loads(json.dumps(refusal.to_dict()), parse_constant=lambda name: pytest.fail(name))
