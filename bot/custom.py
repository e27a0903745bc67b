"""Architectures the registry does not ship: user-registered specs, and a generic try for the rest.

The seed's three steps for an unsupported architecture map onto this module: (1) describe the export — subclass
`bot.specs.ExportSpec` (or a family spec such as `TextEncoderSpec`) and wrap it in an `Architecture`; (2) export and
(3) validate — the pipeline does both, exactly as for built-in architectures. Register an Architecture with
`register_architecture`, with `--spec module:object` on the command line, or from an installed package through the
entry-point group `hub_export_bot.architectures`.

A model type nobody registered still gets a try: its family is inferred from transformers' auto mappings
(`generic_support`) and the family's spec is used; the export is published only if it validates, and it is marked
`generic` in the manifest and in `features` output.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata

from bot.errors import UsageError
from bot.features import FEATURES, SUPPORT, ModelSupport, register
from bot.specs import CUSTOM_SPECS, ExportSpec

ENTRY_POINT_GROUP = "hub_export_bot.architectures"


@dataclass(frozen=True)
class Architecture:
    """A model type, the features it supports, and the spec that exports them."""

    model_type: str
    features: tuple[str, ...]
    spec: ExportSpec
    name: str | None = None


def register_architecture(architecture: Architecture) -> ModelSupport:
    family = f"custom:{architecture.model_type}"
    CUSTOM_SPECS[family] = architecture.spec
    return register(architecture.model_type, family, architecture.features, architecture.name, origin="custom")


def _architectures(obj, source: str) -> list[Architecture]:
    if callable(obj) and not isinstance(obj, Architecture):
        obj = obj()
    items = [obj] if isinstance(obj, Architecture) else list(obj) if isinstance(obj, (list, tuple)) else None
    if not items or not all(isinstance(item, Architecture) for item in items):
        raise UsageError(f"{source} must be a bot.custom.Architecture, a list of them, or a function returning them")
    return items


def load_spec(reference: str) -> list[ModelSupport]:
    """Register the Architecture(s) named by `module:object` (the user's own code, imported on request)."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--spec {reference!r}: use module:object, e.g. my_package.export:ARCHITECTURE")
    try:
        obj = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--spec {reference!r} could not be loaded: {exc}") from exc
    return [register_architecture(a) for a in _architectures(obj, f"--spec {reference}")]


def load_entry_points() -> list[ModelSupport]:
    """Register every Architecture that installed packages declare in the entry-point group."""
    registered = []
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        registered += [register_architecture(a)
                       for a in _architectures(entry_point.load(), f"entry point {entry_point.name}")]
    return registered


def generic_family(model_type: str, config=None) -> str | None:
    """The export family a model type most likely belongs to, from transformers' auto mappings."""
    from transformers import AutoConfig
    from transformers.models.auto import modeling_auto as auto

    if config is None:
        try:
            config = AutoConfig.for_model(model_type)
        except (ValueError, KeyError, TypeError):
            return None  # transformers does not know this model type

    def has(feature):
        return model_type in getattr(auto, FEATURES[feature].mapping)

    if has("seq2seq-lm"):
        return "seq2seq"
    if has("causal-lm") and not has("masked-lm"):
        return "decoder"
    if has("masked-lm") or has("sequence-classification") or has("token-classification"):
        return "text-encoder"
    if has("image-classification") and hasattr(config, "image_size") and hasattr(config, "num_channels"):
        return "vision"
    return None


def generic_support(model_type: str, config=None) -> ModelSupport | None:
    """A registry entry built for an unregistered model type, or None when no family fits."""
    from transformers.models.auto import modeling_auto as auto

    family = generic_family(model_type, config)
    if family is None:
        return None
    features = [f for f, spec in FEATURES.items() if not spec.with_past and model_type in getattr(auto, spec.mapping)]
    if family in ("decoder", "seq2seq"):
        features += [f"{f}-with-past" for f in ("default", "causal-lm", "seq2seq-lm") if f in features]
    if family == "seq2seq":
        features = [f for f in features if not f.startswith("causal-lm")]
    ordered = tuple(f for f in FEATURES if f in features)
    return ModelSupport(model_type, family, ordered, model_type, origin="generic")


def resolve_support(model_type: str, config=None) -> ModelSupport:
    """Registry, then installed entry points, then the generic family; else a UsageError saying what to do."""
    if model_type not in SUPPORT:
        load_entry_points()
    if model_type in SUPPORT:
        return SUPPORT[model_type]
    support = generic_support(model_type, config)
    if support is not None:
        return support
    raise UsageError(f"unsupported architecture {model_type!r}: no export spec is registered for it and its family "
                     f"could not be inferred. Register one with --spec module:object (README, 'Custom "
                     f"architectures'); built in: {', '.join(sorted(m for m, s in SUPPORT.items() if s.origin == 'registry'))}")
