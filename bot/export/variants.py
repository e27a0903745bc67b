"""Dtype variants (fp16, q8, q4, q4f16) of validated fp32 ONNX graphs, published only if they pass a quality gate.

A variant is built from a feature's validated fp32 graphs (for encoder-decoders: the encoder and the merged decoder)
and named as transformers.js asks for it (bot.layout.DTYPE_SUFFIXES). Quantization can change what a model does
without any error, so each variant is run on real inputs (the checkpoint's tokenizer on PROBE_TEXTS / PROMPTS when it
has one, a fixed seeded probe otherwise) and compared with eager fp32 PyTorch on the measure that matters for its task:

- embeddings and hidden states: the cosine similarity of the pooled embedding, row by row (the sentence-transformers
  pooling when the model declares one, else the mean over the attention mask); the worst row counts;
- classification heads (sequence, token, question answering, multiple choice, masked LM, image): label agreement
  (argmax) and the largest shift of any class probability;
- causal and encoder-decoder language models: greedy decoding with the variant alone (bot.generation's loop, a
  padded batch) against `generate()` over NEW_TOKENS steps (the share of each row decoded identically before the
  first divergence, averaged), and, with the reference tokens fed back, next-token top-1 agreement at every position.
A label, token or greedy step on which PyTorch itself is undecided (its top choice leads the runner-up by less than
DECIDED probability) is a tie that any rounding may flip, and does not count, unless most are like that (a flat,
untrained distribution, where ties cannot be told from damage): then every one counts.

A variant that fails is not published; the reason and the figures go to the manifest and the PR. Thresholds are per
dtype (THRESHOLDS), measured with benchmarks/variants.py (README: "Dtype variants").

The recipes are in bot.export.recipes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bot.layout import (DECODER, DTYPE_SUFFIXES, ENCODER, FP32, MERGED_DECODER, MODEL,
                        USE_CACHE_BRANCH)
from bot.export.recipes import RECIPES, Recipe, remove
from bot.validate import OutputCheck, ShapeCheck, ValidationReport, named_caller

log = logging.getLogger(__name__)

GENERATIVE = {"causal-lm", "causal-lm-with-past", "seq2seq-lm", "seq2seq-lm-with-past"}
LABEL_FEATURES = {"sequence-classification", "token-classification", "question-answering", "multiple-choice",
                  "image-classification", "masked-lm", "causal-lm"}
# Gate kinds and their thresholds per dtype: ("name", bound, at_least). Measured with benchmarks/variants.py.
THRESHOLDS: dict[str, dict[str, tuple[tuple[str, float, bool], ...]]] = {
    "embedding": {
        "fp16": (("min cosine", 0.999, True),),
        "q8": (("min cosine", 0.99, True),),
        "q4": (("min cosine", 0.90, True),),
        "q4f16": (("min cosine", 0.90, True),),
    },
    "labels": {
        "fp16": (("label agreement", 0.99, True), ("max probability shift", 0.01, False)),
        "q8": (("label agreement", 0.95, True), ("max probability shift", 0.05, False)),
        "q4": (("label agreement", 0.9, True), ("max probability shift", 0.1, False)),
        "q4f16": (("label agreement", 0.9, True), ("max probability shift", 0.1, False)),
    },
    "generation": {
        "fp16": (("greedy agreement", 1.0, True), ("next-token agreement", 0.99, True)),
        "q8": (("greedy agreement", 0.75, True), ("next-token agreement", 0.95, True)),
        "q4": (("greedy agreement", 0.5, True), ("next-token agreement", 0.85, True)),
        "q4f16": (("greedy agreement", 0.5, True), ("next-token agreement", 0.85, True)),
    },
}

# Real text for the gates when the checkpoint has a tokenizer: lengths from two tokens to a long sentence (short
# texts are pooled over few tokens and move most), plain prose, a question, numbers, code, another language.
PROBE_TEXTS = (
    "Ok.",
    "Hello world!",
    "Exports must match PyTorch.",
    "Where is the nearest train station?",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A man is playing a guitar on the stage while the crowd sings along.",
    "Quantized models are smaller, but they may lose accuracy without anyone noticing.",
    "I love reading books about the history of science and mathematics.",
    "The weather today is sunny with a light breeze from the west and no rain expected.",
    "Can you recommend a good restaurant in Paris for a family dinner?",
    "Machine learning models need careful validation before they are deployed to production.",
    "She sold 42 seashells by the seashore on 3 July 2021.",
    "def add(a, b): return a + b",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Stocks fell sharply after the central bank raised interest rates again.",
    "Please turn off the lights when you leave the room.",
)
PROMPTS = ("The capital of France is", "Once upon a time, there was", "def fibonacci(n):",
           "translate English to German: The house is wonderful.")
# A label, next token or greedy step counts only where PyTorch's own top choice leads the runner-up by at least this
# many probability points: a closer call is a tie that any rounding may flip (the probability shift bounds those).
DECIDED = 0.02
MAX_PROBE_TOKENS = 64
MAX_PROMPT_TOKENS = 8
PROBE_ROWS = 16  # rows of the seeded random probe when there is no tokenizer (or the inputs are not plain text)
PROBE_SEED = 7

Digest = Callable[[Path], dict]  # file -> {sha256, size}
Progress = Callable[[str], None]


# -- gates -------------------------------------------------------------------------------------------------------


@dataclass
class Criterion:
    name: str
    value: float
    bound: float
    at_least: bool = True

    @property
    def passed(self) -> bool:
        return math.isfinite(self.value) and (self.value >= self.bound if self.at_least else self.value <= self.bound)

    def describe(self) -> str:
        op = (">=" if self.at_least else "<=") if self.passed else ("<" if self.at_least else ">")
        return f"{self.name} {_figure(self.value, self.at_least)} {op} {_figure(self.bound)}"

    def to_dict(self) -> dict:
        return {"name": self.name, "value": _finite(self.value), "bound": self.bound,
                "at_least": self.at_least, "passed": self.passed}


@dataclass
class Gate:
    """One variant's quality check: what was measured on which inputs, against which bounds."""

    kind: str  # "embedding", "labels" or "generation"
    recipe: str
    probe: str  # the inputs, in words
    criteria: list[Criterion] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # e.g. greedy tokens per row
    error: str | None = None
    seconds: float = 0.0
    checks: dict[str, list[ShapeCheck]] = field(default_factory=dict)  # component -> the runs, for the record

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.criteria) and all(c.passed for c in self.criteria)

    def summary(self) -> str:
        prefix = f"{self.recipe}: " if self.recipe != "-" else ""
        return prefix + (self.error or ", ".join(c.describe() for c in self.criteria))

    def to_dict(self) -> dict:
        return {"passed": self.passed, "kind": self.kind, "recipe": self.recipe, "probe": self.probe,
                "criteria": [c.to_dict() for c in self.criteria], "error": self.error,
                "seconds": round(self.seconds, 2), **({"details": _json_safe(self.details)} if self.details else {})}


