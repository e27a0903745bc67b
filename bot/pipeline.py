"""The one pipeline every front door feeds: checkpoint -> plan -> export x validate per feature and format -> files.

Nothing here prints. Progress goes to an optional callback, results come back as data (`ExportResult`), and the
front doors render them. Artifacts are written to a staging folder inside the output directory and moved into the
published layout only once validated, so a failed artifact never sits where a valid one is expected.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bot import checkpoint as ckpt
from bot.diskfull import raise_if_disk_full
from bot.errors import BotError, UsageError
from bot import layout
from bot.export.merge import merge_decoders
from bot.export.onnx import artifact_files, export_onnx, move_onnx, weight_bytes
from bot.export import torchscript
from bot.generation import GENERATION_FEATURES, GenerationReference, check_generation, generation_reference
from bot.job import Job
from bot.manifest import MANIFEST_NAME, write_manifest
from bot.outputdir import clear as clear_earlier_export
from bot.progress import advance, steps
from bot.specs import Graph, spec_for
from bot.usage import sentence_transformers_pooling
from bot.validate import (DEFAULT_RTOL, LEAN_SESSION_BYTES, Runner, ValidationCase, ValidationReport,
                          combined_report, load_torchscript, named_caller, onnx_runner, reference_cases,
                          torchscript_runner, validate)

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class Artifact:
    """One exported and validated file (plus its external data, if any)."""

    path: str  # relative to the output directory, posix
    format: str
    feature: str
    component: str  # the graph: "model", or "encoder_model" / "decoder_model_merged" (ONNX); names in bot.layout
    inputs: list[str]
    outputs: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    opset: int | None
    exporter: str
    files: dict[str, dict]  # relative path -> {sha256, size}
    validation: ValidationReport
    seconds: float
    random_head: bool = False
    input_dims: dict[str, tuple] = field(default_factory=dict)  # input -> dims (axis names or fixed sizes)
    dtype: str = layout.FP32  # an ONNX dtype variant (bot.export.variants) has its quality gate in `validation`
    # A TorchScript file of several graphs (component "model", no inputs or outputs of its own): its submodules, one
    # per graph ("encoder_model", "decoder_model", "decoder_with_past_model"), each with its contract and report.
    submodules: list[Artifact] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(f["size"] for f in self.files.values())


@dataclass
class Failure:
    """An artifact that could not be exported or did not validate; it is not written to the layout."""

    feature: str
    format: str
    error: str
    validation: ValidationReport | None = None
    component: str = "model"


@dataclass
class ExportResult:
    source: str
    revision: str | None
    model_type: str
    support: str  # where the export spec came from: "registry", "custom" or "generic"
    primary: str
    output_dir: Path
    source_files: dict[str, str]
    artifacts: list[Artifact] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    manifest_path: Path | None = None
    pooling: dict | None = None  # a sentence-transformers model's pooling (bot.usage), shown in the card
    refused: list = field(default_factory=list)  # dtype variants not published: bot.export.variants.Refusal
    removed: list[str] = field(default_factory=list)  # files of an earlier export in output_dir, removed first
    weights_size: int = 0  # bytes of the checkpoint's weight files, what a PR's added bytes are measured against

    @property
    def ok(self) -> bool:
        return bool(self.artifacts) and not self.failures


def resolve_checkpoint(job: Job, *, endpoint: str | None = None, token: str | None = None,
                       cache_dir: Path | None = None) -> ckpt.Checkpoint:
    """A local directory as is, or a Hub repo id downloaded at one commit (only the files an export needs)."""
    local = Path(job.model).expanduser()
    if local.exists():
        return ckpt.open_checkpoint(local, str(job.model), job.revision, job.allow_pickle)
    if job.model.count("/") != 1 or job.model.startswith((".", "/", "~")):
        raise UsageError(f"checkpoint not found: {job.model} is neither a directory nor a Hub repo id (owner/name)")
    from bot import hub

    path, sha = hub.download_checkpoint(job.model, job.revision, ckpt.select_source_files,
                                        endpoint=endpoint or hub.DEFAULT_ENDPOINT, token=token, cache_dir=cache_dir)
    return ckpt.open_checkpoint(path, job.model, sha, job.allow_pickle)


def run_export(job: Job, progress: Progress | None = None, checkpoint: ckpt.Checkpoint | None = None,
               **hub_kwargs) -> ExportResult:
    """Export every planned feature in every requested format, validate each artifact, write the manifest."""
    say = progress or (lambda message: None)
    started = time.perf_counter()
    checkpoint = checkpoint or resolve_checkpoint(job, **hub_kwargs)
    options = job.options
    plan = ckpt.plan_features(checkpoint, list(options.features))
    tokenizer = ckpt.load_tokenizer(checkpoint)
    result = ExportResult(checkpoint.source, checkpoint.revision, checkpoint.model_type, checkpoint.support.origin,
                          plan.primary, job.output_dir, {}, skipped=dict(plan.skipped),
                          pooling=sentence_transformers_pooling(checkpoint.path),
                          weights_size=_weights_size(checkpoint))
    result.timings["plan"] = time.perf_counter() - started

    result.removed = clear_earlier_export(job.output_dir)  # never a stale manifest or artifact beside the new ones
    if result.removed:
        say(f"removed {len(result.removed)} file(s) of an earlier export: {', '.join(result.removed)}")
    created = not job.output_dir.exists()
    job.output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".hub-export-bot-", dir=job.output_dir))
    try:
        steps(say, len(plan.features))
        for index, feature in enumerate(plan.features, 1):
            say(f"[{index}/{len(plan.features)}] {feature}: loading {checkpoint.model_type} weights")
            if index > 1:
                gc.collect()  # the previous feature's model, before the next one loads (not after the last: 0.3 s)
            _export_feature(checkpoint, feature, job, tokenizer, staging, result, say)
            advance(say)
        if not result.artifacts and not result.failures:
            raise UsageError(f"no feature of {checkpoint.source} has its weights in the checkpoint: "
                             + "; ".join(f"{f}: {r}" for f, r in result.skipped.items()))
        exported = {a.feature for a in result.artifacts}
        if result.primary in result.skipped and exported:  # a failed primary keeps its place: no stand-in
            result.primary = next(f for f in plan.features if f in exported)
        result.source_files = checkpoint.source_files
        for artifact in result.artifacts:
            _place(artifact, staging, job.output_dir, result.primary)
        if result.artifacts:
            result.manifest_path = write_manifest(result, job.output_dir / MANIFEST_NAME, options)
    except OSError as exc:
        raise_if_disk_full(exc, job.output_dir)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(job.output_dir.iterdir()):
            job.output_dir.rmdir()  # a run that wrote nothing leaves nothing behind
    result.timings["total"] = time.perf_counter() - started
    return result


def _weights_size(checkpoint: ckpt.Checkpoint) -> int:
    return sum((checkpoint.path / name).stat().st_size for name in checkpoint.source_names
               if name.endswith((".safetensors", ".bin")) and (checkpoint.path / name).is_file())


def _place(artifact: Artifact, staging: Path, output_dir: Path, primary: str) -> None:
    """Move a validated artifact from staging to its file name in the published layout (bot.layout)."""
    target = layout.artifact_path(artifact.format, artifact.feature, artifact.component, primary, artifact.dtype)
    (output_dir / target).parent.mkdir(parents=True, exist_ok=True)
    if artifact.format == "onnx":
        moved = move_onnx(staging / artifact.path, output_dir / target)
    else:
        os.replace(staging / artifact.path, output_dir / target)
        moved = [output_dir / target]
    artifact.path = target
    # Moving keeps the bytes, so the digests taken in staging still hold, except for a graph pointed at its renamed
    # external data (a small file, rewritten): no second pass over the weights (2.7 s at 2.2 GB).
    before = list(artifact.files.values())
    kept = len(before) == len(moved)
    artifact.files = {f.relative_to(output_dir).as_posix(): before[i] if kept and (i or len(moved) == 1)
                      else _file_digest(f) for i, f in enumerate(moved)}


# From this many bytes of weights on, the eager model is released once the feature's graphs are written: its
# references (validation outputs, generate()'s tokens) are computed before exporting, so the artifacts are validated
# without it, and the model and an onnxruntime session of the same weights are never in memory together.
RELEASE_MODEL_BYTES = LEAN_SESSION_BYTES


@dataclass
class _Written:
    """A graph file in staging, exported but not yet validated."""

    graph: Graph
    format: str
    relative: str
    exporter: str
    seconds: float
    submodule: str | None = None  # the graph's submodule in a TorchScript file of several graphs
    hashed: bool = True  # False for a file's second graph on: its artifact takes the first graph's digests


def _export_feature(checkpoint, feature: str, job: Job, tokenizer, staging: Path, result: ExportResult,
                    say: Progress) -> None:
    """Load, compute every reference, write every graph in every format, then validate the files (without the eager
    model when it is large), merge the ONNX decoders, check decoding, and make the dtype variants."""
    started = time.perf_counter()
    options = job.options
    loaded = ckpt.load_for_feature(checkpoint, feature)
    random_head = bool(loaded.missing)
    if random_head and not (options.features and options.allow_random_heads):
        reason = ckpt.head_skip_reason(loaded.missing)
        if options.features:
            raise UsageError(f"{feature}: {reason}; pass --allow-random-heads to export it anyway")
        result.skipped[feature] = reason
        return
    spec = spec_for(checkpoint.support.family, feature)
    graphs = spec.graphs(loaded.model, feature, tokenizer)
    tolerance = (options.atol or spec.atol, DEFAULT_RTOL if options.rtol is None else options.rtol)
    result.timings[f"{feature}/load"] = time.perf_counter() - started
    cases_by_graph = {graph.name: reference_cases(graph.wrapper, graph.cases) for graph in graphs}
    axes_by_graph = {graph.name: _dynamic_axes(graph, cases_by_graph[graph.name]) for graph in graphs}
    # Parity is checked where generate() runs the same computation as the graphs: decoder-only and encoder-decoder
    # families. An encoder's LM head (RoBERTa's causal-lm) gets position ids from generate() that its plain forward
    # computes differently, so there only the output checks apply.
    generative = feature in GENERATION_FEATURES and checkpoint.support.family in ("decoder", "seq2seq")
    keep_model = weight_bytes(loaded.model) < RELEASE_MODEL_BYTES
    decoding = generation_reference(loaded.model.eval(), feature) if generative and not keep_model else None
    written = _write_graphs(graphs, checkpoint, feature, loaded, spec, tokenizer, axes_by_graph, options, staging,
                            result, say)
    opening: tuple[str, Future] | None = None  # (file, its onnxruntime session being opened)
    if generative and keep_model:
        # generate() runs while the first ONNX session opens on a worker thread (onnxruntime releases the GIL while
        # it loads and optimises a graph: gpt2 1.4 s, overlapped with most of generate()'s 0.5-1 s)
        first = next((item for item in written if item.format == "onnx"), None)
        if first is not None:
            opening = (first.relative, _OPENING.submit(onnx_runner, staging / first.relative))
        decoding = generation_reference(loaded.model.eval(), feature)
    model = loaded.model if keep_model else None
    if not keep_model:
        _release_weights(loaded.model)
        for graph in graphs:  # the contracts stay; the wrappers go
            graph.wrapper, graph.example = None, {}
        say(f"    {feature}: model released, validating the files alone")
    del loaded

    produced: list[Artifact] = []
    # the validation runners, kept for the decoding check of a generative feature (no second session per graph)
    runners: dict[str, Runner] | None = {} if decoding is not None else None
    for item in written:
        opened = opening[1] if opening and opening[0] == item.relative else None
        artifact = _validate_graph(item, feature, axes_by_graph[item.graph.name], cases_by_graph[item.graph.name],
                                   tolerance, options, staging, result, say, random_head, runners, opened)
        if artifact is not None:
            produced.append(artifact)
    for fmt in options.formats:
        artifacts = [a for a in produced if a.format == fmt]
        if len(artifacts) < len(graphs):
            _withdraw(artifacts, result, "not published: another graph of this feature failed, and clients need "
                                         "all of them")
            continue
        if fmt == "onnx" and {a.component for a in artifacts} >= {layout.DECODER, layout.DECODER_WITH_PAST}:
            artifacts = _merge_decoders(artifacts, cases_by_graph, feature, tolerance, staging, result, say, runners)
            if artifacts is None:
                continue
        if fmt == "torchscript" and len(artifacts) > 1:
            artifacts = [_bundle(artifacts)]
        if decoding is not None and not _check_generation(decoding, feature, fmt, artifacts, staging, say,
                                                          runners or {}):
            _withdraw(artifacts, result, "greedy decoding with the artifacts differs from generate()")
            continue
        result.artifacts.extend(artifacts)
        for artifact in artifacts:
            (runners or {}).pop(artifact.path, None)
        if fmt == "onnx" and not set(options.dtypes) <= {layout.FP32}:
            if model is None:  # released above: the variants' quality gates compare with PyTorch again
                model = ckpt.load_for_feature(checkpoint, feature).model
                graphs = spec.graphs(model, feature, tokenizer)
            _add_variants(artifacts, model, feature, checkpoint, spec, graphs, tokenizer, job, staging, result, say)


def _release_weights(model: torch.nn.Module) -> None:
    """Free the weights' memory itself, not only our references to the model: exporters keep references to its
    parameters past the call (onnxscript's rewrite rules hold on to the last graph they matched, initializers and
    all), which kept a released 2.2 GB model in memory while its files were validated."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = torch.empty(0, dtype=tensor.dtype)


