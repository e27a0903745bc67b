"""A custom architecture, as a user would write it (README, 'Custom architectures'): ERNIE is not in the registry."""

from bot.custom import Architecture
from bot.layout import BATCH, SEQUENCE
from bot.specs import InputSpec
from bot.specs.encoder import TextEncoderSpec


class ErnieSpec(TextEncoderSpec):
    """ERNIE's graph takes input ids and an attention mask; token and task types keep their defaults."""

    def inputs(self, model, feature):
        dims = (BATCH, SEQUENCE)  # the axis names the clients know
        return [InputSpec("input_ids", dims, "ids"), InputSpec("attention_mask", dims, "mask")]


ERNIE = Architecture("ernie", ("default", "sequence-classification"), ErnieSpec(), name="ERNIE")
