"""Decoder-only models (GPT-2, GPT Neo, GPT-J): one graph per feature; `-with-past` adds a flat key/value cache.

With past, the graph takes `past_key_values.{i}.key` / `.value` (batch, heads, past_sequence, head_dim) and returns
`present.{i}.key` / `.value` (the same with past_sequence + sequence). ONE graph serves both steps of decoding: the
first call passes a past of length 0 (the prompt), every later call passes the previous call's presents and one
new token. `attention_mask` covers past and new tokens: (batch, total_sequence), where
total_sequence = past_sequence + sequence.
"""

from __future__ import annotations

import torch

from bot.features import FEATURES
from bot.specs import Graph, InputSpec, Shape
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

    cache = DynamicCache(config=config)
    for layer in range(len(tensors) // 2):
        cache.update(tensors[2 * layer], tensors[2 * layer + 1], layer)
    return cache


class WithPast(torch.nn.Module):
    """Positional inputs (ids, mask, flat past) -> (head outputs..., flat presents)."""

    def __init__(self, model, head_outputs: list[str]):
        super().__init__()
        self.model = model
        self.head_outputs = head_outputs

    def forward(self, input_ids, attention_mask, *past):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         past_key_values=build_cache(self.model.config, list(past)), use_cache=True, return_dict=True)
        return tuple([out[name] for name in self.head_outputs] + flat_cache(out.past_key_values))


class DecoderSpec(TextEncoderSpec):
    family = "decoder"

    def inputs(self, model, feature):
        dims = ("batch", "sequence")
        return [InputSpec("input_ids", dims, "ids"), InputSpec("attention_mask", dims, "mask")]

    def call_kwargs(self, feature):
        return {"use_cache": False}

    def text_inputs(self, tokenizer, inputs, feature, config):
        if tokenizer.pad_token is None:  # GPT-2 style tokenizers have none; padding needs one
            return None
        return super().text_inputs(tokenizer, inputs, feature, config)

    def graphs(self, model, feature, tokenizer=None):
        if not FEATURES[feature].with_past:
            return super().graphs(model, feature, tokenizer)
        return [past_graph(model, self.output_names)]


def _random_ids(config, batch: int, length: int, generator) -> torch.Tensor:
    return torch.randint(min(5, config.vocab_size - 1), config.vocab_size, (batch, length), generator=generator)


def _past_for(model, ids: torch.Tensor, mask: torch.Tensor, empty_like: list[torch.Tensor] | None):
    """The model's own cache for a prefix (realistic values and shapes), or empty tensors for a length-0 past."""
    if ids.shape[1] == 0:
        return [t[:, :, :0].expand(ids.shape[0], *t.shape[1:2], 0, *t.shape[3:]).contiguous() for t in empty_like]
    with torch.no_grad():
        return flat_cache(model(input_ids=ids, attention_mask=mask, use_cache=True, return_dict=True).past_key_values)


def past_graph(model, output_names) -> Graph:
    """The single with-past graph: prefill with an empty past, then one token at a time."""
    config = model.config
    with torch.no_grad():
        probe = flat_cache(model(input_ids=torch.full((1, 1), min(5, config.vocab_size - 1)), use_cache=True,
                                 return_dict=True).past_key_values)
        head = [n for n in output_names(model(input_ids=torch.full((1, 1), min(5, config.vocab_size - 1)),
                                              use_cache=False, return_dict=True))]
    layers = len(probe) // 2
    past_names = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    inputs = [InputSpec("input_ids", ("batch", "sequence"), "ids"),
              InputSpec("attention_mask", ("batch", "total_sequence"), "mask")]
    inputs += [InputSpec(name, ("batch", t.shape[1], "past_sequence", t.shape[3]), "past")
               for name, t in zip(past_names, probe)]
    outputs = head + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]

    def make(batch: int, sequence: int, past: int, padded: bool, seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        prefix, ids = _random_ids(config, batch, past, generator), _random_ids(config, batch, sequence, generator)
        mask = torch.ones(batch, past + sequence, dtype=torch.long)
        if padded and batch > 1:
            mask[1, (past + sequence) // 2 + 1:] = 0  # right padding; the first position always attends
        flat = _past_for(model, prefix, mask[:, :past], probe)
        return {"input_ids": ids, "attention_mask": mask, **dict(zip(past_names, flat))}

    cases = [(Shape({"batch": 3, "sequence": 5, "past_sequence": 0}, True).describe() + " (prompt)", make(3, 5, 0, True, 1)),
             (Shape({"batch": 1, "sequence": 1, "past_sequence": 6}).describe() + " (next token)", make(1, 1, 6, False, 2)),
             (Shape({"batch": 3, "sequence": 1, "past_sequence": 9}, True).describe() + " (next token)",
              make(3, 1, 9, True, 3))]
    return Graph("model", WithPast(model, head), inputs, outputs, make(2, 3, 4, True, 0), cases)
