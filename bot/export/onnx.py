"""ONNX export: the TorchScript-based exporter first, then dynamo, then dynamo with eager attention (from 1.5 GB of
weights on: dynamo first, see DYNAMO_FIRST_BYTES).

The order is measured (benchmarks/README.md): against dynamo, the TorchScript-based exporter (`dynamo=False`) exports
1.5-2.4x faster on the same checkpoints and its graphs run as fast or faster in onnxruntime (and as fast as
optimum's, which uses it too). torch has announced its removal; when it fails or is gone, dynamo takes over.

Below 2 GB the result is ONE self-contained `model.onnx` (dynamo writes a side `.data` file even for small models,
so it is re-saved inline); from 2 GB on, `model.onnx` plus its weights in chunks of at most 2 GB beside it
(`model.onnx_data`, `model.onnx_data_1`, ...: bot.export.external).
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Callable

import onnx
import torch

from bot.diskfull import raise_if_disk_full
from bot.errors import ExportError
from bot.export import external
from bot.export.gemm import transposed_weights_to_gemm
from bot.layout import external_data_name
from bot.specs import InputSpec

log = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2 * 1024**3
DEFAULT_OPSET = 18

# exporter name -> (use dynamo, attention implementation to reload the model with, or None to keep it)
ATTEMPTS = {
    "dynamo": (True, None),
    "dynamo+eager-attention": (True, "eager"),
    "torchscript": (False, None),
}
EXPORTER_CHOICES = {
    "auto": ["torchscript", "dynamo", "dynamo+eager-attention"],
    "dynamo": ["dynamo", "dynamo+eager-attention"],
    "torchscript": ["torchscript"],
}

# From this many bytes of weights on, `auto` tries dynamo first. Measured on a 2.23 GB GPT-2-style checkpoint
# (benchmarks/README.md): dynamo writes its single external-data file directly (the TorchScript-based exporter writes
# one file per tensor, which must be loaded and re-saved as one: +12 s, peak RSS 5.8 vs 2.8 GB while exporting), and
# keeps tied weights once. Below it the TorchScript-based exporter is 1.5-2.4x faster.
DYNAMO_FIRST_BYTES = 1_500_000_000
DYNAMO_FIRST = ["dynamo", "dynamo+eager-attention", "torchscript"]


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers, each tensor counted once (tied weights are one tensor)."""
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def export_onnx(wrapper_for: Callable[[str | None], torch.nn.Module], example: dict[str, torch.Tensor],
                inputs: list[InputSpec], output_names: list[str], path: Path, opset: int = DEFAULT_OPSET,
                exporter: str = "auto", output_axes: dict[str, dict[int, str]] | None = None) -> str:
    """Export to `path`, trying each exporter of the chosen chain in turn; returns the name of the one that worked.

    `wrapper_for(attn_implementation)` gives the wrapped model, reloaded with that attention when it is not None.
    """
    errors = []
    chain = EXPORTER_CHOICES[exporter]
    if exporter == "auto" and weight_bytes(wrapper_for(None)) >= DYNAMO_FIRST_BYTES:
        chain = DYNAMO_FIRST
    for name in chain:
        dynamo, attention = ATTEMPTS[name]
        scratch = path.parent / f".{name}"
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            _run_exporter(wrapper_for(attention), example, inputs, output_names, scratch / "model.onnx", opset, dynamo,
                          output_axes or {})
            _finalize(scratch / "model.onnx", path)
            if dynamo:  # the TorchScript-based exporter writes the requested opset or fails
                _require_opset(path, opset)
            return name
        except Exception as exc:  # any exporter failure: record it and try the next exporter
            raise_if_disk_full(exc, scratch)  # no other exporter can do better on a full disk
            log.info("ONNX exporter %s failed: %s", name, exc)
            errors.append(f"{name}: {_summary(exc)}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    raise ExportError("ONNX export failed with every exporter: " + " | ".join(errors))


def graph_opset(path: Path) -> int | None:
    """The default-domain opset a written graph declares, read back from the file."""
    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def _require_opset(path: Path, opset: int) -> None:
    """The manifest records the requested opset, so a graph of another opset is this exporter's failure.

    Why: the dynamo exporter writes opset 18 and converts down only where the ONNX version converter can; when it
    cannot, it still writes the file, at 18.
    """
    written = graph_opset(path)
    if written != opset:
        for file in artifact_files(path):
            file.unlink()
        raise ExportError(f"it wrote opset {written}, not the requested {opset}: pass --opset {written}, or "
                          f"--exporter torchscript for opsets below 18")


def _run_exporter(wrapper, example, inputs, output_names, path: Path, opset: int, dynamo: bool,
                  output_axes: dict[str, dict[int, str]]) -> None:
    args = tuple(example[spec.name] for spec in inputs)
    names = [spec.name for spec in inputs]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            dims: dict[str, torch.export.Dim] = {}
            shapes = [{i: dims.setdefault(a, torch.export.Dim(a)) for i, a in spec.dynamic_axes.items()}
                      for spec in inputs]
            torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=output_names,
                              dynamic_shapes=_by_signature(wrapper, shapes), opset_version=opset, dynamo=True,
                              verbose=False)
        else:
            torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=output_names,
                              dynamic_axes={**{spec.name: spec.dynamic_axes for spec in inputs}, **output_axes},
                              opset_version=opset, dynamo=False, do_constant_folding=not has_tied_weights(wrapper))


