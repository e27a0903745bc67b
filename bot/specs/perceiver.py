"""Perceiver: its forward takes `inputs` (byte ids for text heads, pixel values for image classification)."""

from __future__ import annotations

from bot.layout import BATCH, SEQUENCE
from bot.specs import InputSpec, Shape
from bot.specs.encoder import TextEncoderSpec
from bot.specs.vision import VisionSpec


class PerceiverSpec(TextEncoderSpec):
    family = "perceiver"

    def inputs(self, model, feature):
        if feature == "image-classification":
            size = model.config.image_size
            return [InputSpec("inputs", (BATCH, 3, size, size), "pixels")]
        dims = (BATCH, SEQUENCE)
        return [InputSpec("inputs", dims, "ids"), InputSpec("attention_mask", dims, "mask")]

    def export_shape(self, feature):
        return VisionSpec().export_shape(feature) if feature == "image-classification" else \
            super().export_shape(feature)

    def validation_shapes(self, feature):
        return VisionSpec().validation_shapes(feature) if feature == "image-classification" else \
            super().validation_shapes(feature)

    def example_inputs(self, config, inputs, shape: Shape, seed=0):
        if inputs[0].kind == "pixels":
            return VisionSpec().example_inputs(config, inputs, shape, seed)
        values = super().example_inputs(config, [InputSpec("input_ids", i.dims, i.kind) if i.name == "inputs"
                                                 else i for i in inputs], shape, seed)
        values["inputs"] = values.pop("input_ids")
        return {spec.name: values[spec.name] for spec in inputs}

    def text_inputs(self, tokenizer, inputs, feature, config):
        return None  # the byte tokenizer names its output input_ids; random bytes are as good here
