"""Opening checkpoints safely and deciding which features a checkpoint really supports."""

import json

import pytest
import torch

from bot import checkpoint as ckpt
from bot.errors import UnsafeCheckpointError, UsageError


def test_a_head_checkpoint_supports_its_head_and_the_base_model_only(tiny):
    checkpoint = ckpt.open_checkpoint(tiny("bert", "masked-lm"), "tiny")
    supported, skipped = ckpt.probe_features(checkpoint)
    assert supported == ["default", "masked-lm"]
    # causal-lm would load the same prediction head without new weights, but it was trained for another task
    assert "another task" in skipped["causal-lm"]
    assert "another task" in skipped["sequence-classification"]


def test_without_a_known_head_class_stored_weights_decide(tmp_path):
    from transformers import BertForPreTraining

    from tests.tiny import tiny_config

    BertForPreTraining(tiny_config("bert")).save_pretrained(tmp_path)  # architectures: BertForPreTraining
    supported, skipped = ckpt.probe_features(ckpt.open_checkpoint(tmp_path, "pretraining"))
    assert {"default", "masked-lm", "causal-lm"} <= set(supported)
    assert skipped["sequence-classification"].startswith("head weights not in checkpoint; would be random")


def test_base_model_of_a_poolerless_head_checkpoint_is_loaded_without_pooler(tiny):
    checkpoint = ckpt.open_checkpoint(tiny("bert", "token-classification"), "tiny")
    loaded = ckpt.load_for_feature(checkpoint, "default")
    assert loaded.missing == [] and loaded.load_kwargs == {"add_pooling_layer": False}
    assert loaded.model.pooler is None


def test_primary_feature_follows_config_architectures(tiny):
    assert ckpt.plan_features(ckpt.open_checkpoint(tiny("bert", "sequence-classification"), "t"), None).primary \
        == "sequence-classification"
    assert ckpt.plan_features(ckpt.open_checkpoint(tiny("bert"), "t"), None).primary == "default"
    assert ckpt.plan_features(ckpt.open_checkpoint(tiny("vit", "image-classification"), "t"), None).primary \
        == "image-classification"


def test_remote_code_is_refused(tiny_copy):
    path = tiny_copy("bert")
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeCheckpointError, match="custom code is not executed"):
        ckpt.open_checkpoint(path, "evil")


def test_pickle_weights_need_explicit_permission_and_load_weights_only(tiny_copy):
    path = tiny_copy("bert")
    from safetensors.torch import load_file

    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    with pytest.raises(UnsafeCheckpointError, match="--allow-pickle"):
        ckpt.open_checkpoint(path, "pickled")
    checkpoint = ckpt.open_checkpoint(path, "pickled", allow_pickle=True)
    assert checkpoint.uses_pickle and ckpt.load_for_feature(checkpoint, "default").missing == []


class Payload:
    """A pickle that would run a command when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_not_executed_even_when_pickle_is_allowed(tiny_copy, tmp_path):
    path = tiny_copy("bert")
    (path / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"weight": Payload(marker)}, path / "pytorch_model.bin")
    checkpoint = ckpt.open_checkpoint(path, "evil", allow_pickle=True)
    with pytest.raises(UsageError, match="could not be loaded"):
        ckpt.load_for_feature(checkpoint, "default")
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (None, "no config.json"), ("{not json", "unreadable config"), ('{"hidden_size": 3}', "no model_type"),
])
def test_bad_configs_are_usage_errors(tiny_copy, content, message):
    path = tiny_copy("bert")
    if content is None:
        (path / "config.json").unlink()
    else:
        (path / "config.json").write_text(content)
    with pytest.raises(UsageError, match=message):
        ckpt.open_checkpoint(path, "bad")


def test_source_files_are_hashed_and_outputs_ignored(tiny_copy):
    path = tiny_copy("bert")
    (path / "onnx").mkdir()
    (path / "onnx" / "model.onnx").write_bytes(b"x")
    (path / "README.md").write_text("card")
    hashes = ckpt.hash_source_files(path)
    assert set(hashes) == {"config.json", "model.safetensors"}
    assert ckpt.select_source_files(["model.safetensors", "pytorch_model.bin", "onnx/model.onnx", "vocab.txt"]) \
        == ["model.safetensors", "vocab.txt"]


def test_biases_missing_from_the_checkpoint_start_at_zero(tiny):
    """transformers allocates data2vec-text's masked-LM bias without initialising it: whatever the memory held (once
    1.9e38, making the random head's logits infinite and its validation fail at random)."""
    checkpoint = ckpt.open_checkpoint(tiny("data2vec-text"), "tiny")
    model, missing = ckpt.load_model(checkpoint, "masked-lm")
    assert {"lm_head.bias", "lm_head.decoder.bias"} <= set(missing)
    assert [name for name, p in model.named_parameters(remove_duplicate=False)
            if name in missing and name.endswith(".bias") and p.abs().max() != 0] == []
    logits = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert torch.isfinite(logits).all()