def has_tied_weights(module: torch.nn.Module) -> bool:
    """Whether one parameter serves twice (a language-model head tied to the input embeddings).

    Why it matters: the TorchScript-based exporter folds the head's `Transpose(embedding)` into a second, transposed
    initializer, storing the tied weight twice (GPT-2: +147 MB of 652 MB). Without constant folding the graph keeps
    the Transpose node on the one stored weight; onnxruntime folds it when it loads the graph, so it runs as fast.
    """
    seen: set[int] = set()
    for _, parameter in module.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:
            return True
        seen.add(id(parameter))
    return False


def _by_signature(wrapper: torch.nn.Module, shapes: list) -> tuple:
    """Per-input dynamic shapes arranged like forward's parameters (a `*past` parameter takes a tuple)."""
    arranged, index = [], 0
    for parameter in inspect.signature(wrapper.forward).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            if index < len(shapes):
                arranged.append(tuple(shapes[index:]))
            index = len(shapes)
        elif index < len(shapes):
            arranged.append(shapes[index])
            index += 1
    return tuple(arranged)


def _summary(exc: Exception) -> str:
    """The informative line of an exporter error (torch wraps the cause in a long, colourful preamble)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    cause = re.search(r"^<class '([^']+)'>: (.+)$", text, re.MULTILINE)
    first = cause.group(1).rsplit(".", 1)[-1] + ": " + cause.group(2) if cause else \
        (text.strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:300]}"


def _finalize(written: Path, path: Path) -> None:
    """Move an exporter's output to `path` in the shipped layout: inline below 2 GB, chunked external data above."""
    files = [f for f in written.parent.iterdir() if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    if size < PROTOBUF_LIMIT and files == [written]:
        os.replace(written, path)  # already one self-contained file: no re-serialisation
    elif size < PROTOBUF_LIMIT:
        model = onnx.load(str(written))  # pulls the external data into the proto
        onnx.save_model(model, str(path))
    else:
        data_name = external_data_name(path.name)
        model = onnx.load(str(written), load_external_data=False)  # the small graph only
        transposed_weights_to_gemm(model)
        side = [written.parent / name for name in external.locations(model)]
        if len(side) == 1 and side[0].stat().st_size <= external.CHUNK_BYTES:
            # dynamo's single side file is one chunk already: rename it and point the graph at the new name
            os.replace(side[0], path.parent / data_name)
            _relocate(model, data_name)
            onnx.save_model(model, str(path))
        else:  # inline, one file per tensor, or more than a chunk: write the weights in chunks
            external.save(model, path, source=written.parent)
    if size >= PROTOBUF_LIMIT:  # by path: reads only the graph. Below 2 GB the validation session that opens the
        onnx.checker.check_model(str(path))  # file next parses and checks it anyway (the checker: +1 s, +0.9 GB)


def _relocate(model: onnx.ModelProto, data_name: str) -> None:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    for tensor in (t for t in _get_all_tensors(model) if uses_external_data(t)):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = data_name


def artifact_files(path: Path) -> list[Path]:
    """The files that make up an ONNX artifact: the graph and, over 2 GB, its external-data chunks."""
    return [path, *external.data_files(path)]


def move_onnx(source: Path, target: Path) -> list[Path]:
    """Move an ONNX artifact to a new file name; its external-data chunks follow and the graph points at them."""
    return external.move(source, target)