def _write_graphs(graphs: list[Graph], checkpoint, feature: str, loaded, spec, tokenizer, axes_by_graph,
                  options, staging: Path, result: ExportResult, say: Progress) -> list[_Written]:
    """Every graph in every requested format, into staging; an exporter failure is recorded, not raised."""
    by_name = {graph.name: graph for graph in graphs}

    def wrapper_for(attention: str | None, name: str):
        if attention is None:
            return by_name[name].wrapper.eval()
        reloaded, _ = ckpt.load_model(checkpoint, feature, attn_implementation=attention, **loaded.load_kwargs)
        return {g.name: g for g in spec.graphs(reloaded, feature, tokenizer)}[name].wrapper.eval()

    # TorchScript first: a TorchScript-based ONNX export leaves tracing state behind that spoils a later trace.
    written = _write_torchscript(graphs, feature, staging, result, say) if "torchscript" in options.formats else []
    for graph in graphs:
        for fmt in [f for f in options.formats if f != "torchscript"]:
            relative = f"{fmt}/{feature}/{graph.name}{layout.SUFFIXES[fmt]}"
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            step = time.perf_counter()
            say(f"    {_label(feature, graph.name)} -> {fmt}: exporting")
            try:
                axes = axes_by_graph[graph.name]
                exporter = export_onnx(lambda attention, name=graph.name: wrapper_for(attention, name),
                                       graph.example, graph.inputs, graph.output_names, path, options.opset,
                                       options.exporter, output_axes={n: axes[n] for n in graph.output_names})
            except Exception as exc:  # an exporter crash is a failed artifact, reported, not a crashed run
                raise_if_disk_full(exc, staging)
                message = str(exc) if isinstance(exc, BotError) else f"{type(exc).__name__}: {str(exc)[:500]}"
                result.failures.append(Failure(feature, fmt, message, component=graph.name))
                continue
            written.append(_Written(graph, fmt, relative, exporter, time.perf_counter() - step))
    return written


