"""Tiny configs for any transformers model type: its default config, shrunk the way the type requires.

Setting every size attribute to a small number breaks most modern architectures: a per-layer `layer_types` list
must keep the layer count's length (and should keep one layer of each kind, or the sliding-window or linear-attention
path is never run), mixture-of-experts routing needs top-k <= experts, rotary parameters carry lists sized by the
head dimension (`mrope_section`, long-rope factors), special token ids must lie inside the shrunk vocabulary, and
vision backbones have per-stage lists. `tiny_config(model_type)` handles those, so a random checkpoint of any model
type is small, valid and still exercises what makes the architecture different:

- grouped-query attention: 4 query heads, 2 key/value heads (where the config has a key/value head count);
- sliding windows: a window of 4 tokens, shorter than the validation sequences and the generation prompts + new
  tokens, so the windowed mask is really applied;
- every distinct kind of layer (by `layer_types`, `no_rope_layers`, dense/MoE layer lists...) kept once;
- soft-capping, scaling multipliers and the like are left at their defaults (they do not depend on size).
"""

from __future__ import annotations

import copy
import math

VOCAB = 128
HIDDEN = 32
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 8
FFN = 48
MOE_FFN = 16
EXPERTS = 4
TOP_K = 2
POSITIONS = 128
WINDOW = 4
MAX_LAYERS = 4  # kept layers when the layer kinds differ (one of each kind, at least 2)
IMAGE = 32

# Attribute names, by what they size.
_HIDDEN = {"hidden_size", "d_model", "n_embd", "dim", "emb_dim", "d_embed", "word_embed_proj_dim", "embedding_dim",
           "attention_hidden_size", "lru_width", "hidden_dim_size", "d_latents"}
_EMBEDDING = {"embedding_size", "input_embedding_size", "output_embedding_size", "hidden_size_per_layer_input",
              "entity_emb_size", "embed_dim", "true_hidden_size", "intra_bottleneck_size", "ple_embed_dim",
              "proj_size", "pooler_hidden_size", "backbone_hidden_size", "projection_dim"}
_LAYERS = {"num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
           "num_decoder_layers", "num_encoder_layers", "num_blocks"}
_HEADS = {"num_attention_heads", "n_head", "n_heads", "encoder_attention_heads", "decoder_attention_heads",
          "num_heads", "swa_num_attention_heads", "num_self_attention_heads", "num_cross_attention_heads",
          "linear_num_value_heads", "linear_num_heads"}
_KV_HEADS = {"num_key_value_heads", "num_kv_heads", "multi_query_group_num", "num_query_groups",
             "linear_num_key_heads", "n_kv_heads", "swa_num_key_value_heads"}
_HEAD_DIMS = {"head_dim": HEAD_DIM, "d_kv": HEAD_DIM, "d_head": HEAD_DIM, "dim_head": HEAD_DIM,
              "attention_head_size": HEAD_DIM, "swa_head_dim": HEAD_DIM, "kv_channels": HEAD_DIM,
              "attention_head_dim": HEAD_DIM, "linear_key_head_dim": HEAD_DIM, "linear_value_head_dim": HEAD_DIM,
              "linear_head_dim": HEAD_DIM, "index_head_dim": HEAD_DIM, "mamba_d_head": HEAD_DIM,
              "mamba_head_dim": HEAD_DIM, "mamba_headdim": HEAD_DIM,
              # multi-head latent attention (DeepSeek V2/V3 style): q/k = nope + rope parts
              "qk_rope_head_dim": 4, "qk_nope_head_dim": 4, "qk_head_dim": 8, "v_head_dim": 8,
              "kv_lora_rank": 16, "q_lora_rank": 16, "o_lora_rank": 16}