def _figure(value: float, down: bool = True) -> str:
    """4 decimals, rounded away from passing (down for lower bounds, up for upper bounds): 0.99999 is not "1"."""
    if not math.isfinite(value):
        return str(value)
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2g}"
    rounded = (math.floor if down else math.ceil)(round(value * 1e4, 6)) / 1e4
    return f"{rounded:.4f}".rstrip("0").rstrip(".")


def _finite(value: float):
    return value if math.isfinite(value) else str(value)


def _json_safe(value):
    """JSON has no NaN or infinity: such figures are written as strings ("nan")."""
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@dataclass
class VariantReport(ValidationReport):
    """A variant's report: the quality gate decides, not an element-wise tolerance.

    `checks` hold the gate's own runs (shape, output names, largest differences against PyTorch, for the record);
    a variant passes when it ran on every probe with the right outputs and its gate passed. `atol` is the largest
    difference measured (rtol 0), so that every reader of reports sees a finite, true figure; the manifest records
    no tolerance for a variant (atol and rtol null) and its `quality` instead."""

    dtype: str = FP32
    gate: Gate | None = None
    earlier: list[Gate] = field(default_factory=list)  # recipes tried before, refused

    @property
    def passed(self) -> bool:
        return (self.gate is not None and self.gate.passed
                and all(c.error is None and all(o.shape_ok() for o in c.outputs) for c in self.checks))

    def to_dict(self) -> dict:
        data = super().to_dict()
        data.update(atol=None, rtol=None, dtype=self.dtype, quality=self.gate.to_dict() if self.gate else None)
        if self.earlier:
            data["refused_recipes"] = [g.to_dict() for g in self.earlier]
        return data


