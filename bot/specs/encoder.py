"""Text encoders (BERT and its relatives): token ids, attention mask, and token types or boxes where used."""

from __future__ import annotations

import torch

from bot.layout import BATCH, CHOICES, SEQUENCE
from bot.specs import ExportSpec, InputSpec, Shape, accepts

# Sentences of different lengths, so a tokenizer pads them: the validation input a user's batch looks like.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Exports must match PyTorch.",
    "Hello world!",
)


class TextEncoderSpec(ExportSpec):
    family = "text-encoder"

    def _batch_dims(self, feature: str) -> tuple[str, ...]:
        return (BATCH, CHOICES, SEQUENCE) if feature == "multiple-choice" else (BATCH, SEQUENCE)

    def inputs(self, model, feature):
        dims = self._batch_dims(feature)
        specs = [InputSpec("input_ids", dims, "ids"), InputSpec("attention_mask", dims, "mask")]
        if accepts(model, "token_type_ids") and getattr(model.config, "type_vocab_size", 2) > 1:
            specs.append(InputSpec("token_type_ids", dims, "type_ids"))
        if accepts(model, "bbox"):
            specs.append(InputSpec("bbox", dims + (4,), "bbox"))
        return specs

    def export_shape(self, feature):
        sizes = {BATCH: 2, SEQUENCE: 8}
        if feature == "multiple-choice":
            sizes[CHOICES] = 4
        # Padded, so tracing records the masked-attention path rather than a shortcut for all-ones masks.
        return Shape(sizes, padded=True)

    def validation_shapes(self, feature):
        padded, small = {BATCH: 3, SEQUENCE: 13}, {BATCH: 1, SEQUENCE: 5}
        if feature == "multiple-choice":
            padded[CHOICES], small[CHOICES] = 3, 2
        return [Shape(padded, padded=True), Shape(small)]

    def example_inputs(self, config, inputs, shape, seed=0):
        generator = torch.Generator().manual_seed(seed)
        dims = tuple(shape.sizes[d] for d in inputs[0].dims)
        vocab = config.vocab_size
        ids = torch.randint(min(5, vocab - 1), vocab, dims, generator=generator)
        mask = torch.ones(dims, dtype=torch.long)
        if shape.padded and dims[0] > 1:
            mask[1, ..., dims[-1] // 2:] = 0  # the second row is padded on the right
            ids[mask == 0] = getattr(config, "pad_token_id", None) or 0
        values = {"ids": ids, "mask": mask}
        return {spec.name: values[spec.kind] if spec.kind in values else _filler(spec, dims, generator)
                for spec in inputs}

    def text_inputs(self, tokenizer, inputs, feature, config):
        """Real sentences through the checkpoint's tokenizer, padded: the padded validation input."""
        if feature == "multiple-choice":
            return None
        encoded = tokenizer(list(SENTENCES), padding=True, return_tensors="pt")
        dims = tuple(encoded["input_ids"].shape)
        generator = torch.Generator().manual_seed(0)
        return {spec.name: encoded[spec.name] if spec.name in encoded else _filler(spec, dims, generator)
                for spec in inputs}


def _filler(spec: InputSpec, dims: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Inputs a tokenizer does not make: token types (first half 0, second half 1) and layout boxes."""
    if spec.kind == "type_ids":
        types = torch.zeros(dims, dtype=torch.long)
        types[..., dims[-1] // 2:] = 1
        return types
    if spec.kind == "bbox":
        corners = torch.randint(0, 1000, dims + (2, 2), generator=generator)
        low, high = corners.min(dim=-2).values, corners.max(dim=-2).values  # x0 <= x1 and y0 <= y1
        return torch.stack([low[..., 0], low[..., 1], high[..., 0], high[..., 1]], dim=-1)
    raise ValueError(f"no filler for input kind {spec.kind!r}")
