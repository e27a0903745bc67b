"""bot.tinyconfig shrinks a config the way its model type requires, keeping what makes the architecture different."""

import pytest

from bot.generation import NEW_TOKENS, PROMPT_LENGTHS
from bot.tinyconfig import shrink, tiny_config


def test_layer_kinds_are_kept_once_each_with_lists_of_the_right_length():
    gemma3 = tiny_config("gemma3_text")  # five sliding layers per full one in the default config
    assert gemma3.num_hidden_layers == len(gemma3.layer_types) == 2
    assert set(gemma3.layer_types) == {"sliding_attention", "full_attention"}
    assert set(gemma3.rope_parameters) == {"sliding_attention", "full_attention"}
    smollm3 = tiny_config("smollm3")  # every fourth layer without rotary embeddings
    assert len(smollm3.no_rope_layers) == smollm3.num_hidden_layers and set(smollm3.no_rope_layers) == {0, 1}
    deepseek = tiny_config("deepseek_v3")  # the first layers dense, then experts
    assert deepseek.first_k_dense_replace == 1 and deepseek.num_hidden_layers == 2


@pytest.mark.parametrize("model_type", ["mistral", "gemma2", "gemma3_text", "starcoder2", "phi3"])
def test_sliding_windows_are_shorter_than_what_validation_decodes(model_type):
    config = tiny_config(model_type)
    assert 0 < config.sliding_window < max(PROMPT_LENGTHS) + NEW_TOKENS
    assert config.sliding_window < 9  # the longest validated past


def test_grouped_query_attention_soft_capping_and_experts_are_exercised():
    for model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "smollm3", "granite"):
        config = tiny_config(model_type)
        assert config.num_key_value_heads < config.num_attention_heads, model_type
    gemma2 = tiny_config("gemma2")
    assert gemma2.final_logit_softcapping and gemma2.attn_logit_softcapping
    for model_type in ("qwen2_moe", "qwen3_moe", "mixtral"):
        config = tiny_config(model_type)
        experts = getattr(config, "num_experts", None) or config.num_local_experts
        assert 1 < config.num_experts_per_tok < experts <= 4


def test_special_tokens_and_rope_sections_fit_the_shrunk_sizes():
    modernbert = tiny_config("modernbert")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"):
        assert getattr(modernbert, name) < 5  # below the ids random inputs use
    qwen2_vl = shrink({"hidden_size": 3584, "num_attention_heads": 28, "vocab_size": 152064,  # a real checkpoint's
                       "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24]}})
    head_dim = qwen2_vl["hidden_size"] // qwen2_vl["num_attention_heads"]
    assert sum(qwen2_vl["rope_parameters"]["mrope_section"]) == head_dim // 2
    phi3 = shrink({"hidden_size": 3072, "num_attention_heads": 32, "vocab_size": 32064, "rope_parameters": {
        "rope_type": "longrope", "partial_rotary_factor": 0.75, "short_factor": [1.0] * 48, "long_factor": [2.0] * 48}})
    rotary = int(phi3["hidden_size"] // phi3["num_attention_heads"] * 0.75)
    assert len(phi3["rope_parameters"]["short_factor"]) == len(phi3["rope_parameters"]["long_factor"]) == rotary // 2


def test_vision_backbones_keep_consistent_stages():
    swin = tiny_config("swin")
    assert swin.image_size == 32 and len(swin.depths) == len(swin.num_heads) == 2
    assert swin.image_size // swin.patch_size % swin.window_size == 0
    convnext = tiny_config("convnext")
    assert convnext.num_stages == len(convnext.hidden_sizes) == len(convnext.depths) == 2
    assert convnext.stage_names == ["stem", "stage1", "stage2"]
