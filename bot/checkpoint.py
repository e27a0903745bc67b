"""Resolve a checkpoint, load it safely, and decide which features it really supports.

Safety rules live here because this is where repo content becomes code and tensors: a config that asks for custom
code (`auto_map`) is refused, safetensors are preferred, and pickle weights load only when the user allowed it (and
then with `weights_only=True`, which transformers applies).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bot.errors import UnsafeCheckpointError, UsageError
from bot.features import FEATURES, ModelSupport, support_for

log = logging.getLogger(__name__)

# Files a checkpoint's exports depend on. Their hashes decide whether an earlier export is still up to date.
SOURCE_FILE_PATTERNS = (
    r"config\.json", r"generation_config\.json", r"preprocessor_config\.json", r"processor_config\.json",
    r"tokenizer(_config)?\.json", r"special_tokens_map\.json", r"added_tokens\.json", r"vocab\.(txt|json)",
    r"merges\.txt", r"[^/]*\.model", r"[^/]*\.safetensors", r"[^/]*\.safetensors\.index\.json",
    r"pytorch_model[^/]*\.bin", r"pytorch_model\.bin\.index\.json",
)
_SOURCE_RE = re.compile("|".join(f"(?:{p})" for p in SOURCE_FILE_PATTERNS))
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                    "sentencepiece.bpe.model")


def is_source_file(relative_path: str) -> bool:
    """Top-level files that define the model: config, weights, tokenizer and preprocessor files."""
    return "/" not in relative_path and bool(_SOURCE_RE.fullmatch(relative_path))


def select_source_files(names: list[str]) -> list[str]:
    """The files to download from a repo: source files, without pickle weights when safetensors exist."""
    chosen = [n for n in names if is_source_file(n)]
    if any(n.endswith(".safetensors") for n in chosen):
        chosen = [n for n in chosen if not n.startswith("pytorch_model")]
    return chosen


@dataclass
class Checkpoint:
    """A checkpoint on local disk, with what is needed to plan and load its exports."""

    path: Path
    source: str  # what the user named: a directory or a Hub repo id
    revision: str | None
    config: object
    support: ModelSupport
    weights: list[Path]
    uses_pickle: bool
    has_tokenizer: bool
    source_files: dict[str, str] = field(default_factory=dict)  # name -> sha256

    @property
    def model_type(self) -> str:
        return self.config.model_type


@dataclass
class FeaturePlan:
    """The features to export, which one is primary (`onnx/model.onnx`), and the skipped ones with reasons."""

    primary: str
    features: list[str]
    skipped: dict[str, str]
    random_heads: list[str] = field(default_factory=list)  # exported on request although their head is random


def read_config_dict(path: Path) -> dict:
    """config.json as a dict, with errors that say what is wrong and what to do."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UsageError(f"no config.json in {path}: point --model at a transformers checkpoint directory")
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"unreadable config {config_file}: {exc}; fix or regenerate it with save_pretrained") from exc
    if not isinstance(data, dict) or "model_type" not in data:
        raise UsageError(f"{config_file} has no model_type; regenerate it with save_pretrained")
    if "auto_map" in data:
        raise UnsafeCheckpointError(
            f"{config_file} asks for custom code (auto_map); custom code is not executed. Export a checkpoint of a "
            f"built-in transformers architecture, or register an export spec for it (README, 'Custom architectures')")
    return data


def open_checkpoint(path: Path, source: str, revision: str | None = None, allow_pickle: bool = False) -> Checkpoint:
    """Read a local checkpoint directory: config, weights files, tokenizer presence and source hashes."""
    if not path.is_dir():
        raise UsageError(f"checkpoint directory not found: {path}; pass an existing directory or a Hub repo id")
    data = read_config_dict(path)
    support = support_for(data["model_type"])
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise UsageError(f"unreadable config in {path}: {exc}") from exc
    safetensors = sorted(path.glob("*.safetensors"))
    pickles = sorted(path.glob("pytorch_model*.bin"))
    if not safetensors and not pickles:
        raise UsageError(f"no weights in {path}: expected model.safetensors (or pytorch_model.bin with --allow-pickle)")
    if not safetensors and not allow_pickle:
        raise UnsafeCheckpointError(
            f"{path} has only pickle weights ({pickles[0].name}); pickle can run code when loaded. Convert the "
            f"checkpoint to safetensors, or pass --allow-pickle to load it with torch.load(weights_only=True)")
    return Checkpoint(
        path=path, source=source, revision=revision, config=config, support=support,
        weights=safetensors or pickles, uses_pickle=not safetensors,
        has_tokenizer=any((path / name).is_file() for name in _TOKENIZER_FILES),
        source_files=hash_source_files(path),
    )