@dataclass
class Refusal:
    """A requested variant that is not published: every recipe failed its gate (or could not be built)."""

    feature: str
    dtype: str
    components: list[str]
    attempts: list[Gate]

    @property
    def reason(self) -> str:
        return "; ".join(g.summary() for g in self.attempts) or "no recipe"

    def to_dict(self) -> dict:
        return {"feature": self.feature, "dtype": self.dtype, "components": self.components, "reason": self.reason,
                "attempts": [g.to_dict() for g in self.attempts]}


def gate_kind(feature: str, family: str) -> str | None:
    """Which gate a feature's variants get; None: no gate applies (its variants are not published)."""
    base = feature.removesuffix("-with-past")
    if feature in GENERATIVE and family in ("decoder", "seq2seq"):
        return "generation"
    if base in LABEL_FEATURES:
        return "labels"
    if base in ("default", "masked-im"):
        return "embedding"
    return None


def criteria_for(kind: str, dtype: str, measured: dict[str, float]) -> list[Criterion]:
    return [Criterion(name, measured.get(name, float("nan")), bound, at_least)
            for name, bound, at_least in THRESHOLDS[kind][dtype]]


@dataclass
class Probe:
    """Inputs of one gate run and the eager model's outputs for them."""

    description: str
    inputs: dict[str, torch.Tensor]
    expected: list[np.ndarray]
    pooling_mask: np.ndarray | None = None  # (batch, sequence) where rows are text


# -- the stage -----------------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What the gates need from the pipeline for one feature."""

    model: torch.nn.Module  # eager fp32 PyTorch
    feature: str
    family: str
    graphs: list  # bot.specs.Graph, the feature's graphs (wrappers and input specs)
    spec: object  # bot.specs.ExportSpec
    tokenizer: object | None
    staging: Path
    pooling: dict | None = None  # sentence-transformers pooling of the primary feature
    say: Progress = lambda message: None


def make_variants(artifacts: list, dtypes: tuple[str, ...], context: Context, digest: Digest):
    """Variants of one feature's validated fp32 ONNX artifacts: (published artifacts, refusals)."""
    made, refused = [], []
    wanted = [d for d in dtypes if d in RECIPES]
    if not wanted or not artifacts:
        return made, refused
    components = [a.component for a in artifacts]
    kind, probes, problem = gate_kind(context.feature, context.family), None, None
    try:
        if kind is None:
            raise _Refused(f"no quality gate is defined for the {context.feature} feature")
        if kind != "generation":
            probes = _probes(context, artifacts)
    except _Refused as exc:
        problem = str(exc)
    for dtype in wanted:
        if problem is not None:
            context.say(f"    {context.feature} -> onnx {dtype}: not made: {problem}")
            refused.append(Refusal(context.feature, dtype, components, [Gate(kind or "none", "-", "", error=problem)]))
            continue
        attempts: list[Gate] = []
        for recipe in RECIPES[dtype]:
            gate, variants = _attempt(kind, dtype, recipe, context, artifacts, probes)
            if gate.passed:
                made += _artifacts(artifacts, variants, dtype, gate, attempts, context.staging, digest)
                break
            attempts.append(gate)
            for variant in variants:
                remove(context.staging / variant)
        else:
            refused.append(Refusal(context.feature, dtype, components, attempts))
    return made, refused


