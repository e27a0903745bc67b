"""Resolve a checkpoint, load it safely, and decide which features it really supports.

Safety rules live here because this is where repo content becomes code and tensors: a config that asks for custom
code (`auto_map`) is refused, safetensors are preferred, and pickle weights load only when the user allowed it (and
then with `weights_only=True`, which transformers applies). Before anything is built, every file read is checked to
lie inside the checkpoint (bot.sources) and the model is sized against its weights and the memory budget
(bot.budget).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bot import budget, sources
from bot.errors import UnsafeCheckpointError, UsageError
from bot.custom import resolve_support
from bot.features import FEATURES, ModelSupport
from bot.sources import SOURCE_FILE_PATTERNS, is_source_file, select_source_files  # noqa: F401  (public here too)
from bot.upcast import float32_files

log = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                    "sentencepiece.bpe.model")
CONFIG_SIZE_LIMIT = 16 * 1024**2  # config.json of a model with 20k labels is under 1 MB


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
    source_names: list[str] = field(default_factory=list)
    hashing: Future | None = None  # -> {name: sha256} of source_names, computed on a worker thread

    @property
    def model_type(self) -> str:
        return self.config.model_type

    @property
    def source_files(self) -> dict[str, str]:
        """name -> sha256 of every source file; waits for the worker thread that hashes them."""
        return self.hashing.result() if self.hashing is not None else {}


@dataclass
class FeaturePlan:
    """The candidate features, the one expected to be primary (`onnx/model.onnx`), and features ruled out."""

    primary: str
    features: list[str]
    skipped: dict[str, str] = field(default_factory=dict)  # feature -> why it is not a candidate


def read_config_dict(path: Path) -> dict:
    """config.json as a dict, with errors that say what is wrong and what to do."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UsageError(f"no config.json in {path}: point --model at a transformers checkpoint directory")
    if config_file.stat().st_size > CONFIG_SIZE_LIMIT:
        raise UsageError(f"{config_file} is larger than {CONFIG_SIZE_LIMIT >> 20} MiB; a config is a small file")
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
    """Read a local checkpoint directory: config, weights files, tokenizer presence and source hashes.

    The order is the safety argument: file names and locations are checked before any file is read, and the model
    is sized (from the weights' headers and a meta-device build) before anything allocates its memory.
    """
    if not path.is_dir():
        raise UsageError(f"checkpoint directory not found: {path}; pass an existing directory or a Hub repo id")
    present = sources.source_files(path)
    data = read_config_dict(path)
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if data["model_type"] not in CONFIG_MAPPING_NAMES:
        raise UsageError(f"unsupported architecture {data['model_type']!r}: transformers "
                         f"does not know this model type (custom code is not executed)")
    budget.check_layer_counts(data)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise UsageError(f"unreadable config in {path}: {exc}") from exc
    support = resolve_support(config.model_type, config)
    names, uses_pickle = sources.weight_files(path, data, present, allow_pickle)
    weights = [path / name for name in names]
    budget.check_model(config, budget.stored_weights(weights, uses_pickle))
    return Checkpoint(
        path=path, source=source, revision=revision, config=config, support=support,
        weights=weights, uses_pickle=uses_pickle,
        has_tokenizer=any(name in present for name in _TOKENIZER_FILES),
        source_names=present, hashing=_HASHING.submit(lambda: {name: source_sha256(path / name) for name in present}),
    )


# Hashing a checkpoint's files (bert-base: 438 MB, ~0.6 s) runs while the export goes on: hashlib releases the GIL,
# and only the manifest and the publish run's up-to-date check need the digests.
_HASHING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="source-sha256")


def hash_source_files(path: Path) -> dict[str, str]:
    """sha256 of every source file, the same digest the Hub records for LFS files (each file checked first)."""
    return {name: source_sha256(path / name) for name in sources.source_files(path)}


def source_sha256(path: Path) -> str:
    """The digest that decides whether exports are up to date: the file's sha256 (the Hub's LFS oid), except for
    the top-level config.json, hashed without the `transformers.js_config` keys the bot itself writes there
    (bot.jsconfig), so that merging the bot's PR does not look like a new config."""
    if path.name != "config.json":
        return sha256_file(path)
    from bot.jsconfig import without_bot_keys

    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    return hashlib.sha256(without_bot_keys(text).encode("utf-8", errors="surrogateescape")).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def auto_class(feature: str):
    import transformers

    return getattr(transformers, FEATURES[feature].auto_class)


