"""Generation parity: greedy decoding with the exported graphs alone must reproduce `model.generate()`.

Output-by-output validation cannot see a cache wired wrongly between steps (a present returned in the wrong order,
a decoder fed the wrong cross-attention cache) nor positions shifted by padding; decoding a batch with nothing but
the artifacts can. The loop here is what the clients (transformers.js, optimum) do: a batch of prompts of different
lengths, left-padded for decoder-only models (right-padded encoder inputs for encoder-decoders), position ids from
the attention mask where the graph takes them, the prompt once with a past of length 0, then one token at a time
feeding the previous presents back. The reference is `generate()` on the same padded batch with plain greedy
settings (no extra logits processors) and no end-of-sequence stop, so every row compares exactly NEW_TOKENS tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from bot.layout import DECODER, DECODER_WITH_PAST, ENCODER, MERGED_DECODER, MODEL, USE_CACHE_BRANCH

GENERATION_FEATURES = {"causal-lm", "causal-lm-with-past", "seq2seq-lm", "seq2seq-lm-with-past"}
NEW_TOKENS = 8
PROMPT_LENGTHS = (6, 4, 2)  # one batch: rows of different lengths, so all but the longest are padded

# component name, named inputs -> named outputs
Call = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]
# component name -> {input name: dims (axis names or sizes)}
GraphInputs = dict[str, dict[str, tuple]]


@dataclass
class GenerationCheck:
    prompts: list[list[int]]  # each row without its padding
    expected: list[list[int]]
    actual: list[list[int]]
    error: str | None = None
    padding: str = "left"  # which side the prompts were padded on

    @property
    def passed(self) -> bool:
        return self.error is None and self.expected == self.actual

    def to_dict(self) -> dict:
        return {"passed": self.passed, "prompts": self.prompts, "padding": self.padding, "expected": self.expected,
                "actual": self.actual, "error": self.error}


def pad_token_id(config) -> int:
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(config, name, None)
        value = value[0] if isinstance(value, (list, tuple)) and value else value
        if isinstance(value, int):
            return value
    return 0


def padded_prompts(config, side: str) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """A batch of random prompts of PROMPT_LENGTHS, padded on `side`: (ids, mask, rows without padding)."""
    generator = torch.Generator().manual_seed(1234)
    low = min(5, config.vocab_size - 1)
    rows = [torch.randint(low, config.vocab_size, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]
    width, pad = max(PROMPT_LENGTHS), pad_token_id(config)
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
    return ids, mask, rows


def positions(mask: np.ndarray, new_tokens: int) -> np.ndarray:
    """What the clients feed as position_ids: cumsum(mask) - 1, padding at 1, the last `new_tokens` columns."""
    result = np.cumsum(mask, axis=-1) - 1
    result[mask == 0] = 1
    return result[:, -new_tokens:].astype(np.int64)


def _reference(model, ids: np.ndarray, mask: np.ndarray) -> list[list[int]]:
    """generate() as plain greedy decoding: the model's own generation defaults (forced BOS/EOS tokens, n-gram
    blocking, an EOS stop) are swapped out for the call, since the exported graphs only compute logits."""
    from transformers import GenerationConfig

    config = model.config
    start = getattr(config, "decoder_start_token_id", None)
    plain = dict(pad_token_id=pad_token_id(config), decoder_start_token_id=start)
    saved, model.generation_config = model.generation_config, GenerationConfig(**plain)
    try:
        with torch.no_grad():
            out = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                 generation_config=GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False,
                                                                    num_beams=1, **plain))
    finally:
        model.generation_config = saved
    skip = 1 if config.is_encoder_decoder else ids.shape[1]
    return [row[skip:] for row in out.tolist()]


@dataclass
class GenerationReference:
    """generate()'s tokens for the padded batch, computed with the eager model before it is released."""

    config: object
    seq2seq: bool
    ids: np.ndarray
    mask: np.ndarray
    rows: list[list[int]]
    expected: list[list[int]]

    @property
    def side(self) -> str:
        return "right" if self.seq2seq else "left"


def generation_reference(model, feature: str) -> GenerationReference:
    """The padded batch of prompts for `feature` and what generate() makes of it."""
    seq2seq = bool(model.config.is_encoder_decoder and feature.startswith("seq2seq"))
    ids, mask, rows = padded_prompts(model.config, "right" if seq2seq else "left")
    return GenerationReference(model.config, seq2seq, ids, mask, rows, _reference(model, ids, mask))