def _attempt(kind: str, dtype: str, recipe: Recipe, context: Context, artifacts, probes) -> tuple[Gate, list[str]]:
    """Build one recipe's graphs and judge them: (the gate, the variant files in staging)."""
    started = time.perf_counter()
    context.say(f"    {context.feature} -> onnx {dtype}: {recipe.name}")
    gate, variants = Gate(kind, recipe.name, ""), []
    try:
        variants = [_build(a, dtype, recipe, context.staging) for a in artifacts]
        gate = _judge(kind, dtype, recipe, context, artifacts, variants, probes)
    except _Refused as exc:
        gate.error = str(exc)
    except Exception as exc:  # a recipe that cannot handle this graph: a refusal, not a crash
        log.debug("variant %s of %s failed", dtype, context.feature, exc_info=True)
        gate.error = f"{type(exc).__name__}: {str(exc)[:300]}"
    gate.seconds = time.perf_counter() - started
    context.say(f"    {context.feature} -> onnx {dtype}: {'passed' if gate.passed else 'refused'}: {gate.summary()}")
    return gate, variants


class _Refused(Exception):
    """A gate that cannot be run, with the reason for the PR."""


def _variant_path(relative: str, dtype: str) -> str:
    stem, _, suffix = relative.rpartition(".")
    return f"{stem}{DTYPE_SUFFIXES[dtype]}.{suffix}"


def _build(artifact, dtype: str, recipe: Recipe, staging: Path) -> str:
    relative = _variant_path(artifact.path, dtype)
    remove(staging / relative)
    recipe.build(staging / artifact.path, staging / relative)
    return relative


def _artifacts(artifacts, variants: list[str], dtype: str, gate: Gate, earlier: list[Gate], staging: Path,
               digest: Digest) -> list:
    from bot.export.onnx import artifact_files, graph_opset

    made = []
    for artifact, relative in zip(artifacts, variants):
        path = staging / relative
        checks = list(gate.checks.get(artifact.component, []))
        measured = [o.max_abs_diff for c in checks for o in c.outputs if math.isfinite(o.max_abs_diff)]
        report = VariantReport("onnx", max(measured, default=0.0), list(artifact.outputs), checks, rtol=0.0,
                               dtype=dtype, gate=gate, earlier=list(earlier))
        made.append(replace(artifact, path=relative, dtype=dtype, validation=report, opset=graph_opset(path),
                            files={f.relative_to(staging).as_posix(): digest(f) for f in artifact_files(path)},
                            seconds=gate.seconds))
    return made


# -- running graphs --------------------------------------------------------------------------------------------


def _caller(artifacts, variants: list[str], staging: Path):
    """component, named numpy inputs -> named numpy outputs, with the variant's graphs (token types all 0)."""
    callers = {a.component: named_caller("onnx", staging / v, a.inputs, a.outputs) for a, v in zip(artifacts, variants)}
    type_ids = {a.component: [n for n in a.inputs if n.endswith("token_type_ids")] for a in artifacts}

    def call(component, named):
        zeros = {name: np.zeros_like(named["input_ids"]) for name in type_ids[component] if name not in named}
        return callers[component]({**named, **zeros})

    return call


def _check(description: str, names: list[str], expected: list[np.ndarray], actual: dict[str, np.ndarray],
           atol: float = 1e-4) -> ShapeCheck:
    """A gate run as a ShapeCheck: shapes and the largest differences, with no tolerance applied."""
    check = ShapeCheck(description, [n for n in names if n in actual])
    for name, reference in zip(names, expected):
        got = actual.get(name)
        if got is None:
            continue
        if got.shape != reference.shape:
            check.outputs.append(OutputCheck(name, reference.shape, got.shape, float("inf"), float("inf")))
            continue
        diff = np.abs(got.astype(np.float64) - reference.astype(np.float64))
        scale = np.abs(reference.astype(np.float64))
        finite = bool(np.isfinite(diff).all())
        worst = float(diff.max()) if diff.size and finite else (0.0 if not diff.size else float("inf"))
        with np.errstate(invalid="ignore", divide="ignore"):
            relative = np.where(scale > atol, diff / scale, 0.0)
        check.outputs.append(OutputCheck(name, tuple(reference.shape), tuple(got.shape), worst,
                                         float(relative.max()) if relative.size and finite else 0.0, 0.0))
    return check


# -- probes for single-graph features ---------------------------------------------------------------------------


def _encoder_decoder(artifacts) -> bool:
    return {a.component for a in artifacts} in ({ENCODER, MERGED_DECODER}, {ENCODER, DECODER})


