"""TorchScript export: `torch.jit.trace` of the spec's wrapper with example inputs, saved with `torch.jit.save`.

The traced module takes the inputs positionally in the manifest's order and returns a tuple in its output order.
Tracing with attention_mask among the inputs keeps the graph valid at other batch sizes and sequence lengths.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from bot.specs import InputSpec


def export_torchscript(wrapper: torch.nn.Module, example: dict[str, torch.Tensor], inputs: list[InputSpec],
                       path: Path) -> str:
    args = tuple(example[spec.name] for spec in inputs)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, args, check_trace=False, strict=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:  # written by Python: a full disk is an OSError, not an abort in C++
        torch.jit.save(traced, handle)
    return "torch.jit.trace"