_FFN_WORDS = ("intermediate", "ffn", "d_ff", "dim_ff", "dff", "feed_forward", "d_inner", "hidden_dim")
_EXPERT_COUNTS = {"num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_experts_total"}
_TOP_K = {"num_experts_per_tok", "moe_topk", "num_selected_experts", "moe_k", "top_k", "num_experts_per_token"}
_WINDOWS = {"sliding_window", "sliding_window_size", "local_attention", "attention_window", "window_size",
            "attention_window_size", "local_attention_window_len", "local_radius", "attention_chunk_size",
            "local_attn_chunk_length", "lsh_attn_chunk_length"}
_POSITIONS = {"max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "max_sequence_length",
              "max_encoder_position_embeddings", "max_decoder_position_embeddings", "max_target_positions",
              "max_source_positions", "context_length", "seq_length", "original_max_position_embeddings"}
_VOCABS = {"vocab_size", "src_vocab_size", "tgt_vocab_size", "decoder_vocab_size", "vocab_size_per_layer_input",
           "unpadded_vocab_size", "padded_vocab_size"}
# Layer-count thresholds: "the first N layers are dense", "layers from N on use a window"...
_THRESHOLDS = {"first_k_dense_replace", "max_window_layers", "moe_layer_start_index", "num_dense_layers",
               "first_dense_layers", "num_kv_shared_layers"}
_STAGE_LISTS = {"depths", "hidden_sizes", "num_heads", "embed_dims", "mlp_ratios", "strides", "sr_ratios",
                "patch_sizes", "kernel_sizes", "num_attention_heads", "focal_levels", "focal_windows",
                "sequence_reduction_ratios", "pretrained_window_sizes", "downsamples", "dims", "block_sizes",
                "block_repeats", "num_block_repeats", "expand_ratios", "in_channels", "out_channels",
                "depthwise_padding", "key_dim", "attention_ratio", "mlp_ratio", "down_ops", "neck_hidden_sizes",
                "n_attn_blocks", "base_attn_unit_dims", "patch_stride", "patch_padding", "query_stride",
                "masked_unit_attention", "stage_dims"}
_SPECIAL_IDS_KEEP_LOW = ("pad_token_id", "bos_token_id", "eos_token_id")
_NOT_CONFIG = {"model_type", "transformers_version", "_name_or_path", "architectures", "id2label", "label2id",
               "dtype", "torch_dtype", "_commit_hash", "_attn_implementation_autoset", "auto_map", "base_config_key"}