def class_names(model_type: str, feature: str) -> set[str]:
    """Names of the transformers classes for a model type and feature, read without importing any model code."""
    from transformers.models.auto import modeling_auto

    names = getattr(modeling_auto, FEATURES[feature].mapping).get(model_type) or ()
    return {names} if isinstance(names, str) else set(names)


def feature_available(config, feature: str) -> bool:
    """Whether transformers has a class for this config and feature."""
    return bool(class_names(config.model_type, feature))


def own_feature(config, candidates: list[str]) -> str | None:
    """The feature whose model class is the checkpoint's own (`config.architectures[0]`), if any."""
    architectures = getattr(config, "architectures", None) or []
    matching = [f for f in candidates if architectures and architectures[0] in class_names(config.model_type, f)]
    # a class serving a feature and its -with-past twin: the twin is the richer export
    return next((f for f in matching if f.endswith("-with-past")), matching[0] if matching else None)


def primary_feature(config, candidates: list[str]) -> str:
    """The checkpoint's own feature, else default, else the first candidate."""
    return own_feature(config, candidates) or ("default" if "default" in candidates else candidates[0])


def plan_features(checkpoint: Checkpoint, requested: list[str] | None) -> FeaturePlan:
    """The candidate features: the requested ones (validated against the registry) or the plausible ones.

    When `config.architectures` names a task head, only that head and the base model are candidates: another head
    that happens to load without new weights (token classification from a sequence classifier's `classifier`) would
    reuse weights trained for another task. When it names the base model, the checkpoint has no head at all. Only
    when it names neither (e.g. BertForPreTraining) is every registered feature a candidate; whether a candidate's
    weights are really stored is then known only by loading it (transformers renames the keys of many
    architectures while loading), which `load_for_feature` does once per feature.
    """
    registered = [f for f in checkpoint.support.features if feature_available(checkpoint.config, f)]
    unsupported = [f for f in requested or [] if f not in registered]
    if unsupported:
        raise UsageError(f"{checkpoint.model_type} does not support {', '.join(unsupported)}; "
                         f"supported: {', '.join(registered)}")
    if requested:
        return FeaturePlan(primary_feature(checkpoint.config, requested), list(requested))
    own = own_feature(checkpoint.config, registered)
    skipped = {}
    candidates = registered
    if own is not None:
        head = checkpoint.config.architectures[0]
        candidates = [f for f in registered
                      if f.startswith("default") or head in class_names(checkpoint.config.model_type, f)]
        reason = (f"the checkpoint is a base model ({head}) without task head weights" if own.startswith("default")
                  else f"the checkpoint's head is {head}; this head would reuse weights trained for another task")
        skipped = {f: reason for f in registered if f not in candidates}
    for feature in list(candidates):
        if f"{feature}-with-past" in candidates:  # its graph(s) also serve decoding without a cache
            candidates.remove(feature)
            skipped[feature] = f"covered by {feature}-with-past, which also runs without a cache"
    return FeaturePlan(primary_feature(checkpoint.config, candidates), candidates, skipped)


@dataclass
class LoadedModel:
    """A feature's model; `missing` lists weights that were randomly initialised (empty for a real head)."""

    model: torch.nn.Module
    missing: list[str]
    load_kwargs: dict


def load_for_feature(checkpoint: Checkpoint, feature: str) -> LoadedModel:
    """Load a feature's model and report which weights are not in the checkpoint.

    A base model loaded from a head checkpoint (e.g. token classification) often lacks only its pooler; it is then
    reloaded without one, since every other weight is real.
    """
    model, missing = load_model(checkpoint, feature)
    if missing and _only_pooler(checkpoint.config, feature, missing):
        del model
        model, missing = load_model(checkpoint, feature, add_pooling_layer=False)
        return LoadedModel(model, missing, {"add_pooling_layer": False})
    return LoadedModel(model, missing, {})


def probe_features(checkpoint: Checkpoint) -> tuple[list[str], dict[str, str]]:
    """Load every registered feature once: those with stored head weights, and the others with the reason."""
    plan = plan_features(checkpoint, None)
    supported, skipped = [], dict(plan.skipped)
    for feature in plan.features:
        missing = load_for_feature(checkpoint, feature).missing
        if missing:
            skipped[feature] = head_skip_reason(missing)
        else:
            supported.append(feature)
    return supported, skipped


