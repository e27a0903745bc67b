"""The files of a checkpoint the bot reads, each proven to lie inside the checkpoint before anything opens it.

Why: a checkpoint is untrusted input, and transformers opens whatever it is pointed at. A shard index whose entries
are absolute or `../` paths, or a symlink leading out of the folder, would load a host file's tensors into an
export that is then published, while the manifest's source hashes (which cover the checkpoint's own files) say
nothing about them. So every file is named by a plain file name, resolved, and required to be a regular file inside
the checkpoint; odd names (path separators, backslashes, control characters, glob characters, a leading dot) are
refused rather than interpreted, and the run stops naming the file.

Which weight files are read follows transformers' own order for a local folder (`config.transformers_weights`, then
`model.safetensors`, then its shard index; pickle only when allowed), so that the files checked and hashed are the
files loaded. Downloads use the same rule on names alone: only the weight files a load will open are fetched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from bot.errors import UnsafeCheckpointError, UsageError

# Files a checkpoint's exports depend on. Their hashes decide whether an earlier export is still up to date.
SOURCE_FILE_PATTERNS = (
    r"config\.json", r"generation_config\.json", r"preprocessor_config\.json", r"processor_config\.json",
    r"tokenizer(_config)?\.json", r"special_tokens_map\.json", r"added_tokens\.json", r"vocab\.(txt|json)",
    r"merges\.txt", r"[^/]*\.model", r"[^/]*\.safetensors", r"[^/]*\.safetensors\.index\.json",
    r"pytorch_model[^/]*\.bin", r"pytorch_model\.bin\.index\.json",
)
_SOURCE_RE = re.compile("|".join(f"(?:{p})" for p in SOURCE_FILE_PATTERNS))
# sentence-transformers: the module list and the pooling a model's embeddings really use (shown in the card).
_SENTENCE_TRANSFORMERS_RE = re.compile(r"modules\.json|[0-9]+_Pooling/config\.json")

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLE, PICKLE_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
_SHARD_NAMES = {SAFETENSORS_INDEX: re.compile(r"model-\d+-of-\d+\.safetensors"),
                PICKLE_INDEX: re.compile(r"pytorch_model-\d+-of-\d+\.bin")}
_GLOB_CHARACTERS = set("*?[]")  # download filters are glob patterns: such a name would select other files
INDEX_SIZE_LIMIT = 64 * 1024**2  # the index of a 400B-parameter model is a few MB


def is_source_file(relative_path: str) -> bool:
    """Files that define the model: top-level config, weights, tokenizer and preprocessor files, and the
    sentence-transformers pooling configuration."""
    if _SENTENCE_TRANSFORMERS_RE.fullmatch(relative_path):
        return True
    return "/" not in relative_path and bool(_SOURCE_RE.fullmatch(relative_path))


def is_weight_file(name: str) -> bool:
    return name.endswith((".safetensors", ".bin"))


def name_problem(relative_path: str) -> str | None:
    """Why a checkpoint file name is refused, or None. `/` separates the few allowed sub-folder parts."""
    for part in relative_path.split("/"):
        if not part.isprintable():
            return "contains control characters (NUL, newline, ...)"
        if "\\" in part:
            return "contains a backslash"
        if _GLOB_CHARACTERS & set(part):
            return "contains a glob character (* ? [ ])"
        if part.startswith(".") or not part:
            return "is not a plain file name"
    return None


def _refuse_name(relative_path: str, problem: str, where: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(f"{where} has a file named {relative_path!r}, which {problem}; the bot reads no file "
                                 f"with such a name: rename or remove it")


def select_source_files(names: Iterable[str]) -> list[str]:
    """The files to download from a repo: its source files, with only the weight files a load will read.

    `model.safetensors` wins over its shard index, safetensors over pickle (as in transformers); a shard index
    brings only the standard shard names beside it (`model-00001-of-00002.safetensors`). Names are checked here,
    before they become download patterns.
    """
    chosen = [n for n in names if is_source_file(n)]
    for name in chosen:
        if problem := name_problem(name):
            raise _refuse_name(name, problem, "the repo")
    weights = [n for n in chosen if is_weight_file(n) or n.endswith(".index.json")]
    needed = _needed_weights(weights)
    return [n for n in chosen if n not in weights or n in needed]


def _needed_weights(names: list[str]) -> set[str]:
    if SAFETENSORS in names:
        return {SAFETENSORS}
    if SAFETENSORS_INDEX in names:
        return {SAFETENSORS_INDEX} | {n for n in names if _SHARD_NAMES[SAFETENSORS_INDEX].fullmatch(n)}
    other = {n for n in names if n.endswith((".safetensors", ".safetensors.index.json"))}
    if other:  # no standard name: config.json's transformers_weights may name one of them (checked after download)
        return other
    if PICKLE in names:
        return {PICKLE}
    if PICKLE_INDEX in names:
        return {PICKLE_INDEX} | {n for n in names if _SHARD_NAMES[PICKLE_INDEX].fullmatch(n)}
    return set()


def allowed_roots(folder: Path) -> tuple[Path, ...]:
    """Where a checkpoint's files may resolve to: the folder itself, and for a huggingface_hub cache snapshot
    (`models--o--n/snapshots/<sha>/`, whose files are symlinks) that repo's blob store."""
    folder = folder.resolve()
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder, folder.parent.parent / "blobs"
    return (folder,)