def check_generation(reference: GenerationReference, call: Call, graph_inputs: GraphInputs) -> GenerationCheck:
    """Decode NEW_TOKENS greedily for the reference's batch with `call` and compare every row with generate()."""
    try:
        decode = _seq2seq if reference.seq2seq else _causal
        actual = decode(reference.config, reference.ids, reference.mask, call, graph_inputs, NEW_TOKENS)
    except Exception as exc:  # the artifacts could not decode: a failed check, not a crash
        return GenerationCheck(reference.rows, reference.expected, [], f"{type(exc).__name__}: {str(exc)[:300]}",
                               reference.side)
    return GenerationCheck(reference.rows, reference.expected, actual, padding=reference.side)


def _empty_past(names: dict[str, tuple], batch: int) -> dict[str, np.ndarray]:
    """A past of length 0, as the clients build it from the graph's input metadata."""
    return {name: np.zeros((batch, dims[1], 0, dims[3]), dtype=np.float32) for name, dims in names.items()}


def _past_names(inputs: dict[str, tuple]) -> dict[str, tuple]:
    return {name: dims for name, dims in inputs.items() if name.startswith("past_key_values.")}


def _argmax(outputs: dict[str, np.ndarray]) -> np.ndarray:
    return np.argmax(next(iter(outputs.values()))[:, -1], axis=-1).astype(np.int64)


def _causal(config, ids: np.ndarray, mask: np.ndarray, call: Call, graph_inputs: GraphInputs,
            steps: int) -> list[list[int]]:
    inputs = graph_inputs[MODEL]
    past_names = _past_names(inputs)
    past = _empty_past(past_names, ids.shape[0])
    feed, tokens = ids, []
    for _ in range(steps):
        named = {"input_ids": feed, "attention_mask": mask, **past}
        if "position_ids" in inputs:
            named["position_ids"] = positions(mask, feed.shape[1])
        outputs = call(MODEL, named)
        token = _argmax(outputs)
        tokens.append(token)
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], axis=1)
        ids = np.concatenate([ids, token[:, None]], axis=1)
        if past_names:  # feed back the presents and only the new token
            past = {name: outputs[name.replace("past_key_values.", "present.")] for name in past_names}
            feed = token[:, None]
        else:  # no cache: the whole sequence every step
            feed = ids
    return np.stack(tokens, axis=1).tolist()


def _seq2seq(config, ids: np.ndarray, mask: np.ndarray, call: Call, graph_inputs: GraphInputs,
             steps: int) -> list[list[int]]:
    hidden = call(ENCODER, {"input_ids": ids, "attention_mask": mask})["last_hidden_state"]
    start = config.decoder_start_token_id if config.decoder_start_token_id is not None else config.pad_token_id
    batch = ids.shape[0]
    decoded = np.full((batch, 1), start, dtype=np.int64)
    base = {"encoder_attention_mask": mask, "encoder_hidden_states": hidden}
    merged = MERGED_DECODER in graph_inputs
    cached = merged or DECODER_WITH_PAST in graph_inputs
    past_names = _past_names(graph_inputs[MERGED_DECODER if merged else DECODER_WITH_PAST] if cached else {})
    past: dict[str, np.ndarray] = {}
    tokens = []
    for step in range(steps):
        if merged:
            first = step == 0
            feed = decoded if first else decoded[:, -1:]
            outputs = call(MERGED_DECODER, {"input_ids": feed, **base, **(_empty_past(past_names, batch) if first
                                                                           else past),
                                            USE_CACHE_BRANCH: np.array([not first])})
        elif cached and step > 0:
            outputs = call(DECODER_WITH_PAST, {"input_ids": decoded[:, -1:], **base, **past})
        else:
            outputs = call(DECODER, {"input_ids": decoded, **base})
        token = _argmax(outputs)
        tokens.append(token)
        decoded = np.concatenate([decoded, token[:, None]], axis=1)
        for name in past_names:
            is_encoder = ".encoder." in name
            if step == 0 or not is_encoder:  # cross-attention presents come from the first step only
                past[name] = outputs[name.replace("past_key_values.", "present.")]
    return np.stack(tokens, axis=1).tolist()
