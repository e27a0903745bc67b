"""Every registered encoder and vision architecture exports every feature in both formats, validated.

Breadth runs use the fast TorchScript-based ONNX exporter; the default (dynamo) exporter runs once per
architecture on its base model, so both ONNX paths are exercised for every architecture.
"""

import json

import onnx
import pytest

from bot.checkpoint import feature_available
from bot.features import SUPPORT
from bot.job import Job, make_options
from bot.pipeline import run_export
from tests.tiny import tiny_config

FAMILIES = ("text-encoder", "vision")
CASES = [(model_type, feature) for model_type, support in sorted(SUPPORT.items()) if support.family in FAMILIES
         for feature in support.features if feature_available(tiny_config(model_type), feature)]


@pytest.mark.parametrize("model_type, feature", CASES, ids=[f"{m}-{f}" for m, f in CASES])
def test_feature_exports_and_validates_in_both_formats(tiny, tmp_path, model_type, feature):
    options = make_options([feature], exporter="torchscript")
    result = run_export(Job(model=str(tiny(model_type, feature)), output_dir=tmp_path, options=options))
    assert result.ok, [(f.format, f.error, f.validation and f.validation.to_dict()) for f in result.failures]
    assert {a.format for a in result.artifacts} == {"onnx", "torchscript"}
    manifest = json.loads((tmp_path / "export_manifest.json").read_text())
    for artifact in manifest["artifacts"]:
        assert artifact["feature"] == feature and artifact["validation"]["passed"]
        assert len(artifact["validation"]["shapes_tried"]) >= 2
        assert (tmp_path / artifact["path"]).is_file()
    # the only feature exported is the primary one, so it sits at the top of the layout
    assert (tmp_path / "onnx" / "model.onnx").is_file() and (tmp_path / "torchscript" / "model.pt").is_file()


BASES = sorted(m for m, s in SUPPORT.items() if s.family in FAMILIES)


@pytest.mark.parametrize("model_type", BASES)
def test_default_onnx_export_with_dynamo(tiny, tmp_path, model_type):
    options = make_options(["default"], ["onnx"], exporter="dynamo")
    result = run_export(Job(model=str(tiny(model_type)), output_dir=tmp_path, options=options))
    assert result.ok, [(f.error, f.validation and f.validation.to_dict()) for f in result.failures]
    (artifact,) = result.artifacts
    assert artifact.exporter.startswith("dynamo")
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == ["model.onnx"]  # one self-contained file
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph
    assert [i.name for i in graph.input] == artifact.inputs
    assert [o.name for o in graph.output] == artifact.outputs
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