def _write_torchscript(graphs: list[Graph], feature: str, staging: Path, result: ExportResult,
                       say: Progress) -> list[_Written]:
    """The feature's TorchScript file: its one graph traced, or its graphs traced as the submodules of one file
    (bot.export.torchscript), so the weights they share are stored once; a failure is recorded, not raised."""
    relative = f"torchscript/{feature}/{layout.MODEL}{layout.SUFFIXES['torchscript']}"
    step = time.perf_counter()
    traced, component = {}, layout.MODEL
    try:
        for graph in graphs:
            component = graph.name
            say(f"    {_label(feature, graph.name)} -> torchscript: exporting")
            traced[graph.name] = torchscript.trace(graph.wrapper.eval(), graph.example, graph.inputs)
        component = layout.MODEL
        exporter = torchscript.save(traced, staging / relative)
    except Exception as exc:  # an exporter crash is a failed artifact, reported, not a crashed run
        raise_if_disk_full(exc, staging)
        message = str(exc) if isinstance(exc, BotError) else f"{type(exc).__name__}: {str(exc)[:500]}"
        result.failures.append(Failure(feature, "torchscript", message, component=component))
        return []
    seconds = (time.perf_counter() - step) / len(graphs)
    bundled = len(graphs) > 1
    return [_Written(graph, "torchscript", relative, exporter, seconds, graph.name if bundled else None, hashed=not i)
            for i, graph in enumerate(graphs)]


