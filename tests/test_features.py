"""The feature registry: names, synonyms, the support table and the registration API."""

import pytest

from bot.errors import UsageError
from bot.custom import resolve_support
from bot.features import FEATURES, SUPPORT, normalize_feature, register

ISSUE_FAMILIES = {
    "text-encoder": {"albert", "bert", "big_bird", "camembert", "convbert", "data2vec-text", "distilbert", "electra",
                     "flaubert", "ibert", "layoutlm", "mobilebert", "roberta", "roformer", "squeezebert", "xlm",
                     "xlm-roberta", "xlm-roberta-xl"},
    "vision": {"vit", "deit", "beit", "data2vec-vision"},
}


@pytest.mark.parametrize("name, expected", [
    ("default", "default"), ("feature-extraction", "default"), ("fill-mask", "masked-lm"),
    ("text-classification", "sequence-classification"), ("Sequence_Classification", "sequence-classification"),
    ("text-generation", "causal-lm"), ("masked-im", "masked-im"), ("image-classification", "image-classification"),
])
def test_seed_names_and_task_synonyms_are_accepted(name, expected):
    assert normalize_feature(name) == expected


def test_unknown_feature_names_the_choices():
    with pytest.raises(UsageError, match="unknown feature 'summarize'.*choose from default"):
        normalize_feature("summarize")


def test_every_encoder_and_vision_architecture_is_registered():
    for family, model_types in ISSUE_FAMILIES.items():
        for model_type in model_types:
            assert SUPPORT[model_type].family == family, model_type
            assert "default" in SUPPORT[model_type].features


def test_unknown_architecture_says_how_to_proceed():
    with pytest.raises(UsageError, match="unsupported architecture 'resnet'.*--spec module:object"):
        resolve_support("resnet")  # a convolutional network: no family fits


def test_register_adds_a_model_type_and_rejects_unknown_features():
    try:
        support = register("my-encoder", "text-encoder", ["default"])
        assert resolve_support("my-encoder") is support and support.origin == "custom"
        with pytest.raises(UsageError, match="unknown feature"):
            register("my-encoder", "text-encoder", ["summarize"])
    finally:
        SUPPORT.pop("my-encoder", None)
    assert set(FEATURES) >= {"default", "masked-lm", "sequence-classification", "question-answering"}
