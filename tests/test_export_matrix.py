"""Every registered architecture exports every feature in both formats, validated at unseen shapes.

Breadth runs use the default exporter chain on one tokenizer-less checkpoint per architecture (heads other than the
base model are random there, which export mechanics do not care about). The dynamo exporter, the fallback, runs on
one architecture of each family (and T5, which needs its eager-attention retry) on the feature a real checkpoint of
that family would make primary.

The current architectures (tests.tiny.SHRUNK: Llama, Qwen, Gemma, ModernBERT, Swin...) run their primary feature in
both formats in the default suite, from a checkpoint with wide random weights so greedy decoding of the left-padded
batch varies its tokens and runs past the sliding window; their every-feature sweep is marked `slow` (and
benchmarks/generic_coverage.py runs it for every model type).
"""

import json

import onnx
import pytest

from bot.checkpoint import feature_available
from bot.features import SUPPORT
from bot.generation import NEW_TOKENS, PROMPT_LENGTHS
from bot.job import FORMATS, Job, make_options
from bot.pipeline import run_export
from tests.tiny import SHRUNK, build_checkpoint, tiny_config

REGISTRY = {m: s for m, s in SUPPORT.items() if s.origin == "registry"}  # as shipped, whatever tests register later
ARCHITECTURES = sorted(REGISTRY)
# Graphs per feature and format: ONNX files (the two with-past decoders merged into decoder_model_merged), and the
# submodules of TorchScript's one file (the decoders split: TorchScript has no merged convention).
GRAPHS = {"seq2seq": {("default-with-past", "onnx"): 2, ("default-with-past", "torchscript"): 3,
                      ("seq2seq-lm", "onnx"): 2, ("seq2seq-lm", "torchscript"): 2,
                      ("seq2seq-lm-with-past", "onnx"): 2, ("seq2seq-lm-with-past", "torchscript"): 3}}
PRIMARY = {"text-encoder": "default", "vision": "image-classification", "decoder": "causal-lm-with-past",
           "seq2seq": "seq2seq-lm-with-past", "perceiver": "masked-lm"}


def features_of(model_type):
    config = tiny_config(model_type)
    return [f for f in REGISTRY[model_type].features if feature_available(config, f)]


def check_result(result, tmp_path, model_type, features):
    assert result.ok, [(f.feature, f.component, f.format, f.error, f.validation and f.validation.to_dict())
                       for f in result.failures]
    graphs = GRAPHS.get(REGISTRY[model_type].family, {})
    for feature in features:
        for fmt in FORMATS:
            exported = [a for a in result.artifacts if a.feature == feature and a.format == fmt]
            assert sum(len(a.submodules) or 1 for a in exported) == graphs.get((feature, fmt), 1), (feature, fmt)
            assert fmt != "torchscript" or len(exported) == 1, (feature, "one TorchScript file per feature")
    manifest = json.loads((tmp_path / "export_manifest.json").read_text())
    assert manifest["status"] == "complete"
    for artifact in manifest["artifacts"]:
        assert artifact["validation"]["passed"] and len(artifact["validation"]["shapes_tried"]) >= 2
        assert (tmp_path / artifact["path"]).is_file()
    assert (tmp_path / "onnx").is_dir() and (tmp_path / "torchscript").is_dir()
    return manifest


@pytest.mark.parametrize("model_type", [pytest.param(m, marks=pytest.mark.slow) if m in SHRUNK else m
                                        for m in ARCHITECTURES])
def test_every_feature_exports_and_validates_in_both_formats(tiny, tmp_path, model_type):
    features = features_of(model_type)
    options = make_options(features, allow_random_heads=True)
    base = "default" if "default" in features else features[0]
    result = run_export(Job(model=str(tiny(model_type, base)), output_dir=tmp_path, options=options))
    check_result(result, tmp_path, model_type, features)


@pytest.fixture(scope="session")
def lively(tmp_path_factory):
    """`lively(model_type, feature)`: a tiny checkpoint with wide random weights, built once per session."""
    root = tmp_path_factory.mktemp("lively")
    built = {}

    def get(model_type, feature):
        if (model_type, feature) not in built:
            built[model_type, feature] = build_checkpoint(root / f"{model_type}--{feature}", model_type, feature,
                                                          lively=True)
        return built[model_type, feature]

    return get


@pytest.mark.parametrize("model_type", sorted(SHRUNK))
def test_current_architectures_export_their_primary_feature_in_both_formats(lively, tmp_path, model_type):
    feature = PRIMARY[REGISTRY[model_type].family]
    result = run_export(Job(model=str(lively(model_type, feature)), output_dir=tmp_path,
                            options=make_options([feature])))
    manifest = check_result(result, tmp_path, model_type, [feature])
    if feature == "causal-lm-with-past":
        window = getattr(tiny_config(model_type), "sliding_window", None)
        for artifact in manifest["artifacts"]:
            generation = artifact["validation"]["generation"]
            assert generation["passed"] and generation["padding"] == "left"
            assert len({tuple(row) for row in generation["expected"]}) > 1  # rows decode differently
            if window:  # the prompts and new tokens run past the window, and so does a validated past
                assert max(PROMPT_LENGTHS) + NEW_TOKENS > window
                assert any("past_sequence_length=9" in s for s in artifact["validation"]["shapes_tried"])


DYNAMO = ["bert", "distilbert", "vit", "gpt2", "t5", "perceiver"]


@pytest.mark.parametrize("model_type", DYNAMO)
def test_primary_feature_onnx_export_with_dynamo(tiny, tmp_path, model_type):
    feature = PRIMARY[REGISTRY[model_type].family]
    if feature not in features_of(model_type):
        feature = "default"
    options = make_options([feature], ["onnx"], exporter="dynamo")
    result = run_export(Job(model=str(tiny(model_type, feature)), output_dir=tmp_path, options=options))
    assert result.ok, [(f.component, f.error, f.validation and f.validation.to_dict()) for f in result.failures]
    for artifact in result.artifacts:
        assert artifact.exporter.startswith("dynamo")
        path = tmp_path / artifact.path
        assert not path.with_name(path.name + "_data").exists()  # small graphs are one self-contained file
        graph = onnx.load(str(path)).graph
        assert [i.name for i in graph.input] == artifact.inputs
        assert [o.name for o in graph.output] == artifact.outputs
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch_size"
