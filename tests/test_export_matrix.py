"""Every registered architecture exports every feature in both formats, validated at unseen shapes.

Breadth runs use the default exporter chain on one tokenizer-less checkpoint per architecture (heads other than the
base model are random there, which export mechanics do not care about). The dynamo exporter, the fallback, runs on
one architecture of each family (and T5, which needs its eager-attention retry) on the feature a real checkpoint of
that family would make primary.
"""

import json

import onnx
import pytest

from bot.checkpoint import feature_available
from bot.features import SUPPORT
from bot.job import FORMATS, Job, make_options
from bot.pipeline import run_export
from tests.tiny import tiny_config

ARCHITECTURES = sorted(m for m, s in SUPPORT.items() if s.origin == "registry")
# ONNX merges the two with-past decoders into decoder_model_merged; TorchScript keeps them split.
GRAPHS = {"seq2seq": {("default-with-past", "onnx"): 2, ("default-with-past", "torchscript"): 3,
                      ("seq2seq-lm", "onnx"): 2, ("seq2seq-lm", "torchscript"): 2,
                      ("seq2seq-lm-with-past", "onnx"): 2, ("seq2seq-lm-with-past", "torchscript"): 3}}
PRIMARY = {"text-encoder": "default", "vision": "image-classification", "decoder": "causal-lm-with-past",
           "seq2seq": "seq2seq-lm-with-past", "perceiver": "masked-lm"}


def features_of(model_type):
    config = tiny_config(model_type)
    return [f for f in SUPPORT[model_type].features if feature_available(config, f)]


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_feature_exports_and_validates_in_both_formats(tiny, tmp_path, model_type):
    features = features_of(model_type)
    options = make_options(features, allow_random_heads=True)
    base = "default" if "default" in features else features[0]
    result = run_export(Job(model=str(tiny(model_type, base)), output_dir=tmp_path, options=options))
    assert result.ok, [(f.feature, f.component, f.format, f.error, f.validation and f.validation.to_dict())
                       for f in result.failures]
    graphs = GRAPHS.get(SUPPORT[model_type].family, {})
    for feature in features:
        for fmt in FORMATS:
            exported = [a for a in result.artifacts if a.feature == feature and a.format == fmt]
            assert len(exported) == graphs.get((feature, fmt), 1), (feature, fmt)
    manifest = json.loads((tmp_path / "export_manifest.json").read_text())
    assert manifest["status"] == "complete"
    for artifact in manifest["artifacts"]:
        assert artifact["validation"]["passed"] and len(artifact["validation"]["shapes_tried"]) >= 2
        assert (tmp_path / artifact["path"]).is_file()
    assert (tmp_path / "onnx").is_dir() and (tmp_path / "torchscript").is_dir()


DYNAMO = ["bert", "distilbert", "vit", "gpt2", "t5", "perceiver"]


@pytest.mark.parametrize("model_type", DYNAMO)
def test_primary_feature_onnx_export_with_dynamo(tiny, tmp_path, model_type):
    feature = PRIMARY[SUPPORT[model_type].family]
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
