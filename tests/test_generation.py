"""Generation parity: decoding with the exported artifacts alone reproduces generate() (GPT-2 and T5)."""

import json

import pytest

from bot.checkpoint import load_model, open_checkpoint
from bot.generation import NEW_TOKENS, check_generation
from bot.job import Job, make_options
from bot.pipeline import run_export
from tests.tiny import build_checkpoint


@pytest.fixture(scope="module")
def lively(tmp_path_factory):
    """Checkpoints with wide weights, so greedy decoding yields varied tokens rather than one repeated token."""
    root = tmp_path_factory.mktemp("lively")
    return {key: build_checkpoint(root / "-".join(key), *key, lively=True)
            for key in [("gpt2", "causal-lm"), ("t5", "seq2seq-lm")]}


@pytest.mark.parametrize("model_type, feature, graphs", [
    ("gpt2", "causal-lm-with-past", 1), ("gpt2", "causal-lm", 1), ("t5", "seq2seq-lm-with-past", 3),
])
def test_greedy_decoding_with_the_artifacts_matches_generate(lively, tmp_path, model_type, feature, graphs):
    path = lively[(model_type, feature.replace("-with-past", ""))]
    result = run_export(Job(model=str(path), output_dir=tmp_path, options=make_options([feature])))
    assert result.ok, [(f.component, f.format, f.error) for f in result.failures]
    assert len(result.artifacts) == 2 * graphs
    manifest = json.loads((tmp_path / "export_manifest.json").read_text())
    for artifact in manifest["artifacts"]:
        generation = artifact["validation"]["generation"]
        assert generation["passed"] and generation["actual"] == generation["expected"]
        assert len(generation["expected"]) == NEW_TOKENS and len(set(generation["expected"])) > 1


def test_a_miswired_cache_fails_the_check(lively):
    """Presents fed back under each other's names: every output check would pass, decoding does not."""
    checkpoint = open_checkpoint(lively[("gpt2", "causal-lm")], "tiny")
    model, _ = load_model(checkpoint, "causal-lm")
    import torch

    from bot.specs.decoder import WithPast

    wrapper = WithPast(model, ["logits"]).eval()
    layers = model.config.n_layer
    names = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]

    def call(component, named):
        past = [torch.from_numpy(named[n]) for n in names]
        past = past[2:] + past[:2]  # layer 0's cache handed to layer 1 and back
        with torch.no_grad():
            out = wrapper(torch.from_numpy(named["input_ids"]), torch.from_numpy(named["attention_mask"]), *past)
        presents = {n.replace("past_key_values.", "present."): t.numpy() for n, t in zip(names, out[1:])}
        return {"logits": out[0].numpy(), **presents}

    dims = {n: (1, model.config.n_head, "past_sequence", model.config.n_embd // model.config.n_head) for n in names}
    check = check_generation(model, "causal-lm-with-past", call, {"model": dims})
    assert not check.passed and check.actual != check.expected
    assert len(check.expected) == NEW_TOKENS
