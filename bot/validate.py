"""Check an exported artifact against eager PyTorch on inputs of shapes it was not exported with.

A report is data: per shape tried, whether output names matched and, per output, the shapes, the largest absolute
and relative differences. Values are close when |actual - expected| <= atol + rtol * |expected| element by element
(as numpy.allclose and torch.testing judge): an absolute bound alone refuses correct exports of models whose
activations are large (T5), a relative one alone refuses values near zero. `passed` is true only if every check
passed; nothing else sets it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch


DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


@dataclass
class OutputCheck:
    name: str
    expected_shape: tuple[int, ...]
    actual_shape: tuple[int, ...]
    max_abs_diff: float
    max_rel_diff: float = 0.0  # largest |actual - expected| / |expected| where |expected| > atol
    tolerance_used: float = 0.0  # largest |actual - expected| / (atol + rtol * |expected|): close when <= 1

    def shape_ok(self) -> bool:
        return self.expected_shape == self.actual_shape

    def values_ok(self) -> bool:
        return self.shape_ok() and bool(np.isfinite(self.max_abs_diff)) and self.tolerance_used <= 1.0


def compare(name: str, expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float) -> OutputCheck:
    """One output against its reference: shapes, then absolute and relative differences and the tolerance used."""
    if expected.shape != actual.shape:
        return OutputCheck(name, tuple(expected.shape), tuple(actual.shape), float("inf"), float("inf"), float("inf"))
    if not actual.size:
        return OutputCheck(name, tuple(expected.shape), tuple(actual.shape), 0.0)
    expected, actual = expected.astype(np.float64), actual.astype(np.float64)
    diff, scale = np.abs(actual - expected), np.abs(expected)
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(scale > atol, diff / scale, 0.0)
        used = diff / (atol + rtol * scale)
    nan = np.isnan(diff).any()
    return OutputCheck(name, tuple(expected.shape), tuple(actual.shape),
                       float("inf") if nan else float(diff.max()),
                       float("inf") if nan else float(relative.max()),
                       float("inf") if nan else float(used.max()))


@dataclass
class ShapeCheck:
    """The artifact run on one set of inputs."""

    shape: str  # e.g. "batch=3, sequence=13, padded"
    actual_names: list[str]
    outputs: list[OutputCheck] = field(default_factory=list)
    error: str | None = None
    expected_names: list[str] | None = None  # when not the report's: a check of one submodule of a bundle


@dataclass
class ValidationReport:
    format: str
    atol: float
    expected_names: list[str]
    checks: list[ShapeCheck]
    generation: dict | None = None  # greedy-decoding parity (bot.generation), for generative features
    rtol: float = DEFAULT_RTOL

    def names_ok(self, check: ShapeCheck) -> bool:
        expected = check.expected_names if check.expected_names is not None else self.expected_names
        return check.actual_names == expected

    @property
    def passed(self) -> bool:
        if self.generation is not None and not self.generation["passed"]:
            return False
        return bool(self.checks) and all(
            check.error is None and self.names_ok(check) and all(o.values_ok() for o in check.outputs)
            for check in self.checks)

    def _worst(self, field: str) -> dict[str, float]:
        worst: dict[str, float] = {}
        for check in self.checks:
            for output in check.outputs:
                worst[output.name] = max(worst.get(output.name, 0.0), getattr(output, field))
        return worst

    @property
    def max_abs_diff(self) -> dict[str, float]:
        """Largest absolute difference per output over every shape tried."""
        return self._worst("max_abs_diff")

    @property
    def max_rel_diff(self) -> dict[str, float]:
        """Largest relative difference per output (where the reference is above atol) over every shape tried."""
        return self._worst("max_rel_diff")

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "atol": self.atol,
            "rtol": self.rtol,
            "shapes_tried": [check.shape for check in self.checks],
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
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


def combined_report(reports: dict[str, ValidationReport]) -> ValidationReport:
    """One report for a file of several submodules (a TorchScript bundle), each validated on its own graph's cases:
    every check, its shape prefixed with the submodule's name; worst differences per output over all of them."""
    first = next(iter(reports.values()))
    names = list(dict.fromkeys(name for report in reports.values() for name in report.expected_names))
    checks = [ShapeCheck(f"{component}: {check.shape}", check.actual_names, check.outputs, check.error,
                         check.expected_names if check.expected_names is not None else report.expected_names)
              for component, report in reports.items() for check in report.checks]
    return ValidationReport(first.format, first.atol, names, checks, rtol=first.rtol)