def _bundle(parts: list[Artifact]) -> Artifact:
    """The validated graphs of one TorchScript file as one artifact, with each graph as a submodule (the file's
    digests were taken while its first graph was validated)."""
    first = parts[0]
    return Artifact(
        path=first.path, format="torchscript", feature=first.feature, component=layout.MODEL, inputs=[], outputs=[],
        dynamic_axes={}, opset=None, exporter=first.exporter, files=first.files,
        validation=combined_report({p.component: p.validation for p in parts}),
        seconds=sum(p.seconds for p in parts), random_head=first.random_head, submodules=parts)


def _label(feature: str, graph_name: str) -> str:
    return f"{feature}/{graph_name}" if graph_name != "model" else feature


def _add_variants(artifacts: list[Artifact], model, feature: str, checkpoint, spec, graphs, tokenizer, job: Job,
                  staging: Path, result: ExportResult, say: Progress) -> None:
    """The requested dtype variants of a feature's validated (and merged) ONNX graphs; each is published only if
    it passes its quality gate against PyTorch (bot.export.variants), else it is listed in `result.refused`."""
    from bot.export.variants import Context, make_variants

    started = time.perf_counter()
    context = Context(model, feature, checkpoint.support.family, graphs, spec, tokenizer, staging,
                      pooling=result.pooling if feature == result.primary else None, say=say)
    made, refused = make_variants(artifacts, job.options.dtypes, context, _file_digest)
    result.artifacts.extend(made)
    result.refused.extend(refused)
    result.timings[f"{feature}/variants"] = time.perf_counter() - started


