"""Generation parity: greedy decoding with the exported graphs alone must reproduce `model.generate()`.

Output-by-output validation cannot see a cache wired wrongly between steps (a present returned in the wrong order,
a decoder fed the wrong cross-attention cache); decoding a few tokens with nothing but the artifacts can. The loop
here is what a user writes with onnxruntime: prompt once (past of length 0), then one token at a time feeding the
previous presents back. The reference is `generate()` with plain greedy settings (no extra logits processors) and no
end-of-sequence stop, so every check compares exactly NEW_TOKENS tokens, even for a model that would stop at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

GENERATION_FEATURES = {"causal-lm", "causal-lm-with-past", "seq2seq-lm", "seq2seq-lm-with-past"}
NEW_TOKENS = 8

# component name -> named inputs -> named outputs
Call = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class GenerationCheck:
    prompt: list[int]
    expected: list[int]
    actual: list[int]
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.expected == self.actual

    def to_dict(self) -> dict:
        return {"passed": self.passed, "prompt": self.prompt, "expected": self.expected, "actual": self.actual,
                "error": self.error}


def _prompt(config, length: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    return torch.randint(min(5, config.vocab_size - 1), config.vocab_size, (1, length), generator=generator)


def _reference(model, prompt: torch.Tensor) -> list[int]:
    """generate() as plain greedy decoding: the model's own generation defaults (forced BOS/EOS tokens, n-gram
    blocking, an EOS stop) are swapped out for the call, since the exported graphs only compute logits."""
    from transformers import GenerationConfig

    config = model.config
    start = getattr(config, "decoder_start_token_id", None)
    plain = dict(pad_token_id=getattr(config, "pad_token_id", None) or 0, decoder_start_token_id=start)
    saved, model.generation_config = model.generation_config, GenerationConfig(**plain)
    try:
        with torch.no_grad():
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), generation_config=
                                 GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1, **plain))
    finally:
        model.generation_config = saved
    tokens = out[0].tolist()
    return tokens[1:] if config.is_encoder_decoder else tokens[prompt.shape[1]:]


def check_generation(model, feature: str, call: Call, past_inputs: dict[str, dict[str, tuple]]) -> GenerationCheck:
    """Decode up to NEW_TOKENS greedily with `call` and compare with generate().

    `past_inputs[component]` maps the component's past inputs, in order, to their dims (batch, heads, axis, size).
    """
    prompt = _prompt(model.config)
    expected = _reference(model, prompt)
    try:
        if model.config.is_encoder_decoder and feature.startswith("seq2seq"):
            actual = _seq2seq(model.config, prompt, call, past_inputs, len(expected))
        else:
            actual = _causal(model.config, prompt, call, past_inputs.get("model", {}), len(expected))
    except Exception as exc:  # the artifacts could not decode: a failed check, not a crash
        return GenerationCheck(prompt[0].tolist(), expected, [], f"{type(exc).__name__}: {str(exc)[:300]}")
    return GenerationCheck(prompt[0].tolist(), expected, actual)


def _causal(config, prompt: torch.Tensor, call: Call, past_inputs: dict[str, tuple], steps: int) -> list[int]:
    ids = prompt.numpy()
    feed = ids
    # the prompt goes in with a past of length 0
    past = {name: np.zeros((1, dims[1], 0, dims[3]), dtype=np.float32) for name, dims in past_inputs.items()}
    tokens: list[int] = []
    for _ in range(steps):
        outputs = call("model", {"input_ids": feed, "attention_mask": np.ones((1, ids.shape[1]), dtype=np.int64),
                                 **past})
        token = int(np.argmax(outputs[next(iter(outputs))][0, -1]))
        tokens.append(token)
        ids = np.concatenate([ids, [[token]]], axis=1)
        if past_inputs:  # feed back the presents and only the new token
            past = {name: outputs[name.replace("past_key_values.", "present.")] for name in past_inputs}
            feed = np.array([[token]], dtype=np.int64)
        else:  # no cache: the whole sequence every step
            feed = ids
    return tokens


def _seq2seq(config, prompt: torch.Tensor, call: Call, past_inputs: dict[str, dict[str, tuple]],
             steps: int) -> list[int]:
    mask = np.ones(prompt.shape, dtype=np.int64)
    hidden = call("encoder_model", {"input_ids": prompt.numpy(), "attention_mask": mask})["last_hidden_state"]
    start = config.decoder_start_token_id if config.decoder_start_token_id is not None else config.pad_token_id
    decoded = np.array([[start]], dtype=np.int64)
    with_past = "decoder_with_past_model" in past_inputs
    tokens: list[int] = []
    past: dict[str, np.ndarray] = {}
    for step in range(steps):
        base = {"encoder_attention_mask": mask, "encoder_hidden_states": hidden}
        if with_past and step > 0:
            outputs = call("decoder_with_past_model", {"input_ids": decoded[:, -1:], **base, **past})
        else:
            outputs = call("decoder_model", {"input_ids": decoded, **base})
        token = int(np.argmax(outputs[next(iter(outputs))][0, -1]))
        tokens.append(token)
        decoded = np.concatenate([decoded, [[token]]], axis=1)
        if with_past:
            for name in past_inputs["decoder_with_past_model"]:
                present = name.replace("past_key_values.", "present.")
                if present in outputs:  # decoder presents change every step; encoder ones come from step 0
                    past[name] = outputs[present]
    return tokens
