"""Features (export tasks): their names, synonyms, auto classes, and which model types support which.

This is what `transformers.onnx.features.FeaturesManager` used to be. The table lists the features a model type
*can* have; whether a given checkpoint really has the head weights for one is decided in `checkpoint.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.errors import UsageError


@dataclass(frozen=True)
class Feature:
    """An export task: the auto class that builds the model for it and whether it carries a key/value cache."""

    name: str
    auto_class: str
    mapping: str  # the transformers MODEL_*_MAPPING_NAMES dict: model type -> class name(s), importable for free
    synonyms: tuple[str, ...] = ()

    @property
    def with_past(self) -> bool:
        return self.name.endswith("-with-past")


FEATURES: dict[str, Feature] = {
    f.name: f
    for f in [
        Feature("default", "AutoModel", "MODEL_MAPPING_NAMES", ("feature-extraction",)),
        Feature("default-with-past", "AutoModel", "MODEL_MAPPING_NAMES", ("feature-extraction-with-past",)),
        Feature("masked-lm", "AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES", ("fill-mask",)),
        Feature("causal-lm", "AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", ("text-generation",)),
        Feature("causal-lm-with-past", "AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
                ("text-generation-with-past",)),
        Feature("seq2seq-lm", "AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
                ("text2text-generation",)),
        Feature("seq2seq-lm-with-past", "AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
                ("text2text-generation-with-past",)),
        Feature("sequence-classification", "AutoModelForSequenceClassification",
                "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", ("text-classification",)),
        Feature("token-classification", "AutoModelForTokenClassification",
                "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", ("ner",)),
        Feature("question-answering", "AutoModelForQuestionAnswering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"),
        Feature("multiple-choice", "AutoModelForMultipleChoice", "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES"),
        Feature("image-classification", "AutoModelForImageClassification",
                "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
        Feature("masked-im", "AutoModelForMaskedImageModeling", "MODEL_FOR_MASKED_IMAGE_MODELING_MAPPING_NAMES",
                ("masked-image-modeling",)),
    ]
}

_SYNONYMS = {s: f.name for f in FEATURES.values() for s in f.synonyms}

_TEXT_ENCODER = ("default", "masked-lm", "sequence-classification", "multiple-choice", "token-classification",
                 "question-answering")
_TEXT_ENCODER_CLM = _TEXT_ENCODER[:2] + ("causal-lm",) + _TEXT_ENCODER[2:]


@dataclass(frozen=True)
class ModelSupport:
    """What the registry knows about one model type: its family (which export spec applies) and its features."""

    model_type: str
    family: str
    features: tuple[str, ...]
    name: str  # the architecture's display name, as in the seed list
    origin: str = "registry"  # "registry", "custom" (registered by a user) or "generic"


SUPPORT: dict[str, ModelSupport] = {}


def register(model_type: str, family: str, features: tuple[str, ...] | list[str], name: str | None = None,
             origin: str = "custom") -> ModelSupport:
    """Add or replace a model type in the registry; the public way to support an architecture we do not ship."""
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise UsageError(f"cannot register {model_type!r}: unknown feature(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(FEATURES)}")
    support = ModelSupport(model_type, family, tuple(features), name or model_type, origin)
    SUPPORT[model_type] = support
    return support


for _model_type, _name, _features in [
    ("albert", "ALBERT", _TEXT_ENCODER),
    ("bert", "BERT", _TEXT_ENCODER_CLM),
    ("big_bird", "BigBird", _TEXT_ENCODER_CLM),
    ("camembert", "CamemBERT", _TEXT_ENCODER_CLM),
    ("convbert", "ConvBERT", _TEXT_ENCODER),
    ("data2vec-text", "Data2VecText", _TEXT_ENCODER_CLM),
    ("distilbert", "DistilBERT", _TEXT_ENCODER),
    ("electra", "ELECTRA", _TEXT_ENCODER_CLM),
    ("flaubert", "FlauBERT", _TEXT_ENCODER_CLM),
    ("ibert", "I-BERT", _TEXT_ENCODER),
    ("layoutlm", "LayoutLM", ("default", "masked-lm", "sequence-classification", "token-classification")),
    ("mobilebert", "MobileBERT", _TEXT_ENCODER),
    ("roberta", "RoBERTa", _TEXT_ENCODER_CLM),
    ("roformer", "RoFormer", _TEXT_ENCODER_CLM),
    ("squeezebert", "SqueezeBERT", _TEXT_ENCODER),
    ("xlm", "XLM", _TEXT_ENCODER_CLM),
    ("xlm-roberta", "XLM-RoBERTa", _TEXT_ENCODER_CLM),
    ("xlm-roberta-xl", "XLM-RoBERTa-XL", _TEXT_ENCODER_CLM),
]:
    register(_model_type, "text-encoder", _features, _name, origin="registry")

for _model_type, _name, _features in [  # current encoders (ModernBERT: local attention on two layers in three)
    ("modernbert", "ModernBERT", _TEXT_ENCODER),
    ("deberta-v2", "DeBERTa-v2", _TEXT_ENCODER),
    ("mpnet", "MPNet", _TEXT_ENCODER),
]:
    register(_model_type, "text-encoder", _features, _name, origin="registry")

for _model_type, _name, _features in [
    ("vit", "ViT", ("default", "image-classification", "masked-im")),
    ("deit", "DeiT", ("default", "image-classification", "masked-im")),
    ("beit", "BEiT", ("default", "image-classification")),
    ("data2vec-vision", "Data2VecVision", ("default", "image-classification")),
    ("swin", "Swin Transformer", ("default", "image-classification", "masked-im")),
    ("convnext", "ConvNeXT", ("default", "image-classification")),
    ("dinov2", "DINOv2", ("default", "image-classification")),
]:
    register(_model_type, "vision", _features, _name, origin="registry")

_DECODER = ("default", "default-with-past", "causal-lm", "causal-lm-with-past")
for _model_type, _name, _features in [
    ("gpt2", "OpenAI GPT-2", _DECODER + ("sequence-classification", "token-classification")),
    ("gpt_neo", "GPT Neo", _DECODER + ("sequence-classification",)),
    ("gptj", "GPT-J", _DECODER + ("question-answering", "sequence-classification")),
]:
    register(_model_type, "decoder", _features, _name, origin="registry")

# Current decoder-only language models. Grouped-query attention, sliding windows (Mistral, Gemma 2/3, Starcoder2,
# Phi-3: the cache stays whole, the window is in the mask), logit soft-capping (Gemma 2), mixtures of experts (Qwen MoE)
# and layers without rotary embeddings (SmolLM3) all export through the decoder family's spec.
_HEADS = {"seq": ("sequence-classification",), "tok": ("token-classification",), "qa": ("question-answering",)}
for _model_type, _name, _heads in [
    ("llama", "Llama", ("seq", "tok", "qa")),
    ("mistral", "Mistral", ("seq", "tok", "qa")),
    ("qwen2", "Qwen2", ("seq", "tok", "qa")),
    ("qwen3", "Qwen3", ("seq", "tok", "qa")),
    ("qwen2_moe", "Qwen2MoE", ("seq", "tok", "qa")),
    ("qwen3_moe", "Qwen3MoE", ("seq", "tok", "qa")),
    ("gemma", "Gemma", ("seq", "tok")),
    ("gemma2", "Gemma2", ("seq", "tok")),
    ("gemma3_text", "Gemma3 (text)", ("seq",)),
    ("phi3", "Phi-3", ("seq", "tok")),
    ("smollm3", "SmolLM3", ("seq", "tok", "qa")),
    ("granite", "Granite", ()),
    ("olmo2", "OLMo2", ("seq",)),
    ("starcoder2", "Starcoder2", ("seq", "tok")),
    ("stablelm", "StableLM", ("seq", "tok")),
    ("cohere", "Cohere", ()),
    ("falcon", "Falcon", ("seq", "tok", "qa")),
]:
    register(_model_type, "decoder", _DECODER + tuple(f for h in _heads for f in _HEADS[h]), _name,
             origin="registry")

_SEQ2SEQ = ("default", "default-with-past", "seq2seq-lm", "seq2seq-lm-with-past")
_SEQ2SEQ_CLM = _SEQ2SEQ + ("causal-lm", "causal-lm-with-past")
for _model_type, _name, _features in [
    ("t5", "T5", _SEQ2SEQ),
    ("bart", "BART", _SEQ2SEQ_CLM + ("sequence-classification", "question-answering")),
    ("mbart", "mBART", _SEQ2SEQ_CLM + ("sequence-classification", "question-answering")),
    ("marian", "Marian", _SEQ2SEQ_CLM),
    ("m2m_100", "M2M100", _SEQ2SEQ),
    ("blenderbot", "Blenderbot", _SEQ2SEQ_CLM),
    ("blenderbot-small", "BlenderbotSmall", _SEQ2SEQ_CLM),
    ("plbart", "PLBart", _SEQ2SEQ_CLM + ("sequence-classification",)),
    ("bigbird_pegasus", "BigBird-Pegasus", _SEQ2SEQ_CLM + ("sequence-classification", "question-answering")),
]:
    register(_model_type, "seq2seq", _features, _name, origin="registry")

register("perceiver", "perceiver", ("masked-lm", "sequence-classification", "image-classification"), "Perceiver",
         origin="registry")


def normalize_feature(name: str) -> str:
    """Map a seed feature name or a pipeline-task synonym to the canonical feature name."""
    key = name.strip().lower().replace("_", "-")
    if key in FEATURES:
        return key
    if key in _SYNONYMS:
        return _SYNONYMS[key]
    raise UsageError(f"unknown feature {name!r}; choose from {', '.join(FEATURES)} "
                     f"(or a synonym: {', '.join(sorted(_SYNONYMS))})")
