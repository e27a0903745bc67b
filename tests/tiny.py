"""Tiny random checkpoints built from configs, for every registered architecture and head (no network).

A checkpoint saved from a head model stores that head's weights, so it "supports" that feature; one saved from the
base model supports only `default`. Sizes are the smallest that keep every architecture's constraints.
"""

from __future__ import annotations

from pathlib import Path

import torch

COMMON = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=64, type_vocab_size=2, num_labels=3)
VISION = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
              num_attention_heads=4, intermediate_size=37, num_labels=3, encoder_stride=8)

OVERRIDES: dict[str, dict] = {
    "albert": dict(embedding_size=16),
    "convbert": dict(embedding_size=32),
    "distilbert": dict(dim=32, n_layers=2, n_heads=4, hidden_dim=37),
    "electra": dict(embedding_size=32),
    "flaubert": dict(emb_dim=32, n_layers=2, n_heads=4),
    "xlm": dict(emb_dim=32, n_layers=2, n_heads=4),
    "mobilebert": dict(embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16, num_feedforward_networks=2),
    "big_bird": dict(attention_type="original_full"),
    "squeezebert": dict(embedding_size=32, intermediate_size=64),
}
VISION_TYPES = {"vit", "deit", "beit", "data2vec-vision"}


def tiny_config(model_type: str, **extra):
    from transformers import AutoConfig

    base = VISION if model_type in VISION_TYPES else COMMON
    return AutoConfig.for_model(model_type, **{**base, **OVERRIDES.get(model_type, {}), **extra})


def build_checkpoint(directory: Path, model_type: str, feature: str = "default", seed: int = 0) -> Path:
    """Save a tiny random model of `model_type` with the head of `feature` into `directory`."""
    from bot.checkpoint import auto_class

    torch.manual_seed(seed)
    extra = {"num_labels": 2} if feature == "question-answering" else {}  # start and end logits
    config = tiny_config(model_type, **extra)
    config.architectures = []  # some tasks map to several classes; an empty list picks the first
    model = auto_class(feature).from_config(config).eval()
    model.save_pretrained(directory)
    return directory