def _probes(context: Context, artifacts) -> list[Probe] | None:
    if _encoder_decoder(artifacts):
        return None  # judged by _judge_seq2seq_hidden
    if len(context.graphs) != 1 or len(artifacts) != 1:
        raise _Refused(f"no quality gate for the graphs {', '.join(a.component for a in artifacts)}")
    graph = context.graphs[0]
    inputs, description = _text_probe(context, graph) or _random_probe(context, graph)
    with torch.no_grad():
        expected = graph.wrapper.eval()(*[inputs[i.name] for i in graph.inputs])
    expected = [e.detach().float().numpy() for e in (expected if isinstance(expected, (tuple, list)) else [expected])]
    mask = inputs.get("attention_mask") if any(i.name == "input_ids" for i in graph.inputs) else None
    return [Probe(description, inputs, expected, mask.numpy() if mask is not None else None)]


_TEXT_INPUTS = {"input_ids", "attention_mask", "token_type_ids", "position_ids"}


def _text_probe(context: Context, graph) -> tuple[dict[str, torch.Tensor], str] | None:
    """PROBE_TEXTS through the checkpoint's tokenizer, right-padded, for plain text graphs (2-D token inputs)."""
    tokenizer, config = context.tokenizer, context.model.config
    plain = [i for i in graph.inputs if not i.name.startswith("past_key_values.")]
    if tokenizer is None or any(i.name not in _TEXT_INPUTS or len(i.dims) != 2 for i in plain):
        return None
    limit = min(MAX_PROBE_TOKENS, getattr(config, "max_position_embeddings", None) or MAX_PROBE_TOKENS)
    try:
        rows = [list(tokenizer(text, truncation=True, max_length=limit)["input_ids"]) for text in PROBE_TEXTS]
    except Exception:  # noqa: BLE001 - an odd tokenizer means the seeded probe, not a failed variant
        log.debug("tokenizer probe failed", exc_info=True)
        return None
    if not all(rows) or max(max(r) for r in rows) >= config.vocab_size:
        return None
    ids, mask = _pad(rows, _pad_id(config, tokenizer), "right")
    return _complete(graph, ids, mask), f"{len(rows)} sentences of real text (the tokenizer's, padded to {ids.shape[1]})"


def _pad_id(config, tokenizer=None) -> int:
    from bot.generation import pad_token_id

    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if isinstance(pad, int) and 0 <= pad < config.vocab_size else pad_token_id(config)


def _pad(rows: list[list[int]], pad: int, side: str) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
    return ids, mask