def _only_pooler(config, feature: str, missing: list[str]) -> bool:
    """Whether only the base model's pooler is missing and the model class can be built without one."""
    if feature != "default" or not all(name.startswith("pooler.") or ".pooler." in name for name in missing):
        return False
    model_class = auto_class(feature)._model_mapping.get(type(config), None)
    return isinstance(model_class, type) and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters


def head_skip_reason(missing: list[str]) -> str:
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return f"head weights not in checkpoint; would be random ({shown})"


def load_model(checkpoint: Checkpoint, feature: str, attn_implementation: str | None = None, **kwargs):
    """Load the model for a feature in eval mode; returns it with the names of weights that were initialised.

    Always in float32, whatever dtype the checkpoint stores (bf16, fp16): the exported graphs are the fp32 ones
    transformers.js and optimum load by default (`model.onnx`; half precision is the `fp16` dtype variant), and
    onnxruntime's CPU kernels lack most bf16 operators (a bf16 GPT-2 graph does not even load).
    """
    kwargs.setdefault("dtype", torch.float32)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    # A stored head of another shape (e.g. 3 labels where multiple-choice needs 1) is re-initialised: random too.
    try:
        with float32_files(checkpoint.path, checkpoint.weights) as folder:  # maps float32 files instead of converting
            model, info = auto_class(feature).from_pretrained(
                folder, trust_remote_code=False, local_files_only=True,
                use_safetensors=not checkpoint.uses_pickle, output_loading_info=True, ignore_mismatched_sizes=True,
                **kwargs)
    except Exception as exc:  # a corrupt file, or a pickle that weights_only loading refuses
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UsageError(f"the weights in {checkpoint.path} could not be loaded for {feature}: {first}") from exc
    mismatched = {entry[0] if isinstance(entry, tuple) else entry for entry in info.get("mismatched_keys", ())}
    missing = sorted(set(info["missing_keys"]) | mismatched)
    _zero_missing_biases(model, missing)
    return model.eval(), missing


def _zero_missing_biases(model: torch.nn.Module, missing: list[str]) -> None:
    """Biases that are not in the checkpoint start at zero, as every initialisation scheme starts them.

    Why: transformers leaves some of them as allocated, never initialised (data2vec-text's `lm_head.bias`, the
    decoder bias tied to it): whatever the memory held, up to 1.9e38 once in 30 loads, which made a random head's
    logits infinite and its validation fail at random.
    """
    parameters = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name in missing:
            if name.rsplit(".", 1)[-1] == "bias" and name in parameters:
                parameters[name].zero_()


def load_tokenizer(checkpoint: Checkpoint):
    """The checkpoint's tokenizer for real-text validation inputs, or None (example inputs then come from the config).

    A malformed tokenizer.json, or a tokenizer whose ids the model cannot embed, is bad input: exports validated with
    it would be used with it, and such ids crash the model. A tokenizer without a pad token (GPT-2 style) is not used
    for the padded validation batch: which token pads is the model owner's choice, and the config-built padded inputs
    test the same thing. A tokenizer transformers cannot load for other reasons (an optional library missing) is
    skipped with a warning.
    """
    if not checkpoint.has_tokenizer:
        return None
    _check_tokenizer_json(checkpoint.path / "tokenizer.json")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint.path, trust_remote_code=False, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loader failure: validation does without real text
        log.warning("tokenizer in %s could not be loaded (%s); using inputs built from the config", checkpoint.path,
                    _first_line(exc))
        return None
    rows = getattr(checkpoint.config.get_text_config(), "vocab_size", None)
    largest = max(tokenizer.get_vocab().values(), default=-1)
    if isinstance(rows, int) and largest >= rows:
        raise UsageError(f"the tokenizer in {checkpoint.path} has token ids up to {largest}, but the model embeds only "
                         f"{rows} tokens (vocab_size in config.json), and larger ids crash it: resize the embeddings "
                         f"(model.resize_token_embeddings(len(tokenizer))) and save again, or fix the tokenizer")
    if tokenizer.pad_token is None:
        log.info("the tokenizer in %s has no pad token; the padded validation batch is built from the config",
                 checkpoint.path)
        return None
    return tokenizer


def _check_tokenizer_json(path: Path) -> None:
    """Parse tokenizer.json with the tokenizers library, which is what loading it runs."""
    if not path.is_file():
        return
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise UsageError(f"{path.name} in {path.parent} is malformed ({_first_line(exc)}); regenerate it with the "
                         f"tokenizer's save_pretrained, or remove it") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