def _withdraw(artifacts: list[Artifact], result: ExportResult, reason: str) -> None:
    """Validated graphs that cannot be published after all: they become failures, with their reports."""
    for artifact in artifacts:
        result.failures.append(Failure(artifact.feature, artifact.format, reason, artifact.validation,
                                       component=artifact.component))


def _merge_decoders(artifacts: list[Artifact], cases_by_graph: dict[str, list[ValidationCase]], feature: str,
                    tolerance: tuple[float, float], staging: Path, result: ExportResult,
                    say: Progress, runners: dict[str, Runner] | None = None) -> list[Artifact] | None:
    """Replace the validated ONNX decoder pair by the one merged graph clients load, validated on both pairs' cases.

    transformers.js loads only `decoder_model_merged.onnx` for encoder-decoder models; optimum prefers it. The split
    files are not published: the merged graph stores the weights once and serves both decoding steps.
    """
    by_component = {a.component: a for a in artifacts}
    first, cached = by_component[layout.DECODER], by_component[layout.DECODER_WITH_PAST]
    step = time.perf_counter()
    relative = f"onnx/{feature}/{layout.MERGED_DECODER}.onnx"
    say(f"    {feature}/{layout.MERGED_DECODER} -> onnx: merging the two decoders")
    try:
        merge_decoders(staging / first.path, staging / cached.path, staging / relative)
        digests = _digests(staging, artifact_files(staging / relative))
        runner = onnx_runner(staging / relative)
    except Exception as exc:  # a merge failure withdraws the pair: clients cannot use split decoders alone
        raise_if_disk_full(exc, staging)
        message = str(exc) if isinstance(exc, BotError) else f"{type(exc).__name__}: {str(exc)[:500]}"
        _withdraw(artifacts, result, f"merging the decoders failed: {message}")
        return None
    inputs = cached.inputs + [layout.USE_CACHE_BRANCH]
    cases = _merged_cases(first, cases_by_graph[layout.DECODER], cached, cases_by_graph[layout.DECODER_WITH_PAST])
    say(f"    {feature}/{layout.MERGED_DECODER} -> onnx: validating on {len(cases)} input shapes")
    report = validate("onnx", runner, first.outputs, cases, *tolerance)
    for pair in (first, cached):
        (runners or {}).pop(pair.path, None)
    if runners is not None and report.passed:
        runners[relative] = runner
    del runner
    if not report.passed:
        result.failures.append(Failure(feature, "onnx", "validation failed", report, component=layout.MERGED_DECODER))
        _withdraw([first, cached], result, "not published: the merged decoder built from it failed")
        return None
    axes = {**first.dynamic_axes, **cached.dynamic_axes, layout.USE_CACHE_BRANCH: {}}
    merged = Artifact(
        path=relative, format="onnx", feature=feature, component=layout.MERGED_DECODER, inputs=inputs,
        outputs=first.outputs, dynamic_axes={**axes, **{o: first.dynamic_axes.get(o, {}) for o in first.outputs}},
        opset=first.opset, exporter=first.exporter,
        files=digests.result(),
        validation=report, seconds=first.seconds + cached.seconds + time.perf_counter() - step,
        random_head=first.random_head,
        input_dims={**first.input_dims, **cached.input_dims, layout.USE_CACHE_BRANCH: (1,)})
    result.timings[f"{feature}/{layout.MERGED_DECODER}/onnx"] = time.perf_counter() - step
    return [a for a in artifacts if a not in (first, cached)] + [merged]