def _complete(graph, ids: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
    """Every input of the graph for a batch of ids: zero token types, positions from the mask, an empty past."""
    from bot.generation import positions

    values = {}
    for spec in graph.inputs:
        if spec.name == "input_ids":
            values[spec.name] = torch.from_numpy(ids)
        elif spec.name == "attention_mask":
            values[spec.name] = torch.from_numpy(mask)
        elif spec.name == "token_type_ids":
            values[spec.name] = torch.zeros_like(torch.from_numpy(ids))
        elif spec.name == "position_ids":
            values[spec.name] = torch.from_numpy(positions(mask, ids.shape[1]))
        else:  # past_key_values.*: length 0
            values[spec.name] = torch.zeros((ids.shape[0], spec.dims[1], 0, spec.dims[3]), dtype=torch.float32)
    return values


def _random_probe(context: Context, graph) -> tuple[dict[str, torch.Tensor], str]:
    """A seeded batch of PROBE_ROWS in the spec's (padded) validation shape, else the graph's first validation input."""
    from bot.layout import BATCH
    from bot.specs import Shape

    names = [i.name for i in graph.inputs]
    try:
        shapes = context.spec.validation_shapes(context.feature)
        shape = next((s for s in shapes if s.padded), shapes[0])
        if BATCH in shape.sizes:
            shape = Shape({**shape.sizes, BATCH: PROBE_ROWS}, padded=shape.padded)
            inputs = context.spec.example_inputs(context.model.config, graph.inputs, shape, seed=PROBE_SEED)
            if list(inputs) == names:
                return inputs, f"a fixed probe of {PROBE_ROWS} seeded random rows ({shape.describe()})"
    except Exception:  # noqa: BLE001 - specs that build their cases differently: use one of those
        log.debug("seeded probe not available", exc_info=True)
    description, inputs = graph.cases[0]
    return dict(inputs), f"a fixed probe: the validation input {description}"


# -- judging ---------------------------------------------------------------------------------------------------------


def _judge(kind: str, dtype: str, recipe: Recipe, context: Context, artifacts, variants: list[str], probes):
    call = _caller(artifacts, variants, context.staging)
    if kind == "generation":
        return _judge_generation(dtype, recipe, context, artifacts, call)
    if _encoder_decoder(artifacts):
        return _judge_seq2seq_hidden(dtype, recipe, context, artifacts, call)
    artifact = artifacts[0]
    checks, measured = [], {}
    for probe in probes:
        named = {k: v.numpy() for k, v in probe.inputs.items()}
        outputs = call(artifact.component, named)
        checks.append(_check(probe.description, artifact.outputs, probe.expected, outputs))
        actual = [outputs[n] for n in artifact.outputs]
        found = (_embedding_metrics if kind == "embedding" else _label_metrics)(probe, actual, artifact.outputs,
                                                                                context)
        for name, value in found.items():  # the worst over probes
            worst = min if name != "max probability shift" else max
            measured[name] = worst(measured[name], value) if name in measured else value
    return Gate(kind, recipe.name, "; ".join(p.description for p in probes), criteria_for(kind, dtype, measured),
                details={"measured": measured}, checks={artifact.component: checks})


def _pool(hidden: np.ndarray, mask: np.ndarray | None, mode: str) -> np.ndarray:
    hidden = hidden.astype(np.float64)
    if hidden.ndim != 3:
        return hidden.reshape(hidden.shape[0], -1)
    if mask is None or mask.shape[:2] != hidden.shape[:2]:
        mask = np.ones(hidden.shape[:2])
    weights = mask[..., None].astype(np.float64)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return np.where(weights > 0, hidden, -np.inf).max(axis=1)
    if mode == "lasttoken":
        last = np.maximum(mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1), 0)
        return hidden[np.arange(hidden.shape[0]), last]
    return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (a * b).sum(axis=-1) / norms
    return np.where(norms > 0, values, np.where((a == b).all(axis=-1), 1.0, 0.0))


