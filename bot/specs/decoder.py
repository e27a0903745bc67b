"""Decoder-only models (GPT-2, GPT Neo, GPT-J, Llama-style): one graph per feature; `-with-past` adds a flat cache.

Inputs are `input_ids`, `attention_mask` and, where the model's forward takes them, `position_ids`: the clients
(transformers.js, optimum) compute positions from the attention mask and pass them only when the graph declares the
input, and without them a left-padded row counts its padding as positions and decodes garbage.
With past, the graph also takes `past_key_values.{i}.key` / `.value` (batch_size, heads, past_sequence_length,
head_dim) and returns `present.{i}.key` / `.value`. ONE graph serves both steps of decoding: the first call passes a
past of length 0 (the prompt), every later call the previous call's presents and one new token; `attention_mask`
covers past and new tokens (batch_size, total_sequence_length).
"""

from __future__ import annotations

import torch

from bot.features import FEATURES
from bot.layout import BATCH, PAST_SEQUENCE, SEQUENCE, TOTAL_SEQUENCE
from bot.specs import Graph, InputSpec, OrderedOutputs, Shape, accepts, traceable_experts
from bot.specs.encoder import TextEncoderSpec


def flat_cache(cache) -> list[torch.Tensor]:
    """A transformers Cache as [layer0 key, layer0 value, layer1 key, ...]."""
    tensors = []
    for layer in cache.layers:
        tensors += [layer.keys, layer.values]
    return tensors


