"""Tiny random checkpoints built from configs, for every registered architecture and head (no network).

A checkpoint saved from a head model stores that head's weights, so it "supports" that feature; one saved from the
base model supports only `default`. Sizes are the smallest that keep every architecture's constraints.
"""

from __future__ import annotations

from pathlib import Path

import torch

COMMON = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=64, type_vocab_size=2, num_labels=2)
VISION = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
              num_attention_heads=4, intermediate_size=37, num_labels=2, encoder_stride=8)

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
SEQ2SEQ = dict(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64,
               pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, num_labels=2)
OWN_BASE: dict[str, dict] = {
    "gpt2": dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0, num_labels=2),
    "gpt_neo": dict(vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                    max_position_embeddings=64, window_size=16, intermediate_size=37, pad_token_id=0, num_labels=2),
    "gptj": dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64, pad_token_id=0,
                 num_labels=2),
    "t5": dict(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, decoder_start_token_id=0,
               pad_token_id=0, eos_token_id=1),
    "marian": {**SEQ2SEQ, "decoder_vocab_size": 99},
    "bigbird_pegasus": {**SEQ2SEQ, "attention_type": "original_full"},
}
OWN_BASE["perceiver"] = dict(vocab_size=262, num_latents=8, d_latents=32, d_model=32, num_blocks=1,
                             num_self_attends_per_block=1, num_self_attention_heads=2, num_cross_attention_heads=2,
                             max_position_embeddings=64, image_size=16, num_labels=2)
for _model_type in ("bart", "mbart", "m2m_100", "blenderbot", "blenderbot-small", "plbart"):
    OWN_BASE[_model_type] = SEQ2SEQ


# Architectures added after the seed list: their default config shrunk by bot.tinyconfig, which keeps what makes each
# one different (every kind of layer, a sliding window shorter than the validation sequences, grouped-query
# attention, experts with top-k routing, soft-capping).
SHRUNK = {"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma", "gemma2", "gemma3_text", "phi3",
          "smollm3", "granite", "olmo2", "starcoder2", "stablelm", "cohere", "falcon", "modernbert", "deberta-v2",
          "mpnet", "swin", "convnext", "dinov2"}


def tiny_config(model_type: str, **extra):
    from transformers import AutoConfig

    if model_type in SHRUNK:
        from bot.tinyconfig import tiny_config as shrunk

        return shrunk(model_type, **extra)
    base = OWN_BASE.get(model_type) or (VISION if model_type in VISION_TYPES else COMMON)
    return AutoConfig.for_model(model_type, **{**base, **OVERRIDES.get(model_type, {}), **extra})


def widen(model: torch.nn.Module, std: float = 0.3) -> None:
    """Wide random weights (normalisation layers left at their init), so greedy decoding varies its tokens."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name and "ln_" not in name:
                parameter.normal_(0.0, std)


def build_checkpoint(directory: Path, model_type: str, feature: str = "default", seed: int = 0,
                     lively: bool = False, **config) -> Path:
    """Save a tiny random model of `model_type` with the head of `feature` into `directory`.

    `lively` widens the weights so greedy decoding produces varied tokens instead of repeating one token, which
    makes generation-parity checks meaningful. `config` overrides the tiny config's values.
    """
    from bot.checkpoint import auto_class

    torch.manual_seed(seed)
    extra = {"num_labels": 2} if feature == "question-answering" else {}  # start and end logits
    config = tiny_config(model_type, **extra, **config)
    config.architectures = []  # some tasks map to several classes; an empty list picks the first
    model = auto_class(feature).from_config(config).eval()
    if lively:
        widen(model)
    model.save_pretrained(directory)
    return directory