def _embedding_metrics(probe: Probe, actual: list[np.ndarray], names: list[str], context: Context) -> dict:
    mode = (context.pooling or {}).get("mode", "mean")
    expected, got = probe.expected[0], actual[0]
    if not np.isfinite(got).all():
        return {"min cosine": float("nan"), "mean cosine": float("nan")}
    values = cosine_rows(_pool(got, probe.pooling_mask, mode), _pool(expected, probe.pooling_mask, mode))
    return {"min cosine": float(values.min()), "mean cosine": float(values.mean())}


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _decided(probabilities: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """The rows (or positions) that count: those where PyTorch's top class leads the runner-up by at least DECIDED
    probability points, when most rows are like that; else (a flat, untrained distribution, where ties cannot be
    told from damage) every row."""
    keep = np.ones(probabilities.shape[:-1], bool) if keep is None else keep
    if probabilities.shape[-1] < 2:
        return keep
    top = np.sort(probabilities, axis=-1)[..., -2:]
    decided = keep & ((top[..., 1] - top[..., 0]) >= DECIDED)
    return decided if decided.sum() * 2 >= keep.sum() else keep


def _label_metrics(probe: Probe, actual: list[np.ndarray], names: list[str], context: Context) -> dict:
    agree, decided, total, shift = 0, 0, 0, 0.0
    for name, expected, got in zip(names, probe.expected, actual):
        if "logits" not in name:
            continue
        if not np.isfinite(got).all():
            return {"label agreement": float("nan"), "max probability shift": float("nan")}
        if expected.ndim == 3:  # one label per token: only real tokens count
            keep = (probe.pooling_mask.astype(bool) if probe.pooling_mask is not None
                    and probe.pooling_mask.shape == expected.shape[:2] else np.ones(expected.shape[:2], bool))
            expected, got = expected[keep], got[keep]
        else:
            expected, got = expected.reshape(expected.shape[0], -1), got.reshape(got.shape[0], -1)
        reference, variant = _softmax(expected), _softmax(got)
        counted = _decided(reference)
        agree += int((expected.argmax(-1) == got.argmax(-1))[counted].sum())
        decided += int(counted.sum())
        total += expected.shape[0]
        shift = max(shift, float(np.abs(reference - variant).max()))
    if not total:
        raise _Refused("no logits output to compare labels on")
    return {"label agreement": agree / decided if decided else float("nan"), "max probability shift": shift,
            "counted rows": decided, "rows": total}


# -- generation gate --------------------------------------------------------------------------------------------


def _prompts(context: Context, side: str) -> tuple[np.ndarray, np.ndarray, str]:
    from bot.generation import padded_prompts

    config, tokenizer = context.model.config, context.tokenizer
    if tokenizer is not None:
        try:
            rows = [list(tokenizer(text)["input_ids"])[:MAX_PROMPT_TOKENS] for text in PROMPTS]
            if all(rows) and max(max(r) for r in rows) < config.vocab_size:
                ids, mask = _pad(rows, _pad_id(config, tokenizer), side)
                return ids, mask, f"{len(rows)} prompts of real text ({side}-padded)"
        except Exception:  # noqa: BLE001
            log.debug("tokenizer prompts failed", exc_info=True)
    ids, mask, rows = padded_prompts(config, side)
    return ids, mask, f"{len(rows)} seeded random prompts ({side}-padded)"


def _judge_generation(dtype: str, recipe: Recipe, context: Context, artifacts, call):
    from bot import generation

    model, config = context.model.eval(), context.model.config
    seq2seq = bool(config.is_encoder_decoder and context.feature.startswith("seq2seq"))
    side = "right" if seq2seq else "left"
    ids, mask, probe = _prompts(context, side)
    graph_inputs = {a.component: a.input_dims for a in artifacts}
    expected = generation._reference(model, ids, mask)
    decode = generation._seq2seq if seq2seq else generation._causal
    actual = decode(config, ids, mask, call, graph_inputs, generation.NEW_TOKENS)
    steps = generation.NEW_TOKENS
    reference, logits, names, component = _teacher_forced(model, config, ids, mask, np.asarray(expected, np.int64),
                                                          seq2seq, call, graph_inputs)
    probabilities = _softmax(reference["logits"])
    counted = _decided(probabilities, reference["mask"].astype(bool))
    ties_excluded = bool(counted.sum() < reference["mask"].sum())
    agreement = float((reference["logits"].argmax(-1) == logits.argmax(-1))[counted].mean())
    first = 0 if seq2seq else ids.shape[1] - 1  # the position whose logits predict the first new token
    prefix = []
    for row, (row_e, row_a) in enumerate(zip(expected, actual)):
        step = next((i for i, (e, a) in enumerate(zip(row_e, row_a)) if e != a), steps)
        if ties_excluded and step < steps and len(row_a) > step:  # a divergence PyTorch could not decide: a tie
            p = probabilities[row, first + step]
            step = steps if p[row_e[step]] - p[row_a[step]] < DECIDED else step
        prefix.append(step / steps)
    check = _check(f"teacher-forced: {probe} + {steps} reference tokens", names[:1], [reference["logits"]],
                   {names[0]: logits})
    measured = {"greedy agreement": float(np.mean(prefix)), "next-token agreement": agreement,
                "counted positions": int(counted.sum()), "positions": int(reference["mask"].sum())}
    if not np.isfinite(logits).all():
        measured["next-token agreement"] = float("nan")
    return Gate("generation", recipe.name, f"{probe}, {steps} greedy steps", criteria_for("generation", dtype, measured),
                details={"measured": measured, "prompts": ids.tolist(), "expected": expected, "actual": actual},
                checks={component: [check]})


def _teacher_forced(model, config, ids, mask, tokens, seq2seq: bool, call, graph_inputs):
    """PyTorch's and the variant's logits over the prompts followed by the reference tokens, in one pass each."""
    from bot.generation import positions
    from bot.specs import accepts

    if seq2seq:
        decoder = np.concatenate([_start_column(config, ids.shape[0]), tokens[:, :-1]], axis=1)
        with torch.no_grad():
            reference = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                              decoder_input_ids=torch.from_numpy(decoder)).logits.float().numpy()
        component, name, logits = _seq2seq_first_step(call, graph_inputs, ids, mask, decoder)
        return {"logits": reference, "mask": np.ones(decoder.shape, np.int64)}, logits, [name], component
    sequence = np.concatenate([ids, tokens], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(tokens)], axis=1)
    kwargs = {"input_ids": torch.from_numpy(sequence), "attention_mask": torch.from_numpy(full_mask)}
    if accepts(model, "position_ids"):
        kwargs["position_ids"] = torch.from_numpy(positions(full_mask, sequence.shape[1]))
    with torch.no_grad():
        reference = model(**kwargs, use_cache=False).logits.float().numpy()
    inputs = graph_inputs[MODEL]
    named = {"input_ids": sequence, "attention_mask": full_mask, **_empty_past(inputs, sequence.shape[0])}
    if "position_ids" in inputs:
        named["position_ids"] = positions(full_mask, sequence.shape[1])
    outputs = call(MODEL, named)
    name = next(iter(outputs))
    return {"logits": reference, "mask": full_mask}, outputs[name], [name], MODEL