def build_cache(config, tensors: list[torch.Tensor]):
    """The inverse of flat_cache: a DynamicCache from flat key/value tensors."""
    from transformers import DynamicCache

    cache = full_window(DynamicCache(config=config))
    for layer in range(len(tensors) // 2):
        cache.update(tensors[2 * layer], tensors[2 * layer + 1], layer)
    return cache


def full_window(cache):
    """Sliding-window layers keep every token, like full-attention layers; the window is applied by the mask.

    transformers crops a sliding layer's cache to the window, but a client feeds each present back whole as the next
    past, with an attention mask over past and new tokens: a cropped present would no longer line up with that mask.
    The model's sliding-window mask makes attention over a full cache identical to attention over a cropped one.
    """
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    cache.layers = [DynamicLayer() if type(layer) is DynamicSlidingWindowLayer else layer  # noqa: E721 - not subclasses
                    for layer in cache.layers]
    return cache


def positions_from_mask(mask: torch.Tensor, new_tokens: int | None = None) -> torch.Tensor:
    """Position ids as generate(), transformers.js and optimum compute them: padding does not count as a position.

    `cumsum(mask) - 1`, padded positions set to 1; for a cached step only the last `new_tokens` columns.
    """
    positions = mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(mask == 0, 1)
    return positions if new_tokens is None else positions[:, -new_tokens:]


class WithPast(torch.nn.Module):
    """Positional inputs (the named ones, then the flat past) -> (head outputs..., flat presents)."""

    def __init__(self, model, input_names: list[str], head_outputs: list[str]):
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.head_outputs = head_outputs

    def forward(self, *inputs):
        named = dict(zip(self.input_names, inputs))
        past = list(inputs[len(self.input_names):])
        out = self.model(**named, past_key_values=build_cache(self.model.config, past), use_cache=True,
                         return_dict=True)
        return tuple([out[name] for name in self.head_outputs] + flat_cache(out.past_key_values))


# Model types whose graph without a cache the TorchScript-based ONNX exporter converts wrongly: for Cohere it writes
# the batch size it traced with into the reshape that splits the heads, so the graph fails at any other batch size.
# That exporter is refused for them and the exporter chain goes on to dynamo, which converts them correctly.
NO_TORCHSCRIPT_ONNX = {"cohere"}


class DynamoOnly(OrderedOutputs):
    """A wrapper the TorchScript-based ONNX exporter refuses (TorchScript tracing and dynamo are served as usual)."""

    def forward(self, *inputs):
        if torch.onnx.is_in_onnx_export() and torch.jit.is_tracing():
            raise RuntimeError(f"the TorchScript-based ONNX exporter mis-converts {self.model.config.model_type} "
                               f"without a cache (its head-split reshape keeps the traced batch size)")
        return super().forward(*inputs)


class DecoderSpec(TextEncoderSpec):
    family = "decoder"

    def wrap(self, model, inputs, output_names, feature):
        if model.config.model_type in NO_TORCHSCRIPT_ONNX:
            return DynamoOnly(model, [i.name for i in inputs], list(output_names), self.call_kwargs(feature))
        return super().wrap(model, inputs, output_names, feature)

    def inputs(self, model, feature):
        dims = (BATCH, SEQUENCE)
        inputs = [InputSpec("input_ids", dims, "ids"), InputSpec("attention_mask", dims, "mask")]
        if accepts(model, "position_ids"):  # so a left-padded batch gets the positions generate() gives it
            inputs.append(InputSpec("position_ids", dims, "positions"))
        return inputs

    def call_kwargs(self, feature):
        return {"use_cache": False}

    def example_inputs(self, config, inputs, shape, seed=0):
        plain = [i for i in inputs if i.kind != "positions"]
        return with_positions(super().example_inputs(config, plain, shape, seed), inputs)

    def text_inputs(self, tokenizer, inputs, feature, config):
        if tokenizer.pad_token is None:  # GPT-2 style tokenizers have none; padding needs one
            return None
        plain = [i for i in inputs if i.kind != "positions"]
        return with_positions(super().text_inputs(tokenizer, plain, feature, config), inputs)

    def graphs(self, model, feature, tokenizer=None):
        if not FEATURES[feature].with_past:
            return super().graphs(model, feature, tokenizer)
        traceable_experts(model)
        return [past_graph(model, self.output_names)]


def with_positions(values: dict[str, torch.Tensor] | None, inputs: list[InputSpec]) -> dict[str, torch.Tensor] | None:
    """Inputs in spec order, with position ids derived from the attention mask where the spec has them."""
    if values is None:
        return None
    return {i.name: positions_from_mask(values["attention_mask"]) if i.kind == "positions" else values[i.name]
            for i in inputs}


def _random_ids(config, batch: int, length: int, generator) -> torch.Tensor:
    return torch.randint(min(5, config.vocab_size - 1), config.vocab_size, (batch, length), generator=generator)


def _past_for(model, ids: torch.Tensor, mask: torch.Tensor, empty_like: list[torch.Tensor] | None):
    """The model's own cache for a prefix (realistic values and shapes), or empty tensors for a length-0 past."""
    if ids.shape[1] == 0:
        return [t[:, :, :0].expand(ids.shape[0], *t.shape[1:2], 0, *t.shape[3:]).contiguous() for t in empty_like]
    with torch.no_grad():
        return flat_cache(model(input_ids=ids, attention_mask=mask, past_key_values=build_cache(model.config, []),
                                use_cache=True, return_dict=True).past_key_values)


def past_graph(model, output_names) -> Graph:
    """The single with-past graph: prefill with an empty past, then one token at a time."""
    config = model.config
    token = torch.full((1, 1), min(5, config.vocab_size - 1))
    with torch.no_grad():
        probe = flat_cache(model(input_ids=token, past_key_values=build_cache(config, []), use_cache=True,
                                 return_dict=True).past_key_values)
        head = output_names(model(input_ids=token, use_cache=False, return_dict=True))
    layers = len(probe) // 2
    past_names = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    inputs = [InputSpec("input_ids", (BATCH, SEQUENCE), "ids"),
              InputSpec("attention_mask", (BATCH, TOTAL_SEQUENCE), "mask")]
    if accepts(model, "position_ids"):
        inputs.append(InputSpec("position_ids", (BATCH, SEQUENCE), "positions"))
    named = [i.name for i in inputs]
    inputs += [InputSpec(name, (BATCH, t.shape[1], PAST_SEQUENCE, t.shape[3]), "past")
               for name, t in zip(past_names, probe)]
    outputs = head + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]

    def make(batch: int, sequence: int, past: int, padded: bool, seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        prefix, ids = _random_ids(config, batch, past, generator), _random_ids(config, batch, sequence, generator)
        mask = torch.ones(batch, past + sequence, dtype=torch.long)
        if padded and batch > 1:
            mask[1, (past + sequence) // 2 + 1:] = 0  # right padding; the first position always attends
        flat = _past_for(model, prefix, mask[:, :past], probe)
        values = {"input_ids": ids, "attention_mask": mask, "position_ids": positions_from_mask(mask, sequence)}
        return {**{name: values[name] for name in named}, **dict(zip(past_names, flat))}

    cases = [(Shape({BATCH: 3, SEQUENCE: 5, PAST_SEQUENCE: 0}, True).describe() + " (prompt)", make(3, 5, 0, True, 1)),
             (Shape({BATCH: 1, SEQUENCE: 1, PAST_SEQUENCE: 6}).describe() + " (next token)", make(1, 1, 6, False, 2)),
             (Shape({BATCH: 3, SEQUENCE: 1, PAST_SEQUENCE: 9}, True).describe() + " (next token)",
              make(3, 1, 9, True, 3))]
    return Graph("model", WithPast(model, named, head), inputs, outputs, make(2, 3, 4, True, 0), cases)
