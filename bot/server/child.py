"""The process one export runs in, and what it is started with: a small environment and a memory limit.

Why a process of its own, started with subprocess rather than multiprocessing: the server's environment holds
WEBHOOK_SECRET (and whatever else its host set), and an export neither needs nor should see it, yet a multiprocessing
child always inherits the parent's whole environment. subprocess takes the environment as an argument, so the child
gets only the allow-list below. The job itself (which holds the token) travels through a socket pair, never argv.

The memory limit (RLIMIT_AS) is set by the child on itself as its first act, before it unpickles the job and imports
anything heavy: that is what a preexec hook would do, without preexec's deadlock risk in a server full of threads. An
export over the limit then fails with MemoryError (or torch's "can't allocate memory") which outcomes.py reports as
such, instead of the kernel's OOM killer taking the machine's largest process, which may be the server.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import Callable, Iterable, Mapping

# What an export needs from the environment: finding programs and the home directory (cache), the Hub (endpoint,
# token, huggingface_hub's HF_HUB_* settings), locale, temp dir, and Python's own PYTHON* settings. Nothing else.
CHILD_ENV_NAMES = frozenset({"PATH", "HOME", "HF_TOKEN", "HF_ENDPOINT", "LANG", "LANGUAGE", "TMPDIR"})
CHILD_ENV_PREFIXES = ("HF_HUB_", "LC_", "PYTHON")
NEVER_PASSED = frozenset({"WEBHOOK_SECRET"})

CHILD_COMMAND = "from bot.server.child import main; main()"


def child_environment(environ: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """The allow-listed part of `environ`, plus the names an operator passed with --child-env (never the secret)."""
    wanted = set(extra) - NEVER_PASSED
    return {name: value for name, value in environ.items()
            if name not in NEVER_PASSED
            and (name in CHILD_ENV_NAMES or name.startswith(CHILD_ENV_PREFIXES) or name in wanted)}


def default_child_memory(workers: int) -> int:
    """Three quarters of the memory this server may use (the machine's, or its cgroup's if lower), shared among the
    workers, and never below 2 GiB (importing torch and onnxruntime alone reserves about 1.3 GiB of address space).

    The quarter left over is for the server, the page cache the safetensors files are read through, and the rest of
    the machine; a limit the size of all memory would leave the kernel's OOM killer to settle things.
    """
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        cgroup = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if cgroup.isdigit():
            total = min(total, int(cgroup))
    except OSError:
        pass
    return max(2 << 30, int(total * 0.75) // max(1, workers))


@dataclass(frozen=True)
class ChildTask:
    """Everything the child needs for one job, pickled to it through the socket pair."""

    runner: Callable
    job: object  # a bot.job.PublishJob
    job_id: int
    endpoint: str
    token: str | None = field(repr=False)
    work_dir: Path
    log_level: int


def oom_kill_count() -> int:
    """How many processes the kernel's OOM killer has killed since boot (0 where the kernel does not say)."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


# --- inside the child -----------------------------------------------------------------------------------------------

def _die_with_parent(parent_pid: int) -> None:
    """Make sure this child does not outlive the server (which would let a job run twice after a restart).

    The kernel ties PR_SET_PDEATHSIG to the thread that started the child: a worker thread, which lives as long as
    the server and outlives its children in an orderly stop.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # PR_SET_PDEATHSIG
                if os.getppid() != parent_pid:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _limit_memory(limit: int | None) -> None:
    if not limit:
        return
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # hard too: the export cannot raise it again


def main() -> None:
    """Entry point of `python -c CHILD_COMMAND FD`: FD is this end of the socket pair to the worker."""
    conn = mp_connection.Connection(int(sys.argv[1]))
    setup = conn.recv()  # plain data, unpickled without importing anything
    _die_with_parent(setup["parent_pid"])
    # A signal to the whole process group (Ctrl-C in a terminal, `kill -TERM -PGID`, a service manager) is the
    # server's to handle: it lets the job finish within the grace period or stops it and re-queues it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _limit_memory(setup["memory_limit"])
    sys.path[:] = setup["sys_path"]  # as multiprocessing does: the runner must import as it does in the server
    task: ChildTask = conn.recv()

    from bot.server.outcomes import outcome_from_exception, outcome_from_result

    logging.basicConfig(level=logging.WARNING,
                        format=f"%(asctime)s %(levelname)s %(name)s [job {task.job_id}]: %(message)s")
    logging.getLogger("bot").setLevel(task.log_level)
    job_log = logging.getLogger("bot.server.job")
    try:
        result = task.runner(task.job, endpoint=task.endpoint, token=task.token, work_dir=task.work_dir,
                             progress=job_log.info)
        outcome = outcome_from_result(result)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the job's message
        outcome = outcome_from_exception(exc, setup["memory_limit"])
    conn.send(outcome)
    conn.close()