def _merged_cases(first: Artifact, first_cases: list[ValidationCase], cached: Artifact,
                  cached_cases: list[ValidationCase]) -> list[ValidationCase]:
    """Both decoders' reference cases in the merged graph's terms: the first step gets an empty past and
    use_cache_branch False; a cached step gets use_cache_branch True and returns its cross-attention past as is."""
    past = [name for name in cached.inputs if name.startswith("past_key_values.")]
    cases = []
    for case in first_cases:
        batch = case.inputs["input_ids"].shape[0]
        empty = {}
        for name in past:
            like = cached_cases[0].inputs[name]
            empty[name] = torch.zeros((batch, like.shape[1], 0, like.shape[3]), dtype=like.dtype)
        inputs = {**case.inputs, **empty, layout.USE_CACHE_BRANCH: torch.tensor([False])}
        cases.append(ValidationCase(case.shape + " (first step)", inputs, case.expected))
    for case in cached_cases:
        produced = dict(zip(cached.outputs, case.expected))
        expected = [produced[name] if name in produced else case.inputs[name.replace("present.", "past_key_values.")]
                    for name in first.outputs]
        inputs = {**case.inputs, layout.USE_CACHE_BRANCH: torch.tensor([True])}
        cases.append(ValidationCase(case.shape, inputs, expected))
    return cases


def _check_generation(decoding: GenerationReference, feature: str, fmt: str, artifacts: list[Artifact],
                      staging: Path, say: Progress, runners: dict[str, Runner]) -> bool:
    """Decode a padded batch with the feature's validated graphs of one format; the check goes to each report."""
    say(f"    {feature} -> {fmt}: greedy decoding of a padded batch with the artifacts vs generate()")
    bundles = {a.path: load_torchscript(staging / a.path) for a in artifacts if a.submodules}  # loaded once
    graphs = [(p, torchscript_runner(staging / p.path, p.outputs, p.component, bundles[a.path]))
              for a in artifacts for p in a.submodules]
    graphs += [(a, runners.pop(a.path, None)) for a in artifacts if not a.submodules]
    callers = {g.component: named_caller(fmt, staging / g.path, g.inputs, g.outputs, runner) for g, runner in graphs}
    graph_inputs = {g.component: g.input_dims for g, _ in graphs}
    type_ids = {g.component: [n for n in g.inputs if n.endswith("token_type_ids")] for g, _ in graphs}

    def call(component, named):  # a decoding loop feeds ids, mask and past; token types are all 0 there
        zeros = {name: np.zeros_like(named["input_ids"]) for name in type_ids[component]}
        return callers[component]({**named, **zeros})

    check = check_generation(decoding, call, graph_inputs)
    for artifact in artifacts:
        artifact.validation.generation = check.to_dict()
    return check.passed


