"""Generation parity: decoding a padded batch with the exported artifacts alone reproduces generate()."""

import json

import pytest
import torch

from bot.checkpoint import load_model, open_checkpoint
from bot.generation import NEW_TOKENS, PROMPT_LENGTHS, check_generation, generation_reference
from bot.job import Job, make_options
from bot.pipeline import run_export
from bot.specs.decoder import WithPast
from tests.tiny import build_checkpoint


@pytest.fixture(scope="module")
def lively(tmp_path_factory):
    """Checkpoints with wide weights, so greedy decoding yields varied tokens rather than one repeated token."""
    root = tmp_path_factory.mktemp("lively")
    return {key: build_checkpoint(root / "-".join(key), *key, lively=True)
            for key in [("gpt2", "causal-lm"), ("t5", "seq2seq-lm"), ("bart", "seq2seq-lm")]}


_BUNDLE = ("model", ("encoder_model", "decoder_model", "decoder_with_past_model"))  # one file, a submodule per graph


@pytest.mark.parametrize("model_type, feature, components", [
    ("gpt2", "causal-lm-with-past", {"onnx": {("model", ())}, "torchscript": {("model", ())}}),
    ("gpt2", "causal-lm", {"onnx": {("model", ())}, "torchscript": {("model", ())}}),
    ("t5", "seq2seq-lm-with-past", {"onnx": {("encoder_model", ()), ("decoder_model_merged", ())},
                                    "torchscript": {_BUNDLE}}),
    ("bart", "seq2seq-lm-with-past", {"onnx": {("encoder_model", ()), ("decoder_model_merged", ())},
                                      "torchscript": {_BUNDLE}}),
])
def test_greedy_decoding_of_a_padded_batch_with_the_artifacts_matches_generate(lively, tmp_path, model_type,
                                                                                feature, components):
    path = lively[(model_type, feature.replace("-with-past", ""))]
    result = run_export(Job(model=str(path), output_dir=tmp_path, options=make_options([feature])))
    assert result.ok, [(f.component, f.format, f.error) for f in result.failures]
    manifest = json.loads((tmp_path / "export_manifest.json").read_text())
    for fmt, expected in components.items():
        assert {(a["component"], tuple(s["name"] for s in a.get("submodules", [])))
                for a in manifest["artifacts"] if a["format"] == fmt} == expected
    assert [a["path"] for a in manifest["artifacts"] if a["format"] == "torchscript"] == ["torchscript/model.pt"]
    for artifact in manifest["artifacts"]:
        generation = artifact["validation"]["generation"]
        assert generation["passed"] and generation["actual"] == generation["expected"]
        assert [len(p) for p in generation["prompts"]] == list(PROMPT_LENGTHS)
        assert all(len(row) == NEW_TOKENS for row in generation["expected"])
        assert len({t for row in generation["expected"] for t in row}) > 1


def _gpt2_call(model, position_ids: bool, swap_layers: bool = False):
    """The with-past graph as a function, optionally without position ids or with its cache miswired."""
    names = [f"past_key_values.{i}.{kv}" for i in range(model.config.n_layer) for kv in ("key", "value")]
    inputs = ["input_ids", "attention_mask"] + (["position_ids"] if position_ids else [])
    wrapper = WithPast(model, inputs, ["logits"]).eval()

    def call(component, named):
        past = [torch.from_numpy(named[n]) for n in names]
        if swap_layers:
            past = past[2:] + past[:2]  # layer 0's cache handed to layer 1 and back
        with torch.no_grad():
            out = wrapper(*[torch.from_numpy(named[n]) for n in inputs], *past)
        presents = {n.replace("past_key_values.", "present."): t.numpy() for n, t in zip(names, out[1:])}
        return {"logits": out[0].numpy(), **presents}

    dims = {n: (1, model.config.n_head, "past_sequence_length", model.config.n_embd // model.config.n_head)
            for n in names}
    graph = {**{n: ("batch_size", "sequence_length") for n in inputs}, **dims}
    return call, {"model": graph}


def test_the_reference_loop_passes_and_a_miswired_cache_fails(lively):
    """Presents fed back under each other's names: every output check would pass, decoding does not."""
    model, _ = load_model(open_checkpoint(lively[("gpt2", "causal-lm")], "tiny"), "causal-lm")
    reference = generation_reference(model, "causal-lm-with-past")
    assert check_generation(reference, *_gpt2_call(model, position_ids=True)).passed
    check = check_generation(reference, *_gpt2_call(model, True, swap_layers=True))
    assert not check.passed and check.actual != check.expected


def test_a_graph_without_position_ids_fails_on_the_left_padded_rows(lively):
    """Without position ids GPT-2 counts left padding as positions: the padded rows decode other tokens."""
    model, _ = load_model(open_checkpoint(lively[("gpt2", "causal-lm")], "tiny"), "causal-lm")
    check = check_generation(generation_reference(model, "causal-lm-with-past"),
                             *_gpt2_call(model, position_ids=False))
    assert not check.passed
    assert check.actual[0] == check.expected[0]  # the longest row has no padding
    assert check.actual[1:] != check.expected[1:]


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_large_model_is_released_before_its_files_are_validated(lively, tmp_path, monkeypatch, exporter):
    """Above RELEASE_MODEL_BYTES (lowered here to 0) the eager weights are gone when the first runtime session opens:
    validation and decoding use the references computed beforehand, and the q8 variant's gate reloads the model."""
    import weakref

    from bot import checkpoint, pipeline

    monkeypatch.setattr(pipeline, "RELEASE_MODEL_BYTES", 0)
    loaded_weights, alive_at_validation = [], []
    load_for_feature, onnx_runner = checkpoint.load_for_feature, pipeline.onnx_runner

    def tracked_load(*args, **kwargs):
        loaded = load_for_feature(*args, **kwargs)
        loaded_weights.append([weakref.ref(p) for p in loaded.model.parameters()])
        return loaded

    def checked_runner(path):  # each parameter is gone, or empty (an exporter may keep the Parameter objects)
        alive_at_validation.append(any(p() is not None and p().numel() for p in loaded_weights[0]))
        return onnx_runner(path)

    monkeypatch.setattr(checkpoint, "load_for_feature", tracked_load)
    monkeypatch.setattr(pipeline, "onnx_runner", checked_runner)
    messages = []
    result = run_export(Job(model=str(lively[("gpt2", "causal-lm")]), output_dir=tmp_path,
                            options=make_options(["causal-lm-with-past"], dtypes=("fp32", "q8"), exporter=exporter)),
                        messages.append)
    assert result.ok, [(f.component, f.format, f.error) for f in result.failures]
    assert alive_at_validation and not any(alive_at_validation)
    assert any("model released" in m for m in messages)
    assert len(loaded_weights) == 2  # the export's load, and the variants' reload
    assert {(a.format, a.dtype) for a in result.artifacts} == {("onnx", "fp32"), ("onnx", "q8"), ("torchscript", "fp32")}
    assert all(a.validation.generation["passed"] for a in result.artifacts if a.dtype == "fp32")
