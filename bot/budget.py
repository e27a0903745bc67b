"""Memory and download budgets, checked before anything big is built or fetched.

Why: config.json alone decides how big a model transformers builds, and weights missing from the checkpoint are
initialised in memory before anyone notices they are missing. A 92 kB checkpoint declaring hidden_size 65536 and
200 layers made an export allocate GiBs, without bound for bigger configs. So a checkpoint is sized first, for free:
the stored tensors from the safetensors headers (shapes only, no data read: that is the true size), the config's
model by building it on the meta device (parameters without storage). A run is refused when the config needs far
more parameters than the weights hold, or when the estimated peak exceeds the memory budget. Hub downloads are
sized from the Hub's file metadata and capped before a byte is fetched.

Limits (README, "Security and failure modes"):
- memory budget: `--max-memory` / HUB_EXPORT_BOT_MAX_MEMORY, default the memory available when the run starts
  (the smallest of MemAvailable, the cgroup's remaining limit and the RLIMIT_AS headroom);
- download cap: HUB_EXPORT_BOT_MAX_DOWNLOAD, default 32 GiB per checkpoint.

This module imports torch and transformers only inside the functions that size a model, so the Hub client can use
the download check without them.
"""

from __future__ import annotations

import copy
import math
import os
import re
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from bot.errors import UsageError

MEMORY_ENV = "HUB_EXPORT_BOT_MAX_MEMORY"
DOWNLOAD_ENV = "HUB_EXPORT_BOT_MAX_DOWNLOAD"
DEFAULT_MAX_DOWNLOAD = 32 * 1024**3
# Peak memory of an export relative to the model's weights: measured 2.4-2.6x (README, "Performance").
PEAK_FACTOR = 3
# The config's model may need more parameters than are stored (a head or a pooler to initialise, a decoder-only
# checkpoint of an encoder-decoder type: 1.6x), never this many more.
MISSING_FACTOR, MISSING_SLACK = 2.0, 1_000_000
# Building a model on the meta device costs time and Python objects per layer; no real model is this deep.
MAX_LAYERS = 1024
_LAYER_KEYS = re.compile(r"(num_)?(hidden_|encoder_|decoder_)?(layers|blocks)|n_layers?")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def parse_size(text: str, what: str) -> int:
    """"16G", "512MiB", "1.5T" or a number of bytes (units are binary: 1G = 1 GiB)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"{what}={text!r} is not a size; write e.g. 16G, 512M or a number of bytes")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def human(size: float) -> str:
    """A size for messages: 3.2 GiB, 240.0 KiB."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} bytes"


def available_memory() -> int:
    """Bytes this process can still allocate: MemAvailable, lowered by a cgroup (v2) memory limit and by an
    address-space limit (RLIMIT_AS, which a supervisor may set on an export process) less what is mapped now."""
    values = []
    if (available := _proc_kib("/proc/meminfo", "MemAvailable")) is not None:
        values.append(available)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        values.append(soft - (_proc_kib("/proc/self/status", "VmSize") or 0))
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            values.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip()))
    except (OSError, ValueError):
        pass
    if not values:
        values.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return max(0, min(values))


