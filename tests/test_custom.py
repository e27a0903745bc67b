"""Custom architectures (--spec, entry points) and the generic family try for unregistered model types."""

import json

import pytest
from transformers import AutoConfig, ErnieModel

from bot import custom
from bot.cli import main
from bot.errors import UsageError
from bot.features import SUPPORT


@pytest.fixture
def ernie(tmp_path):
    assert "ernie" not in SUPPORT, "the custom-architecture tests need a model type the registry does not ship"
    config = AutoConfig.for_model("ernie", vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=37, max_position_embeddings=64)
    ErnieModel(config).save_pretrained(tmp_path / "ernie")
    yield tmp_path / "ernie"
    SUPPORT.pop("ernie", None)


def test_spec_option_registers_and_exports_a_custom_architecture(ernie, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["export", "--model", str(ernie), "--spec", "tests.custom_arch:ERNIE", "--exporter", "torchscript",
                 str(out)])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "export_manifest.json").read_text())
    assert manifest["source"]["support"] == "custom"
    assert [a["inputs"] for a in manifest["artifacts"]] == [["input_ids", "attention_mask"]] * 2


def test_entry_points_register_architectures(monkeypatch):
    class EntryPoint:
        name = "ernie"

        def load(self):
            from tests.custom_arch import ERNIE

            return [ERNIE]

    monkeypatch.setattr(custom.metadata, "entry_points", lambda group: [EntryPoint()])
    try:
        assert custom.resolve_support("ernie").origin == "custom"
    finally:
        SUPPORT.pop("ernie", None)


def test_bad_spec_references_are_usage_errors():
    with pytest.raises(UsageError, match="module:object"):
        custom.load_spec("no_colon_here")
    with pytest.raises(UsageError, match="could not be loaded"):
        custom.load_spec("tests.custom_arch:MISSING")
    with pytest.raises(UsageError, match="must be a bot.custom.Architecture"):
        custom.load_spec("tests.custom_arch:ErnieSpec")


def test_an_unregistered_model_type_gets_its_generic_family(ernie, tmp_path, capsys):
    support = custom.resolve_support("ernie")
    assert (support.family, support.origin) == ("text-encoder", "generic")
    assert {"default", "masked-lm", "sequence-classification"} <= set(support.features)
    out = tmp_path / "out"
    assert main(["export", "--model", str(ernie), "--exporter", "torchscript", str(out)]) == 0, capsys.readouterr()
    manifest = json.loads((out / "export_manifest.json").read_text())
    assert manifest["source"]["support"] == "generic" and manifest["status"] == "complete"
    capsys.readouterr()
    assert main(["features", "ernie", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["origin"] == "generic"


def test_decoder_family_is_inferred_for_modern_llms():
    assert custom.generic_family("llama") == "decoder"
    assert custom.generic_family("ernie") == "text-encoder"
    assert custom.generic_family("pegasus") == "seq2seq"
