"""OUTPUT_DIR before an export: whose files are in it, and clearing the bot's own earlier export.

A folder is the bot's to reuse only for what an earlier export_manifest.json lists with the same sha256 (plus the
manifest itself and leftover staging folders of an interrupted run). Anything else is someone's file: `export`
refuses to write next to it unless told to (`--force`), so a typo in OUTPUT_DIR never mixes artifacts into a
project folder (`check`, run first). The earlier export is removed before the new one starts, manifest first
(`clear`, run by the pipeline once the checkpoint and plan are good): a rerun that fails can then never leave a
manifest claiming artifacts it did not validate, nor stale artifacts from an earlier run.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bot.errors import UsageError
from bot.manifest import MANIFEST_NAME, listed_files, read_manifest

STAGING_PREFIX = ".hub-export-bot-"  # the pipeline's staging folders (bot.pipeline)


@dataclass
class Survey:
    """What an existing OUTPUT_DIR holds: the bot's earlier files and everybody else's."""

    own: list[Path] = field(default_factory=list)  # files or staging folders an earlier export wrote
    foreign: list[str] = field(default_factory=list)  # relative posix paths nobody told us about


def survey(output: Path) -> Survey:
    """Sort the files under `output` into the bot's (listed by its manifest with the same hash) and the others."""
    found = Survey()
    if not output.is_dir():
        return found
    manifest_path = output / MANIFEST_NAME
    manifest = read_manifest(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else None
    listed = listed_files(manifest)
    from bot.checkpoint import sha256_file  # lazily: a fresh OUTPUT_DIR needs no hashing

    for entry in sorted(output.iterdir()):
        if entry.is_dir() and entry.name.startswith(STAGING_PREFIX):
            found.own.append(entry)
    for path in sorted(p for p in output.rglob("*") if p.is_file() or p.is_symlink()):
        relative = path.relative_to(output).as_posix()
        if relative.startswith(STAGING_PREFIX):
            continue
        if manifest is not None and relative == MANIFEST_NAME:
            found.own.insert(0, path)  # removed first: no moment where it lists files already gone
        elif not path.is_symlink() and relative in listed and sha256_file(path) == listed[relative]:
            found.own.append(path)
        else:
            found.foreign.append(relative)
    return found


def check(output: Path, force: bool = False) -> None:
    """Refuse (UsageError, exit 2, nothing touched) an OUTPUT_DIR that is a file, or that holds files the bot did
    not write unless `force`; with `force` those files are kept, and a file at a path the export writes is replaced.
    Cheap enough to run before anything is downloaded or loaded."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"{output} exists and is not a directory; choose another OUTPUT_DIR")
    foreign = survey(output).foreign
    if foreign and not force:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UsageError(f"{output} is not empty and holds files hub-export-bot did not write ({shown}); choose an "
                         f"empty or new OUTPUT_DIR, or pass --force to export into it anyway (those files are kept; "
                         f"files at the paths the export writes are replaced)")


def clear(output: Path) -> list[str]:
    """Remove the bot's earlier export from `output`, manifest first; returns the relative paths removed.

    The pipeline calls it once the checkpoint is open and the plan made, so a mistyped model path or feature (exit 2)
    leaves the earlier export as it was. Files the bot did not write are never touched.
    """
    found = survey(output)
    removed = []
    for path in found.own:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
            removed.append(path.relative_to(output).as_posix())
    emptied = {parent for path in found.own for parent in path.parents if output in parent.parents}
    for folder in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # onnx/, torchscript/ left empty by the removal
    return removed