def _refuse_outside(folder: Path, relative_path: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(f"{relative_path} in {folder} leads outside the checkpoint; the bot reads only "
                                 f"files inside it: copy the file in instead of linking it")


def checked_file(folder: Path, relative_path: str, roots: tuple[Path, ...] | None = None) -> Path:
    """`folder / relative_path`, once it is known to be a regular file inside the checkpoint."""
    if problem := name_problem(relative_path):
        raise _refuse_name(relative_path, problem, str(folder))
    path = folder / relative_path
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # missing, a dangling symlink, or a symlink loop
        raise UsageError(f"{relative_path} in {folder} cannot be read ({type(exc).__name__}); "
                         f"replace it with the real file") from exc
    if not any(resolved.is_relative_to(root) for root in roots or allowed_roots(folder)):
        raise _refuse_outside(folder, relative_path)
    if not resolved.is_file():
        raise UsageError(f"{relative_path} in {folder} is not a regular file; replace it with the real file")
    return path


def source_files(folder: Path) -> list[str]:
    """Every source file of a local checkpoint (relative posix paths, sorted), each checked with `checked_file`.

    Symlinks among the other files are checked too: transformers reads more than the source files (chat templates,
    processor configs), and none of it may come from outside.
    """
    roots = allowed_roots(folder)
    entries = list(folder.iterdir())
    for entry in entries:
        if entry.is_symlink():
            try:
                resolved = entry.resolve()
            except (OSError, RuntimeError) as exc:
                raise UsageError(f"{entry.name!r} in {folder} is a symlink loop; remove it") from exc
            if not any(resolved.is_relative_to(root) for root in roots):
                raise _refuse_outside(folder, repr(entry.name)[1:-1])
    candidates = [p.name for p in entries] + [p.relative_to(folder).as_posix()
                                              for p in folder.glob("*_Pooling/config.json")]
    chosen = sorted(n for n in candidates if is_source_file(n))
    for name in chosen:
        checked_file(folder, name, roots)
    return chosen


def weight_files(folder: Path, config: dict, present: list[str], allow_pickle: bool) -> tuple[list[str], bool]:
    """The weight files a load of this checkpoint reads (checked), and whether they are pickle.

    `present` is `source_files(folder)`: every file returned is among them, so the source hashes cover it.
    """
    explicit = config.get("transformers_weights")
    if explicit is not None:
        if not isinstance(explicit, str) or "/" in explicit or name_problem(explicit) or \
                not explicit.endswith((".safetensors", ".safetensors.index.json")):
            raise UnsafeCheckpointError(f"config.json's transformers_weights {explicit!r} is not the name of a "
                                        f"safetensors file or index beside it; fix or remove that entry")
        entry = explicit
    else:
        entry = next((n for n in (SAFETENSORS, SAFETENSORS_INDEX) if n in present), None)
        if entry is None:
            pickles = [n for n in (PICKLE, PICKLE_INDEX) if n in present]
            if not pickles:
                raise UsageError(f"no weights in {folder}: expected model.safetensors (or pytorch_model.bin with "
                                 f"--allow-pickle)")
            if not allow_pickle:
                raise UnsafeCheckpointError(
                    f"{folder} has only pickle weights ({pickles[0]}); pickle can run code when loaded. Convert the "
                    f"checkpoint to safetensors, or pass --allow-pickle to load it with torch.load(weights_only=True)")
            entry = pickles[0]
    if entry not in present:
        raise UsageError(f"config.json names the weights {entry!r}, which are not in {folder}")
    pickle = entry.startswith("pytorch_model")
    if not entry.endswith(".index.json"):
        return [entry], pickle
    return shards(folder, entry, present, ".bin" if pickle else ".safetensors"), pickle


def shards(folder: Path, index: str, present: list[str], suffix: str) -> list[str]:
    """The shard files a shard index names, each required to be a plain file name beside the index."""
    path = folder / index
    try:
        if path.stat().st_size > INDEX_SIZE_LIMIT:
            raise UsageError(f"{index} is larger than {INDEX_SIZE_LIMIT >> 20} MiB; a shard index is a small file")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{index} in {folder} is not a readable shard index ({exc}); regenerate it with "
                         f"save_pretrained") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or \
            not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise UsageError(f"{index} in {folder} has no weight_map of tensor names to shard files; regenerate it "
                         f"with save_pretrained")
    names = sorted(set(weight_map.values()))
    for name in names:
        problem = name_problem(name) or ("is a path, not a file name beside the index" if "/" in name else None)
        if problem:
            raise UnsafeCheckpointError(f"{index} in {folder} names the shard {name!r}, which {problem}; every "
                                        f"shard must be a file beside the index: fix the index")
        if not name.endswith(suffix):
            raise UnsafeCheckpointError(f"{index} in {folder} names the shard {name!r}, which is not a {suffix} "
                                        f"file; fix the index")
        if name not in present:
            raise UsageError(f"{index} in {folder} names the shard {name!r}, which is not in the checkpoint; add it "
                             f"or fix the index")
    return names
