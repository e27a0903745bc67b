"""A full disk ends the run with one line (exit 1), never as a crash or as an export failure to investigate.

Why a module of its own: the space runs out wherever the large files are written (an exporter, the TorchScript
archive, the external-data file, the manifest), and each library reports it its own way: an OSError with ENOSPC,
a RuntimeError quoting "No space left on device", or numpy's errno-less "problem writing element". Recognising them
here lets the pipeline stop at the first one, after which its staging folder (with every partial file) is removed.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from bot.errors import BotError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_MESSAGES = tuple(os.strerror(code) for code in _NO_SPACE)  # "No space left on device", "Disk quota exceeded"
LOW_SPACE = 1024**2  # an OSError while less than this is free is taken for a full disk


class DiskFull(BotError):
    """The disk filled up while writing artifacts (an environment failure: exit 1)."""


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether `exc`, raised while writing into `folder`, means that its file system is full."""
    chain = list(_chain(exc))
    if any(isinstance(e, OSError) and e.errno in _NO_SPACE for e in chain):
        return True
    text = " ".join(str(e) for e in chain)
    if any(message in text for message in _MESSAGES):
        return True
    if any(isinstance(e, OSError) for e in chain) or "OSError" in text:
        try:
            return shutil.disk_usage(folder).free < LOW_SPACE
        except OSError:
            return False
    return False


def raise_if_disk_full(exc: BaseException, folder: Path) -> None:
    """Raise DiskFull (from `exc`) when `exc` is, or means, a full disk; otherwise return."""
    if isinstance(exc, DiskFull):
        raise exc
    if is_disk_full(exc, folder):
        shown = folder  # the output directory, not the staging folder that is about to be removed
        for part in (folder, *folder.parents):
            if part.name.startswith("."):
                shown = part.parent
        raise DiskFull(f"no space left on the device of {shown} while writing the artifacts; the partial files "
                       f"were removed. Free space there, or choose an OUTPUT_DIR on another disk") from exc