def hash_source_files(path: Path) -> dict[str, str]:
    """sha256 of every source file, the same digest the Hub records for LFS files."""
    return {file.name: sha256_file(file) for file in sorted(path.iterdir())
            if file.is_file() and is_source_file(file.name)}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_keys(checkpoint: Checkpoint) -> set[str]:
    """Tensor names stored in the checkpoint (safetensors headers only; pickle files are loaded weights-only)."""
    keys: set[str] = set()
    for weights in checkpoint.weights:
        if weights.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as handle:
                keys.update(handle.keys())
        else:
            keys.update(torch.load(weights, map_location="meta", weights_only=True, mmap=True).keys())
    return keys


def auto_class(feature: str):
    import transformers

    return getattr(transformers, FEATURES[feature].auto_class)


def feature_available(config, feature: str) -> bool:
    """Whether transformers has a class for this config and feature."""
    return type(config) in auto_class(feature)._model_mapping


def missing_head_weights(config, feature: str, stored: set[str]) -> list[str]:
    """Weights the model for `feature` would initialise randomly, predicted without loading any tensor.

    The model is built on the meta device; names are compared with the base-model prefix stripped on both sides,
    as transformers does when it loads a base checkpoint into a head model or the reverse. Tied weights and weights
    transformers itself ignores do not count.
    """
    with torch.device("meta"):
        model = auto_class(feature).from_config(config)
    prefix = model.base_model_prefix + "."
    ignore = [re.compile(p) for p in (model._keys_to_ignore_on_load_missing or [])]
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    have = {k[len(prefix):] if k.startswith(prefix) else k for k in stored}
    missing = []
    for name in model.state_dict():
        if name in tied or any(p.search(name) for p in ignore):
            continue
        if (name[len(prefix):] if name.startswith(prefix) else name) not in have:
            missing.append(name)
    return missing


def primary_feature(config, candidates: list[str]) -> str:
    """The feature whose class is the checkpoint's own (`config.architectures[0]`), else default, else the first."""
    architectures = getattr(config, "architectures", None) or []
    for feature in candidates:
        model_class = auto_class(feature)._model_mapping.get(type(config), None)
        if architectures and model_class is not None and model_class.__name__ == architectures[0]:
            return feature
    return "default" if "default" in candidates else candidates[0]


def plan_features(checkpoint: Checkpoint, requested: list[str] | None, allow_random_heads: bool) -> FeaturePlan:
    """Choose the features to export: requested ones (validated) or every feature whose head weights are stored."""
    registered = [f for f in checkpoint.support.features if feature_available(checkpoint.config, f)]
    if requested:
        unsupported = [f for f in requested if f not in registered]
        if unsupported:
            raise UsageError(f"{checkpoint.model_type} does not support {', '.join(unsupported)}; "
                             f"supported: {', '.join(registered)}")
    stored = checkpoint_keys(checkpoint)
    features, skipped, random_heads = [], {}, []
    for feature in requested or registered:
        missing = missing_head_weights(checkpoint.config, feature, stored)
        if not missing:
            features.append(feature)
        elif requested and allow_random_heads:
            features.append(feature)
            random_heads.append(feature)
        else:
            skipped[feature] = head_skip_reason(missing)
    if requested and skipped:
        raise UsageError(f"{', '.join(skipped)}: head weights not in checkpoint ({next(iter(skipped.values()))}); "
                         f"pass --allow-random-heads to export a randomly initialised head anyway")
    if not features:
        raise UsageError(f"no feature of {checkpoint.source} has its weights in the checkpoint: "
                         + "; ".join(f"{f}: {r}" for f, r in skipped.items()))
    return FeaturePlan(primary_feature(checkpoint.config, features), features, skipped, random_heads)


def head_skip_reason(missing: list[str]) -> str:
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return f"head weights not in checkpoint; would be random ({shown})"


def load_model(checkpoint: Checkpoint, feature: str, attn_implementation: str | None = None):
    """Load the model for a feature in eval mode; returns it with the names of weights that were initialised."""
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model, info = auto_class(feature).from_pretrained(
        checkpoint.path, trust_remote_code=False, local_files_only=True, use_safetensors=not checkpoint.uses_pickle,
        output_loading_info=True, **kwargs)
    return model.eval(), sorted(info["missing_keys"])


def load_tokenizer(checkpoint: Checkpoint):
    """The checkpoint's tokenizer, or None when it has none (example inputs then come from the config)."""
    if not checkpoint.has_tokenizer:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(checkpoint.path, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        log.warning("tokenizer in %s could not be loaded (%s); using inputs built from the config", checkpoint.path, exc)
        return None
