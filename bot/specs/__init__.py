"""Export specs: for one model family, the graph's inputs, their dynamic axes, example inputs and the wrapper.

A spec answers everything the ONNX exporter, the TorchScript tracer and the validator need to agree on, so the three
never guess separately: input names in forward order, which axes are dynamic, how to make example inputs of a given
shape from the config alone (or from a tokenizer when there is one), which outputs to export, and a wrapper module
that takes the inputs positionally and returns a tuple in manifest order.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

# Outputs a model may return that are not part of an exported graph's contract.
_NON_EXPORTED_OUTPUTS = {"loss", "hidden_states", "attentions", "cross_attentions", "past_key_values"}


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its name, its dimensions (axis names are dynamic, ints are fixed) and what it holds."""

    name: str
    dims: tuple[str | int, ...]
    kind: str  # "ids", "mask", "type_ids", "bbox", "pixels"

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.dims) if isinstance(d, str)}


@dataclass(frozen=True)
class Shape:
    """Sizes of the dynamic axes for one set of example inputs; `padded` asks for a padded attention mask."""

    sizes: dict[str, int]
    padded: bool = False

    def describe(self) -> str:
        text = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return text + (", padded" if self.padded else "")


class OrderedOutputs(torch.nn.Module):
    """Wraps a model so it takes inputs positionally (spec order) and returns a tuple (manifest output order).

    Both exporters and the tracer need plain tuples; positional inputs are what a TorchScript user calls with.
    """

    def __init__(self, model: torch.nn.Module, input_names: list[str], output_names: list[str], call_kwargs: dict):
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output_names = output_names
        self.call_kwargs = call_kwargs

    def forward(self, *inputs):
        outputs = self.model(**dict(zip(self.input_names, inputs)), **self.call_kwargs, return_dict=True)
        return tuple(outputs[name] for name in self.output_names)


@dataclass
class Graph:
    """One graph a feature exports: its wrapper, its contract, and the inputs to export and validate it with.

    Most features export one graph named "model"; encoder-decoder features export "encoder_model",
    "decoder_model" and "decoder_with_past_model", the file names optimum and transformers.js look for.
    """

    name: str
    wrapper: torch.nn.Module
    inputs: list[InputSpec]
    output_names: list[str]
    example: dict[str, torch.Tensor]
    cases: list[tuple[str, dict[str, torch.Tensor]]]  # (description of the shape, inputs), none the export's


class ExportSpec:
    """Base class of the per-family specs; subclass it to support a custom architecture (see README).

    A single-graph spec implements `inputs`, `export_shape`, `validation_shapes` and `example_inputs`; `graphs`
    assembles them. Multi-graph families override `graphs`.
    """

    family = "base"
    atol = 1e-4

    def inputs(self, model: torch.nn.Module, feature: str) -> list[InputSpec]:
        raise NotImplementedError

    def export_shape(self, feature: str) -> Shape:
        raise NotImplementedError

    def validation_shapes(self, feature: str) -> list[Shape]:
        """At least two shapes that differ from the export shape, one of them padded."""
        raise NotImplementedError

    def example_inputs(self, config, inputs: list[InputSpec], shape: Shape, seed: int = 0) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def text_inputs(self, tokenizer, inputs: list[InputSpec], feature: str, config) -> dict[str, torch.Tensor] | None:
        """Real inputs from the checkpoint's tokenizer for the padded validation shape, or None to use random ones."""
        return None

    def output_names(self, outputs) -> list[str]:
        """The tensors of a model output that the graph exports, in the model's own order."""
        return [k for k, v in outputs.items() if k not in _NON_EXPORTED_OUTPUTS and isinstance(v, torch.Tensor)]

    def call_kwargs(self, feature: str) -> dict:
        """Fixed keyword arguments for every forward call (e.g. use_cache=False)."""
        return {}

    def wrap(self, model, inputs: list[InputSpec], output_names: list[str], feature: str) -> OrderedOutputs:
        return OrderedOutputs(model, [i.name for i in inputs], list(output_names), self.call_kwargs(feature))

    def graphs(self, model, feature: str, tokenizer=None) -> list[Graph]:
        traceable_experts(model)
        inputs = self.inputs(model, feature)
        example = self.example_inputs(model.config, inputs, self.export_shape(feature))
        with torch.no_grad():
            names = self.output_names(model(**example, **self.call_kwargs(feature), return_dict=True))
        cases = []
        for seed, shape in enumerate(self.validation_shapes(feature), 1):
            real = self.text_inputs(tokenizer, inputs, feature, model.config) if shape.padded and tokenizer else None
            if real is not None:
                sizes = dict(zip(inputs[0].dims, real[inputs[0].name].shape))
                cases.append((Shape(sizes, padded=True).describe() + ", real text", real))
            else:
                cases.append((shape.describe(), self.example_inputs(model.config, inputs, shape, seed=seed)))
        return [Graph("model", self.wrap(model, inputs, names, feature), inputs, names, example, cases)]


def traceable_experts(model: torch.nn.Module) -> None:
    """Mixture-of-experts layers computed for every token by gathered batched matmuls, with no token-dependent loop.

    transformers' default experts implementations loop over the experts a batch happens to route to (a trace then
    records only those) or call grouped matmul kernels no exporter knows; `batched_mm` computes the same sums with
    gather + bmm, which both exporters and the tracer follow for any routing.
    """
    setter = getattr(model, "set_experts_implementation", None)
    if setter is not None and getattr(model.config, "_experts_implementation", None) != "batched_mm":
        try:
            setter("batched_mm")  # a no-op for models without experts
        except (ValueError, ImportError, RuntimeError):  # an implementation fixed at load time stays as it is
            pass


def accepts(model: torch.nn.Module, argument: str) -> bool:
    """Whether the model's forward takes an argument of this name."""
    return argument in inspect.signature(model.forward).parameters


def spec_for(family: str, feature: str) -> ExportSpec:
    """The spec for a registry family and feature (a causal-lm head on an encoder-decoder family is a decoder)."""
    from bot.specs.decoder import DecoderSpec
    from bot.specs.encoder import TextEncoderSpec
    from bot.specs.perceiver import PerceiverSpec
    from bot.specs.seq2seq import Seq2SeqSpec
    from bot.specs.vision import VisionSpec

    if family in CUSTOM_SPECS:
        return CUSTOM_SPECS[family]
    if family == "seq2seq" and feature.startswith("causal-lm"):
        family = "decoder"
    return {"text-encoder": TextEncoderSpec, "vision": VisionSpec, "decoder": DecoderSpec,
            "seq2seq": Seq2SeqSpec, "perceiver": PerceiverSpec}[family]()


CUSTOM_SPECS: dict[str, ExportSpec] = {}  # family name -> spec instance, filled by bot.custom
