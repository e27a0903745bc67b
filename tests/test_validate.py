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
