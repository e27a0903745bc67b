"""TorchScript export: `torch.jit.trace` of the spec's wrapper with example inputs, saved with `torch.jit.save`.

The traced module takes the inputs positionally in the manifest's order and returns a tuple in its output order.
Tracing with attention_mask among the inputs keeps the graph valid at other batch sizes and sequence lengths.

A feature of several graphs (an encoder and its decoders) is one file: the traced graphs become submodules of one
container module, named after their components, and are saved together. A traced module holds the eager model's
own parameters, and one `torch.jit.save` writes each storage once, so the weights the graphs share (embeddings, a
tied LM head, the decoder used by both decoding steps) are stored once: t5-small's three separate files held 2.6x
its weights, the one file 1.0x.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from bot.specs import InputSpec

EXPORTER = "torch.jit.trace"


def trace(wrapper: torch.nn.Module, example: dict[str, torch.Tensor],
          inputs: list[InputSpec]) -> torch.jit.ScriptModule:
    args = tuple(example[spec.name] for spec in inputs)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(wrapper, args, check_trace=False, strict=False)


class _Bundle(torch.nn.Module):
    """Only submodules, no forward of its own: users call `bundle.<component>(...)`."""

    def __init__(self, parts: dict[str, torch.jit.ScriptModule]):
        super().__init__()
        for name, module in parts.items():
            setattr(self, name, module)


def save(parts: dict[str, torch.jit.ScriptModule], path: Path) -> str:
    """One traced graph as the file's module, or several as the submodules of one (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice: TorchScript is the format asked for
        module = next(iter(parts.values())) if len(parts) == 1 else torch.jit.script(_Bundle(parts))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:  # written by Python: a full disk is an OSError, not an abort in C++
        torch.jit.save(module, handle)
    return EXPORTER
