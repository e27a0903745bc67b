"""The state dir: private to the server's user, and used by one server at a time.

It holds the job database (names of private repos, error messages) and the exports in progress (a private model's
weights), so it is created 0700 with files 0600, and a looser mode found on an existing one is tightened with a
warning rather than silently kept. The server also sets its umask to 077, so that every file it or its export
processes create later (database journals, work dirs) is private too.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from bot.errors import UsageError

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077


def make_private(state_dir: Path) -> None:
    """Create state_dir 0700, or tighten it and the files directly in it (0600) if others could read them."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    loose = []
    for path, private in [(state_dir, 0o700)] + [(p, 0o600) for p in sorted(state_dir.iterdir())
                                                  if p.is_file() and not p.is_symlink()]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            path.chmod(mode & private)
            loose.append(f"{path.name or path} ({mode:o} -> {mode & private:o})")
    if loose:
        log.warning("the state dir was readable by other users; made it private: %s", ", ".join(loose))


def lock_state_dir(state_dir: Path):
    """One server per state dir: a second one would 'recover' the first one's running jobs and run them twice.

    Returns the open lock file; the lock is held until the process exits, however it exits.
    """
    try:
        make_private(state_dir)
        handle = open(state_dir / "server.lock", "a+")
    except OSError as exc:
        raise UsageError(f"cannot use --state-dir {state_dir}: {exc.strerror}; choose a writable directory") from None
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the docs say one server per state dir
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UsageError(f"another hub-export-bot server is using {state_dir}; stop it or choose another "
                         "--state-dir") from None
    return handle


def set_private_umask() -> int:
    """Files created from now on by this process and its children are private; returns the previous umask."""
    return os.umask(PRIVATE_UMASK)
