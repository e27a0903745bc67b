"""A custom architecture, as a user would write it (README, 'Custom architectures'): MPNet is not in the registry."""

from bot.custom import Architecture
from bot.layout import BATCH, SEQUENCE
from bot.specs import InputSpec
from bot.specs.encoder import TextEncoderSpec


class MPNetSpec(TextEncoderSpec):
    """MPNet takes input ids and an attention mask; no token types."""

    def inputs(self, model, feature):
        dims = (BATCH, SEQUENCE)  # the axis names the clients know
        return [InputSpec("input_ids", dims, "ids"), InputSpec("attention_mask", dims, "mask")]


MPNET = Architecture("mpnet", ("default", "sequence-classification"), MPNetSpec(), name="MPNet")
