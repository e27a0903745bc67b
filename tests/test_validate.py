"""The validator: a report passes only when every name, shape and value check passes."""

import numpy as np
import torch

from bot.validate import ValidationCase, validate

CASES = [ValidationCase("batch=3", {"x": torch.ones(3, 2)}, [torch.zeros(3, 4)]),
         ValidationCase("batch=1", {"x": torch.ones(1, 2)}, [torch.zeros(1, 4)])]


def runner(offset=0.0, shape_delta=0, names=("logits",), error=None):
    def run(inputs):
        if error:
            raise error
        batch = inputs["x"].shape[0]
        return list(names), [np.full((batch, 4 + shape_delta), offset, dtype=np.float32)]

    return run


def test_values_within_atol_pass_and_report_the_max_difference():
    report = validate("onnx", runner(offset=5e-5), ["logits"], CASES, atol=1e-4)
    assert report.passed and abs(report.max_abs_diff["logits"] - 5e-5) < 1e-9
    assert report.to_dict()["shapes_tried"] == ["batch=3", "batch=1"]


def test_values_beyond_atol_fail():
    assert not validate("onnx", runner(offset=2e-4), ["logits"], CASES, atol=1e-4).passed


def test_shape_mismatch_fails():
    assert not validate("onnx", runner(shape_delta=1), ["logits"], CASES, atol=1e-4).passed


def test_output_name_mismatch_fails():
    assert not validate("onnx", runner(names=("scores",)), ["logits"], CASES, atol=1e-4).passed


def test_an_artifact_that_cannot_run_fails_with_the_error_recorded():
    report = validate("onnx", runner(error=RuntimeError("bad shape")), ["logits"], CASES, atol=1e-4)
    assert not report.passed and "bad shape" in report.to_dict()["errors"][0]


def test_nan_outputs_fail():
    assert not validate("onnx", runner(offset=float("nan")), ["logits"], CASES, atol=1e-4).passed


def test_relative_tolerance_accepts_large_values_and_still_refuses_small_ones():
    """|diff| <= atol + rtol * |reference|: large activations get room in proportion, values near 0 do not."""
    large = [ValidationCase("batch=1", {"x": torch.ones(1, 2)}, [torch.full((1, 4), 1000.0)])]
    run = runner(offset=1000.5)  # 5e-4 relative: beyond atol, within rtol
    report = validate("onnx", run, ["logits"], large, atol=1e-4, rtol=1e-3)
    assert report.passed
    assert abs(report.max_abs_diff["logits"] - 0.5) < 1e-6 and abs(report.max_rel_diff["logits"] - 5e-4) < 1e-9
    assert report.to_dict()["rtol"] == 1e-3 and "max_rel_diff" in report.to_dict()
    assert not validate("onnx", run, ["logits"], large, atol=1e-4, rtol=1e-4).passed
    assert not validate("onnx", runner(offset=2e-4), ["logits"], CASES, atol=1e-4, rtol=1e-3).passed


def test_large_activations_pass_with_rtol_and_a_failed_graph_withdraws_its_whole_feature(tmp_path):
    """T5 with wide weights has large activations: correct exports differ by more than atol alone allows.
    With rtol 0 the decoder fails, and then no graph of the feature is written: clients need all of them."""
    from bot.checkpoint import auto_class
    from bot.job import Job, make_options
    from bot.pipeline import run_export
    from tests.tiny import tiny_config, widen

    torch.manual_seed(0)
    config = tiny_config("t5")
    config.architectures = []
    model = auto_class("seq2seq-lm").from_config(config).eval()
    widen(model, std=1.0)
    model.save_pretrained(tmp_path / "t5")

    def export(out, **tolerance):
        options = make_options(["seq2seq-lm-with-past"], ["onnx"], **tolerance)
        return run_export(Job(model=str(tmp_path / "t5"), output_dir=tmp_path / out, options=options))

    strict = export("strict", rtol=0.0)
    assert not strict.artifacts and not (tmp_path / "strict" / "onnx").exists()
    reasons = {f.component: f.error for f in strict.failures}
    assert set(reasons) == {"encoder_model", "decoder_model", "decoder_with_past_model"}
    assert "validation failed" in reasons.values()
    assert "another graph of this feature failed" in reasons["encoder_model"]

    default = export("default")
    assert default.ok and {a.component for a in default.artifacts} == {"encoder_model", "decoder_model_merged"}
    merged = next(a for a in default.artifacts if a.component == "decoder_model_merged").validation
    assert max(merged.max_abs_diff.values()) > 1e-4  # beyond atol alone, within atol + rtol * |reference|
    assert merged.rtol == 1e-3