def _start_column(config, batch: int) -> np.ndarray:
    start = config.decoder_start_token_id if config.decoder_start_token_id is not None else config.pad_token_id
    return np.full((batch, 1), start or 0, np.int64)


def _seq2seq_first_step(call, graph_inputs, ids, mask, decoder) -> tuple[str, str, np.ndarray]:
    """The encoder, then the decoder over a whole decoder sequence with an empty past: (component, output, value)."""
    hidden = call(ENCODER, {"input_ids": ids, "attention_mask": mask})["last_hidden_state"]
    named = {"input_ids": decoder, "encoder_attention_mask": mask, "encoder_hidden_states": hidden}
    component = MERGED_DECODER if MERGED_DECODER in graph_inputs else DECODER
    if component == MERGED_DECODER:
        named.update(_empty_past(graph_inputs[component], ids.shape[0]))
        named[USE_CACHE_BRANCH] = np.array([False])
    outputs = call(component, named)
    name = next(iter(outputs))
    return component, name, outputs[name]


def _judge_seq2seq_hidden(dtype: str, recipe: Recipe, context: Context, artifacts, call):
    """Encoder-decoder hidden states (`default-with-past`): the decoder's pooled states for a real batch, its first
    tokens as decoder inputs, against PyTorch's."""
    model, config = context.model.eval(), context.model.config
    probe = _text_probe(context, context.graphs[0]) if context.tokenizer is not None else None
    if probe is not None:
        ids, mask = probe[0]["input_ids"].numpy(), probe[0]["attention_mask"].numpy()
        description = probe[1]
    else:
        from bot.generation import padded_prompts

        ids, mask, rows = padded_prompts(config, "right")
        description = f"{len(rows)} seeded random rows (right-padded)"
    decoder = np.concatenate([_start_column(config, ids.shape[0]), ids[:, :MAX_PROMPT_TOKENS - 1]], axis=1)
    with torch.no_grad():
        reference = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                          decoder_input_ids=torch.from_numpy(decoder)).last_hidden_state.float().numpy()
    component, name, hidden = _seq2seq_first_step(call, {a.component: a.input_dims for a in artifacts}, ids, mask,
                                                  decoder)
    description += f", the decoder fed {decoder.shape[1]} tokens"
    measured = _embedding_metrics(Probe(description, {}, [reference]), [hidden], [name], context)
    return Gate("embedding", recipe.name, description, criteria_for("embedding", dtype, measured),
                details={"measured": measured},
                checks={component: [_check(description, [name], [reference], {name: hidden})]})


def _empty_past(inputs: dict[str, tuple], batch: int) -> dict[str, np.ndarray]:
    return {name: np.zeros((batch, dims[1], 0, dims[3]), np.float32) for name, dims in inputs.items()
            if name.startswith("past_key_values.")}