Runner = Callable[[dict[str, torch.Tensor]], tuple[list[str], list[np.ndarray]]]


LEAN_SESSION_BYTES = 2 * 1024**3  # from this many bytes of graph + weights on, validate with a lean session


def session_options(weight_bytes: int):
    """onnxruntime session options for validation: the defaults, or lean ones for a graph of 2 GB or more.

    Why lean: by default a session holds ~1.6x its file resident and ~1.9x while it initialises (arena, memory
    patterns, pre-packed weight copies, constant-folded copies), which is what sets the peak memory of a large
    export. Lean sessions skip pre-packing and the arena and run the graph as written, without graph optimisations:
    the check is then of the file as shipped, at ~1.0-1.3x its size (measured in benchmarks/README.md).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if weight_bytes >= LEAN_SESSION_BYTES:
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.add_session_config_entry("session.disable_prepacking", "1")
    return options


def onnx_runner(path: Path) -> Runner:
    import onnxruntime

    size = sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))  # the graph and its external data
    session = onnxruntime.InferenceSession(str(path), session_options(size), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    graph_inputs = [i.name for i in session.get_inputs()]

    def run(inputs):
        unknown = set(graph_inputs) - set(inputs)
        if unknown:
            raise ValueError(f"graph expects inputs not in the spec: {sorted(unknown)}")
        return names, session.run(names, {n: inputs[n].numpy() for n in graph_inputs})

    return run


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path)).eval()


def torchscript_runner(path: Path, output_names: list[str], submodule: str | None = None,
                       loaded: torch.jit.ScriptModule | None = None) -> Runner:
    """The file's module, or its `submodule` (a graph of a bundle); `loaded` is the file already loaded."""
    module = loaded if loaded is not None else load_torchscript(path)
    module = getattr(module, submodule) if submodule else module

    def run(inputs):
        with torch.no_grad():
            outputs = module(*inputs.values())
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return list(output_names[: len(outputs)]), [o.numpy() for o in outputs]

    return run


def named_caller(fmt: str, path: Path, input_names: list[str], output_names: list[str], runner: Runner | None = None):
    """A component as a function of named numpy inputs to named numpy outputs (for decoding loops); `runner`, when
    given, is the one validation used (no second session of the same file) or a bundle's submodule."""
    runner = runner or (onnx_runner(path) if fmt == "onnx" else torchscript_runner(path, output_names))

    def call(named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names, arrays = runner({name: torch.from_numpy(np.ascontiguousarray(named[name])) for name in input_names})
        return dict(zip(names, arrays))

    return call


def validate(fmt: str, runner: Runner, expected_names: list[str], cases: list[ValidationCase],
             atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> ValidationReport:
    """Run the artifact on every case and compare with the references; errors become failed checks, not crashes."""
    report = ValidationReport(fmt, atol, list(expected_names), [], rtol=rtol)
    for case in cases:
        try:
            names, actual = runner(case.inputs)
        except Exception as exc:  # the artifact could not run at this shape: that is a validation failure
            report.checks.append(ShapeCheck(case.shape, [], error=f"{type(exc).__name__}: {str(exc)[:300]}"))
            continue
        check = ShapeCheck(case.shape, list(names))
        for name, expected, got in zip(expected_names, case.expected, actual):
            check.outputs.append(compare(name, expected.detach().numpy(), got, atol, rtol))
        report.checks.append(check)
    return report