# Where a model type needs more than the generic rules (kept small; each says why).
OVERRIDES: dict[str, dict] = {
    # Swin-style windows must tile the 8x8 patch grid of a 32-pixel image: window 2 (stage 1 8x8, stage 2 4x4).
    "swin": dict(embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=2, patch_size=4, encoder_stride=8),
    "swinv2": dict(embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=2, patch_size=4, encoder_stride=8,
                   pretrained_window_sizes=[0, 0]),
    "donut-swin": dict(embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=2, patch_size=4),
    "convnext": dict(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, patch_size=4),
    "convnextv2": dict(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, patch_size=4),
    "dinov2": dict(patch_size=8, mlp_ratio=2),
    "dinov2_with_registers": dict(patch_size=8, mlp_ratio=2, num_register_tokens=2),
    # ModernBERT: local (windowed) attention every layer but each third; window 4 < validation lengths.
    "modernbert": dict(local_attention=4, global_attn_every_n_layers=2),
    # Relative attention with position buckets, as DeBERTa-v3 checkpoints use it.
    "deberta-v2": dict(relative_attention=True, position_buckets=8, max_relative_positions=-1,
                       pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", share_att_key=True,
                       position_biased_input=False),
    # Falcon 7B layout (multi-query attention: one key/value head, parallel attention + MLP).
    "falcon": dict(num_kv_heads=1, multi_query=True, new_decoder_architecture=False, parallel_attn=True),
    # Qwen2/Qwen3 real checkpoints do not use their sliding window; keep it off but short if switched on.
    "qwen2": dict(use_sliding_window=False),
    "qwen3": dict(use_sliding_window=False),
    # Checkpoints of these use a sliding window their default config leaves unset.
    "phi3": dict(sliding_window=WINDOW),
    "hiera": dict(depths=[1, 1], num_heads=[1, 2], embed_dim=16, num_query_pool=1, masked_unit_size=[8, 8],
                  query_stride=[2, 2], patch_stride=[4, 4], patch_size=[7, 7], patch_padding=[3, 3],
                  embed_dim_multiplier=2.0, num_head_multiplier=2.0, image_size=[64, 64]),
    # Dory's to_dict writes each layer as an attention block and an mlp block; the constructor takes layers.
    "dory": dict(num_hidden_layers=3, n_input_layers=1, n_recurrent_layers=1, n_output_layers=1,
                 layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    # Layout embeddings: LiLT splits the hidden size in six box parts, LayoutLMv3 in 4 coordinates + 2 shapes.
    "lilt": dict(hidden_size=48),
    "layoutlmv3": dict(coordinate_size=6, shape_size=4, input_size=32, patch_size=8),
    # LFM2 checkpoints interleave short-convolution layers with attention; the default config has attention only.
    "lfm2": dict(layer_types=["conv", "full_attention"], full_attn_idxs=[1]),
    "starcoder2": dict(sliding_window=WINDOW),
}


def tiny_config(model_type: str, **extra):
    """The default config of `model_type`, shrunk (see the module docstring); `extra` overrides the result."""
    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type)
    values = shrink(default.to_dict(), type(default))
    values.update(OVERRIDES.get(model_type, {}))
    values.update(extra)
    values.setdefault("num_labels", 2)
    try:
        return AutoConfig.for_model(model_type, **values)
    except Exception:  # noqa: BLE001 - a config class that refuses grouped-query attention: as many heads as queries
        if not any(key in values for key in _KV_HEADS) or any(key in extra for key in _KV_HEADS):
            raise
        return AutoConfig.for_model(model_type, **_without_gqa(values))


def _without_gqa(values: dict) -> dict:
    values = {k: _without_gqa(v) if isinstance(v, dict) else v for k, v in values.items()}
    for key in _KV_HEADS:
        if isinstance(values.get(key), int) and values[key] > 1:
            values[key] = HEADS
    return values


def shrink(values: dict, config_class=None) -> dict:
    """A config dict with its sizes made tiny; sub-config dicts are shrunk the same way."""
    values = {k: copy.deepcopy(v) for k, v in values.items() if k not in _NOT_CONFIG}
    vision = _is_vision(values)
    sub_configs = dict(getattr(config_class, "sub_configs", None) or {})
    for key, value in list(values.items()):
        if isinstance(value, dict) and (key in sub_configs or key.endswith("_config")) and key != "per_layer_config":
            sub_type = value.get("model_type")
            values[key] = {**shrink(value, _config_class(sub_configs.get(key), sub_type)),
                           **({"model_type": sub_type} if sub_type else {})}
    for key in ("stage_names", "out_features", "out_indices"):  # backbone outputs: derived again from the stages
        values.pop(key, None)
    _fill_unset(values)
    rope_is_head = values.get("qk_rope_head_dim") is not None and values.get("head_dim") == values["qk_rope_head_dim"]
    # latent attention (a compressed key/value) and other layouts with as many key/value heads as query heads
    same_heads = values.get("num_key_value_heads") is not None and \
        values.get("num_key_value_heads") == values.get("num_attention_heads") and "kv_lora_rank" in values
    _shrink_layers(values)
    _shrink_sizes(values, vision)
    if rope_is_head:  # multi-head latent attention whose rotary part is what `head_dim` names
        values["head_dim"] = values["qk_rope_head_dim"]
    if same_heads:
        values["num_key_value_heads"] = values["num_attention_heads"]
    if isinstance(values.get("per_layer_config"), dict):
        for overrides in values["per_layer_config"].values():
            if isinstance(overrides, dict):
                _shrink_sizes(overrides, vision, per_layer=True)
    if isinstance(values.get("attention_window"), list):
        values["attention_window"] = [WINDOW] * len(values["attention_window"])
    _shrink_mla(values)
    _shrink_special_ids(values)
    _shrink_rope(values)
    if vision:
        _shrink_vision(values)
    return values


