"""Vision transformers (ViT, DeiT, BEiT, Data2VecVision): pixel values of the configured image size."""

from __future__ import annotations

import torch

from bot.layout import BATCH
from bot.specs import ExportSpec, InputSpec, Shape


class VisionSpec(ExportSpec):
    family = "vision"

    def inputs(self, model, feature):
        config = model.config
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        return [InputSpec("pixel_values", (BATCH, config.num_channels, size, size), "pixels")]

    def export_shape(self, feature):
        return Shape({BATCH: 2})

    def validation_shapes(self, feature):
        # Images have no padding; the batch sizes differ from the export's.
        return [Shape({BATCH: 3}), Shape({BATCH: 1})]

    def example_inputs(self, config, inputs, shape, seed=0):
        generator = torch.Generator().manual_seed(seed)
        (spec,) = inputs
        dims = tuple(shape.sizes[d] if isinstance(d, str) else d for d in spec.dims)
        return {spec.name: torch.randn(dims, generator=generator)}