def _proc_kib(path: str, field: str) -> int | None:
    """A "Field:  N kB" line of a /proc file, in bytes."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_budget(environ: Mapping[str, str] | None = None) -> tuple[int, str]:
    """The memory budget in bytes and where it comes from (for messages)."""
    environ = os.environ if environ is None else environ
    if environ.get(MEMORY_ENV, "").strip():
        return parse_size(environ[MEMORY_ENV], MEMORY_ENV), f"{MEMORY_ENV} / --max-memory"
    return available_memory(), "the memory available now; --max-memory sets another budget"


def download_cap(environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    text = environ.get(DOWNLOAD_ENV, "").strip()
    return parse_size(text, DOWNLOAD_ENV) if text else DEFAULT_MAX_DOWNLOAD


def check_download(repo_id: str, sizes: Mapping[str, int], environ: Mapping[str, str] | None = None) -> None:
    """Refuse, before fetching, a download over the cap or weights whose export would not fit the memory budget."""
    total, cap = sum(sizes.values()), download_cap(environ)
    if total > cap:
        largest = max(sizes, key=sizes.get)
        raise UsageError(f"{repo_id} would download {human(total)} (largest: {largest}, {human(sizes[largest])}), more "
                         f"than the download cap of {human(cap)}; set {DOWNLOAD_ENV} (e.g. 64G) to allow it")
    weights = sum(size for name, size in sizes.items() if name.endswith(_WEIGHT_SUFFIXES))
    _check_peak(weights * PEAK_FACTOR, f"{repo_id}'s weights are {human(weights)}", environ)


@dataclass(frozen=True)
class StoredWeights:
    """What the weight files hold: parameters (from the headers' shapes) and bytes on disk."""

    parameters: int
    bytes: int

    @property
    def element_size(self) -> float:
        return self.bytes / self.parameters if self.parameters else 4.0


def stored_weights(files: list[Path], pickle: bool) -> StoredWeights:
    """Sum the tensors of the weight files without loading them.

    safetensors: every tensor's shape from the header. Pickle cannot be read without unpickling, so its parameters
    are estimated from the size at 2 bytes each (fp16), the lenient side for the consistency check.
    """
    size = sum(f.stat().st_size for f in files)
    if pickle:
        return StoredWeights(size // 2, size)
    from safetensors import safe_open

    parameters = 0
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                parameters += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
        except Exception as exc:  # SafetensorError and friends: a header that is not safetensors
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UsageError(f"{file.name} is not a readable safetensors file ({first}); re-save the weights with "
                             f"save_pretrained") from exc
    return StoredWeights(parameters, size)


def check_layer_counts(config_dict: dict, where: str = "config.json") -> None:
    """Refuse absurd layer counts before building even a meta model (its cost grows with the layers)."""
    stack = [config_dict]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, int) and not isinstance(value, bool) and value > MAX_LAYERS and \
                        _LAYER_KEYS.fullmatch(str(key)):
                    raise UsageError(f"{where} declares {key} = {value}; no real model has more than {MAX_LAYERS} "
                                     f"layers: fix config.json")
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


def config_parameters(config) -> int:
    """Parameters of the config's base model, counted on the meta device: no memory, whatever the sizes."""
    import torch
    import transformers

    candidates = [transformers.AutoModel]  # the checkpoint's own class when transformers has no base model for it
    candidates += [getattr(transformers, name) for name in (getattr(config, "architectures", None) or [])[:1]
                   if hasattr(transformers, name)]
    errors = []
    for model_class in candidates:
        try:
            with torch.device("meta"):
                model = model_class.from_config(copy.deepcopy(config))
        except Exception as exc:  # the real build would fail the same way: say so now, before any allocation
            errors.append(f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}")
            continue
        return sum(parameter.numel() for parameter in model.parameters())
    raise UsageError(f"the model described by config.json cannot be built ({errors[0]}); fix config.json")


def check_model(config, weights: StoredWeights, environ: Mapping[str, str] | None = None) -> int:
    """Refuse a config inconsistent with its weights, or a model whose export exceeds the memory budget.

    Returns the estimated peak in bytes.
    """
    needed = config_parameters(config)
    if needed > weights.parameters * MISSING_FACTOR + MISSING_SLACK:
        raise UsageError(f"config.json describes a model of {needed:,} parameters but the weights hold only "
                         f"{weights.parameters:,}: the rest would be random. Fix config.json or add the missing "
                         f"weights")
    peak = max(needed, weights.parameters) * weights.element_size * PEAK_FACTOR + _input_bytes(config)
    _check_peak(peak, f"the model has {max(needed, weights.parameters):,} parameters", environ)
    return int(peak)


def _check_peak(peak: float, why: str, environ: Mapping[str, str] | None) -> None:
    budget, source = memory_budget(environ)
    if peak > budget:
        raise UsageError(f"exporting needs about {human(peak)} of memory ({why}), more than the budget of "
                         f"{human(budget)} ({source}); run on a machine with more memory, or raise the budget if "
                         f"this one has it")


def _input_bytes(config) -> int:
    """Example inputs sized by the config: a vision model's pixels and its attention over (image/patch)^2 tokens
    (validation runs batches of up to 3)."""
    total = 0
    for sub in [config] + [getattr(config, name) for name in getattr(config, "sub_configs", {}) or {}]:
        size = getattr(sub, "image_size", None)
        size = size[0] if isinstance(size, (list, tuple)) and size else size
        if not isinstance(size, int):
            continue
        channels = getattr(sub, "num_channels", 3) or 3
        patch = getattr(sub, "patch_size", None)
        patch = patch[0] if isinstance(patch, (list, tuple)) and patch else patch
        tokens = (size // patch) ** 2 if isinstance(patch, int) and patch > 0 else 0
        heads = getattr(sub, "num_attention_heads", 1) or 1
        heads = heads if isinstance(heads, int) else 1
        total += 3 * 4 * (channels * size * size + heads * tokens * tokens)
    return total
