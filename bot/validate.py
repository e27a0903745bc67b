"""Check an exported artifact against eager PyTorch on inputs of shapes it was not exported with.

A report is data: per shape tried, whether output names matched and, per output, the shapes and the largest
absolute difference. `passed` is true only if every check passed; nothing else sets it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch


@dataclass
class OutputCheck:
    name: str
    expected_shape: tuple[int, ...]
    actual_shape: tuple[int, ...]
    max_abs_diff: float

    def shape_ok(self) -> bool:
        return self.expected_shape == self.actual_shape

    def values_ok(self, atol: float) -> bool:
        return self.shape_ok() and bool(np.isfinite(self.max_abs_diff)) and self.max_abs_diff <= atol


@dataclass
class ShapeCheck:
    """The artifact run on one set of inputs."""

    shape: str  # e.g. "batch=3, sequence=13, padded"
    actual_names: list[str]
    outputs: list[OutputCheck] = field(default_factory=list)
    error: str | None = None


@dataclass
class ValidationReport:
    format: str
    atol: float
    expected_names: list[str]
    checks: list[ShapeCheck]
    generation: dict | None = None  # greedy-decoding parity (bot.generation), for generative features

    def names_ok(self, check: ShapeCheck) -> bool:
        return check.actual_names == self.expected_names

    @property
    def passed(self) -> bool:
        if self.generation is not None and not self.generation["passed"]:
            return False
        return bool(self.checks) and all(
            check.error is None and self.names_ok(check) and all(o.values_ok(self.atol) for o in check.outputs)
            for check in self.checks)

    @property
    def max_abs_diff(self) -> dict[str, float]:
        """Largest difference per output over every shape tried."""
        worst: dict[str, float] = {}
        for check in self.checks:
            for output in check.outputs:
                worst[output.name] = max(worst.get(output.name, 0.0), output.max_abs_diff)
        return worst

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "atol": self.atol,
            "shapes_tried": [check.shape for check in self.checks],
            "max_abs_diff": self.max_abs_diff,
            "errors": [check.error for check in self.checks if check.error],
            **({"generation": self.generation} if self.generation is not None else {}),
        }


@dataclass
class ValidationCase:
    """Inputs of one shape and the eager model's outputs for them."""

    shape: str
    inputs: dict[str, torch.Tensor]
    expected: list[torch.Tensor]


def reference_cases(wrapper: torch.nn.Module, named_inputs: list[tuple[str, dict[str, torch.Tensor]]]) -> list[ValidationCase]:
    """Run the eager model once per input set; the references are shared by every format."""
    cases = []
    wrapper.eval()  # an exporter that failed may have left the model in training mode (dropout on)
    with torch.no_grad():
        for shape, inputs in named_inputs:
            cases.append(ValidationCase(shape, inputs, list(wrapper(*inputs.values()))))
    return cases


Runner = Callable[[dict[str, torch.Tensor]], tuple[list[str], list[np.ndarray]]]


def onnx_runner(path: Path) -> Runner:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    graph_inputs = [i.name for i in session.get_inputs()]

    def run(inputs):
        unknown = set(graph_inputs) - set(inputs)
        if unknown:
            raise ValueError(f"graph expects inputs not in the spec: {sorted(unknown)}")
        return names, session.run(names, {n: inputs[n].numpy() for n in graph_inputs})

    return run


def torchscript_runner(path: Path, output_names: list[str]) -> Runner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path))
    module.eval()

    def run(inputs):
        with torch.no_grad():
            outputs = module(*inputs.values())
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return list(output_names[: len(outputs)]), [o.numpy() for o in outputs]

    return run


def named_caller(fmt: str, path: Path, input_names: list[str], output_names: list[str]):
    """A component as a function of named numpy inputs to named numpy outputs (for decoding loops)."""
    runner = onnx_runner(path) if fmt == "onnx" else torchscript_runner(path, output_names)

    def call(named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names, arrays = runner({name: torch.from_numpy(np.ascontiguousarray(named[name])) for name in input_names})
        return dict(zip(names, arrays))

    return call


def validate(fmt: str, runner: Runner, expected_names: list[str], cases: list[ValidationCase],
             atol: float) -> ValidationReport:
    """Run the artifact on every case and compare with the references; errors become failed checks, not crashes."""
    report = ValidationReport(fmt, atol, list(expected_names), [])
    for case in cases:
        try:
            names, actual = runner(case.inputs)
        except Exception as exc:  # the artifact could not run at this shape: that is a validation failure
            report.checks.append(ShapeCheck(case.shape, [], error=f"{type(exc).__name__}: {str(exc)[:300]}"))
            continue
        check = ShapeCheck(case.shape, list(names))
        for name, expected, got in zip(expected_names, case.expected, actual):
            expected = expected.detach().numpy()
            if expected.shape != got.shape:
                diff = float("inf")
            else:
                diff = float(np.abs(expected - got).max()) if got.size else 0.0
            check.outputs.append(OutputCheck(name, tuple(expected.shape), tuple(got.shape), diff))
        report.checks.append(check)
    return report