def _fill_unset(values: dict) -> None:
    """Sizes a default config leaves unset (None) although the model needs them."""
    experts = any(isinstance(values.get(k), int) and values[k] > 1 for k in _EXPERT_COUNTS) or \
        isinstance(values.get("moe_intermediate_size"), int)
    fill = {"vocab_size": VOCAB, "head_dim": HEAD_DIM, "num_key_value_heads": KV_HEADS,
            **({"moe_intermediate_size": MOE_FFN, "num_experts_per_tok": TOP_K, "n_routed_experts": EXPERTS,
                "num_experts": EXPERTS, "n_shared_experts": 1} if experts else {})}
    for key, value in fill.items():
        if key in values and values[key] is None:
            values[key] = value


def _config_class(declared, model_type: str | None):
    """The class of a sub-config: the declared one, or the one its model_type names (for AutoConfig slots)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if declared is not None and declared is not AutoConfig:
        return declared
    try:
        return CONFIG_MAPPING[model_type] if model_type else None
    except KeyError:
        return None


def _shrink_sizes(values: dict, vision: bool, per_layer: bool = False) -> None:
    """Size attributes made small, by name (see the sets above)."""
    for key, value in list(values.items()):
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if key in _HIDDEN and value > HIDDEN:
            values[key] = HIDDEN
        elif key in _EMBEDDING and value > HIDDEN:
            values[key] = HIDDEN if not vision or key != "embed_dim" else 16
        elif key in _HEADS:
            values[key] = HEADS
        elif key in _KV_HEADS and value > 0:
            values[key] = 1 if value == 1 else KV_HEADS
        elif key in _HEAD_DIMS and value > 0:
            values[key] = _HEAD_DIMS[key] * (2 if per_layer and key == "head_dim" else 1)
        elif key in _EXPERT_COUNTS and value > 1:
            values[key] = EXPERTS
        elif key in _TOP_K and value > 0:
            values[key] = min(value, TOP_K)
        elif key in ("n_group", "topk_group", "num_expert_group"):
            values[key] = 1
        elif key in ("n_shared_experts", "num_shared_experts", "moe_num_shared_experts") and value > 1:
            values[key] = 1
        elif "moe" in key and "intermediate" in key or "expert" in key and ("intermediate" in key or "ffn" in key):
            values[key] = MOE_FFN if value > MOE_FFN else value
        elif any(word in key for word in _FFN_WORDS) and value > FFN and not vision:
            values[key] = FFN
        elif key in _VOCABS and value > VOCAB:
            values[key] = VOCAB
        elif key in _POSITIONS and value > POSITIONS:
            values[key] = POSITIONS
        elif key in _WINDOWS and value > WINDOW and not vision:
            values[key] = WINDOW
        elif key in ("rotary_dim", "rotary_emb_dim") and value > HEAD_DIM // 2:
            values[key] = HEAD_DIM // 2
        elif key == "query_pre_attn_scalar":
            values[key] = HEAD_DIM
        elif key in ("mamba_d_state", "ssm_state_size", "state_size", "d_state") and value > 8:
            values[key] = 8
        elif key in ("mamba_n_heads", "mamba_num_heads") and value > 0:
            values[key] = HEADS
        elif key in ("time_step_rank", "mamba_dt_rank") and value > 8:
            values[key] = 8
        elif key in ("index_n_heads",):
            values[key] = 2
        elif key in ("index_topk",) and value > 4:
            values[key] = 4
        elif key in ("mamba_chunk_size", "chunk_size") and value > 16:
            values[key] = 16
        elif "vocab" in key and value > VOCAB:  # entity, pronunciation, byte-group vocabularies...
            values[key] = VOCAB


def _is_vision(values: dict) -> bool:
    return "image_size" in values and "num_channels" in values and "vocab_size" not in values


def _layer_count_key(values: dict) -> str | None:
    return next((k for k in ("num_hidden_layers", "num_layers", "n_layer", "n_layers") if
                 isinstance(values.get(k), int) and not isinstance(values.get(k), bool)), None)


def _shrink_layers(values: dict) -> None:
    """Fewer layers, keeping one layer of each kind and every per-layer list and layer index consistent."""
    for key in ("encoder_layers", "decoder_layers", "num_decoder_layers", "num_encoder_layers"):
        if isinstance(values.get(key), int) and values[key] > 2:
            values[key] = 2
    count_key = _layer_count_key(values)
    if count_key is None:
        return
    total = values[count_key]
    index_lists = {k: v for k, v in values.items() if isinstance(v, list) and v
                   and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < total for i in v)
                   and any(word in k for word in ("layer", "idx", "ids", "indices")) and len(set(v)) == len(v)
                   and (len(v) < total or v == list(range(total)))}
    per_layer = {k: v for k, v in values.items() if isinstance(v, list) and len(v) == total and total > 1
                 and k not in index_lists and k not in _STAGE_LISTS
                 and k not in ("eos_token_id", "stage_names", "out_features", "out_indices", "begin_suppress_tokens")}
    thresholds = {k: v for k, v in values.items() if k in _THRESHOLDS and isinstance(v, int)
                  and not isinstance(v, bool)}
    steps = {k: v for k, v in values.items() if k in ("decoder_sparse_step", "interleave_moe_layer_step",
                                                         "moe_layer_freq", "global_attn_every_n_layers",
                                                         "no_rope_layer_interval", "sliding_window_pattern",
                                                         "_sliding_window_pattern")
             and isinstance(v, int) and not isinstance(v, bool) and v > 1}

    overrides = values.get("per_layer_config") if isinstance(values.get("per_layer_config"), dict) else {}
    by_layer = {int(k): v for k, v in overrides.items() if str(k).isdigit()}

    def signature(i: int) -> tuple:
        return (tuple(_hashable(v[i]) for v in per_layer.values()) + tuple(i in v for v in index_lists.values())
                + tuple(i < v for v in thresholds.values()) + tuple((i + 1) % v == 0 for v in steps.values())
                + (repr(sorted(by_layer[i].items())) if i in by_layer else "",))

    keep: list[int] = []
    seen = set()
    for i in range(total):
        if signature(i) not in seen:
            seen.add(signature(i))
            keep.append(i)
    keep = keep[:MAX_LAYERS]
    for i in range(total):
        if len(keep) >= min(2, total):
            break
        if i not in keep:
            keep.append(i)
    keep.sort()
    if len(keep) == total:
        return
    values[count_key] = len(keep)
    for key, value in per_layer.items():
        values[key] = [value[i] for i in keep]
    for key, value in index_lists.items():
        values[key] = [keep.index(i) for i in value if i in keep]
    for key, value in thresholds.items():
        values[key] = sum(1 for i in keep if i < value) if key != "num_kv_shared_layers" else \
            sum(1 for i in keep if i >= total - value)
    for key, value in steps.items():
        # a pattern "every n-th layer" over the kept layers: keep it only if it still marks a layer
        values[key] = min(value, len(keep))
    if overrides:
        width = max(len(str(k)) for k in overrides)
        values["per_layer_config"] = {str(keep.index(i)).zfill(width): v for i, v in by_layer.items() if i in keep}


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _shrink_mla(values: dict) -> None:
    """Multi-head latent attention: the q/k head is its no-rope part plus its rope part."""
    if "qk_rope_head_dim" in values and "qk_nope_head_dim" in values and "qk_head_dim" in values:
        values["qk_head_dim"] = values["qk_rope_head_dim"] + values["qk_nope_head_dim"]
    if values.get("q_lora_rank") is None and "q_lora_rank" in values:
        values["q_lora_rank"] = None


def _shrink_special_ids(values: dict) -> None:
    """Special token ids inside the shrunk vocabulary, below the ids random inputs use (5 and up)."""
    vocab = values.get("vocab_size")
    if not isinstance(vocab, int):
        return
    low = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if values.get("pad_token_id", 0) is None:  # sequence classification of a batch finds each row's end by it
        values["pad_token_id"] = 0
    if values.get("is_encoder_decoder") and values.get("decoder_start_token_id") is None:
        values["decoder_start_token_id"] = values.get("pad_token_id") or 0  # generate() needs one
    spare = iter(range(3, 5))
    for key, value in list(values.items()):
        if not (key.endswith("_token_id") or key.endswith("_token_index") or key.endswith("_token_ids")):
            continue
        if isinstance(value, list):
            values[key] = [v if v < vocab else low.get(key, 2) for v in value if isinstance(v, int)] or None
        elif isinstance(value, int) and not isinstance(value, bool) and value >= vocab:
            values[key] = low[key] if key in low else next(spare, 4)


def _shrink_rope(values: dict) -> None:
    params = values.get("rope_parameters")
    if not isinstance(params, dict):
        return
    head_dim = values.get("head_dim") or (values.get("hidden_size", HIDDEN) // max(values.get("num_attention_heads")
                                                                                   or HEADS, 1))
    if isinstance(values.get("qk_rope_head_dim"), int):
        head_dim = values["qk_rope_head_dim"]
    if all(isinstance(v, dict) for v in params.values()) and params:
        values["rope_parameters"] = {k: _shrink_rope_dict(dict(v), head_dim, values) for k, v in params.items()}
    else:
        values["rope_parameters"] = _shrink_rope_dict(dict(params), head_dim, values)


def _shrink_rope_dict(params: dict, head_dim: int, values: dict) -> dict:
    factor = params.get("partial_rotary_factor", values.get("partial_rotary_factor", 1.0)) or 1.0
    if int(head_dim * factor) % 4 and values.get("head_dim") == head_dim:  # rotate at least 4 dims: a wider head
        head_dim = values["head_dim"] = max(HEAD_DIM, math.ceil(4 / factor))
    rotary = max(2, int(head_dim * factor) // 2 * 2)
    half = rotary // 2
    for key in ("short_factor", "long_factor"):
        if isinstance(params.get(key), list):
            params[key] = [1.0 + 0.1 * i for i in range(half)] if key == "long_factor" else [1.0] * half
    if isinstance(params.get("mrope_section"), list):
        sections = params["mrope_section"]
        scaled = [max(1, math.floor(s * half / sum(sections))) for s in sections]
        scaled[0] += half - sum(scaled)
        params["mrope_section"] = scaled
    if isinstance(params.get("original_max_position_embeddings"), int):
        params["original_max_position_embeddings"] = min(params["original_max_position_embeddings"], 64)
    return params


def _shrink_vision(values: dict) -> None:
    image = values.get("image_size")
    values["image_size"] = [IMAGE, IMAGE] if isinstance(image, (list, tuple)) else IMAGE
    stages = values.get("depths")
    if isinstance(stages, list) and len(stages) > 2:
        count = len(stages)
        for key, value in list(values.items()):
            if key in _STAGE_LISTS and isinstance(value, list) and len(value) == count:
                values[key] = value[:2]
        values["depths"] = [1, 1]
        for key in ("num_stages", "num_encoder_blocks"):
            if key in values:
                values[key] = 2
    if isinstance(values.get("hidden_sizes"), list):
        values["hidden_sizes"] = [16 * 2**i for i in range(len(values["hidden_sizes"]))]
    if isinstance(values.get("num_heads"), list):
        values["num_heads"] = [2 * 2**i for i in range(len(values["num_heads"]))]
    if isinstance(values.get("embed_dims"), list):
        values["embed_dims"] = [16 * 2**i for i in range(len(values["embed_dims"]))]
    if isinstance(values.get("patch_size"), int) and values["patch_size"] > 8:
        values["patch_size"] = 8
    if values.get("encoder_stride") and isinstance(values.get("patch_size"), int):
        values["encoder_stride"] = values["patch_size"]