def _validate_graph(item: _Written, feature: str, axes, cases, tolerance: tuple[float, float], options,
                    staging: Path, result: ExportResult, say: Progress, random_head: bool,
                    runners: dict[str, Runner] | None = None, opened: Future | None = None) -> Artifact | None:
    """Run the written file on the reference cases; `opened` is its onnxruntime session already being opened."""
    graph, fmt, path = item.graph, item.format, staging / item.relative
    step = time.perf_counter()
    label = _label(feature, graph.name)
    say(f"    {label} -> {fmt}: validating on {len(cases)} input shapes")
    digests = _digests(staging, artifact_files(path) if fmt == "onnx" else [path] if item.hashed else [])
    try:
        runner = (opened.result() if opened else onnx_runner(path)) if fmt == "onnx" else \
            torchscript_runner(path, graph.output_names, item.submodule)
    except Exception as exc:  # a file its runtime cannot load is a failed artifact
        raise_if_disk_full(exc, staging)
        result.failures.append(Failure(feature, fmt, f"{type(exc).__name__}: {str(exc)[:500]}", component=graph.name))
        return None
    report = validate(fmt, runner, graph.output_names, cases, *tolerance)
    # Kept for decoding: ONNX sessions of graphs that are published as they are. TorchScript modules reload cheaply,
    # and the ONNX decoder pair is replaced by the merged graph; holding those would raise the peak (t5-small +0.7 GB).
    if runners is not None and report.passed and fmt == "onnx" and graph.name not in (layout.DECODER,
                                                                                       layout.DECODER_WITH_PAST):
        runners[item.relative] = runner
    del runner
    seconds = item.seconds + time.perf_counter() - step
    result.timings[f"{label}/{fmt}"] = seconds
    if not report.passed:
        result.failures.append(Failure(feature, fmt, "validation failed", report, component=graph.name))
        return None
    return Artifact(
        path=item.relative, format=fmt, feature=feature, component=graph.name,
        inputs=[i.name for i in graph.inputs], outputs=graph.output_names, dynamic_axes=axes,
        opset=options.opset if fmt == "onnx" else None, exporter=item.exporter, files=digests.result(),
        validation=report, seconds=seconds, random_head=random_head,
        input_dims={i.name: i.dims for i in graph.inputs})


def _dynamic_axes(graph: Graph, cases) -> dict[str, dict[int, str]]:
    """Input axes from the spec; output axes inferred from which input axis each output dimension follows."""
    axes = {spec.name: spec.dynamic_axes for spec in graph.inputs}
    with torch.no_grad():
        runs = [(graph.example, list(graph.wrapper.eval()(*graph.example.values())))]
    runs += [(c.inputs, c.expected) for c in cases]
    sizes = [{axis: run_inputs[spec.name].shape[i] for spec in graph.inputs for i, axis in spec.dynamic_axes.items()}
             for run_inputs, _ in runs]
    for index, name in enumerate(graph.output_names):
        found = {}
        for dim in range(runs[0][1][index].dim()):
            observed = [outputs[index].shape[dim] for _, outputs in runs]
            axis = next((a for a in sizes[0] if observed == [s[a] for s in sizes]), None)
            if axis is not None:
                found[dim] = axis
        axes[name] = found
    return axes


_HASHING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
_OPENING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime-session")


def _digests(staging: Path, files: list[Path]) -> Future:
    """{path relative to staging: digest} of an artifact's files, computed on a worker thread while the artifact is
    validated: hashlib and onnxruntime both release the GIL, so the hashing costs no wall time (gpt2: 0.3 s)."""
    return _HASHING.submit(lambda: {f.relative_to(staging).as_posix(): _file_digest(f) for f in files})


def _file_digest(path: Path) -> dict:
    return {"sha256": ckpt.sha256_file(path), "size": path.stat().st_size}
