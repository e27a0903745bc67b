"""What a finished or dead export run means for its job: a final state, or a retry.

A retry is only worth it when the cause can go away by itself. Running out of memory or disk, or being killed by the
kernel, happens again on the next attempt with the same model and the same limits, so those runs are failed at once
with a message that names the cause and the fix (and a person can replay the delivery once it is fixed). Only a death
whose cause is unknown is retried, up to --max-attempts.
"""

from __future__ import annotations

import errno
import signal
import traceback
from dataclasses import dataclass
from typing import Iterable

from bot.errors import BotError
from bot.job import DRY_RUN, OPENED, PARTIAL, UP_TO_DATE, UPDATED, PublishResult
from bot.job import FAILED as RESULT_FAILED
from bot.server.queue import DONE, FAILED, SKIPPED

# PublishResult.status -> job state (bot.job holds both without importing torch, which bot.publish pulls in)
# a partial run published what validated but failed some artifacts: a failed job (with its PR link), not retried
STATE_BY_RESULT_STATUS = {OPENED: DONE, UPDATED: DONE, DRY_RUN: DONE, UP_TO_DATE: SKIPPED, PARTIAL: FAILED,
                          RESULT_FAILED: FAILED}

MAX_MESSAGE = 1000  # characters of an error message kept in the job row and shown on the page

# result_status of runs failed for a cause a retry cannot fix
OUT_OF_MEMORY, DISK_FULL, KILLED = "out-of-memory", "disk-full", "killed"

# How allocation failures read when they do not arrive as a MemoryError: torch's CPU allocator, C++'s operator new
# (also on stderr when it aborts the process), onnxruntime, and strerror(ENOMEM).
_MEMORY_WORDS = ("can't allocate memory", "cannot allocate memory", "bad_alloc", "failed to allocate memory",
                 "not enough memory", "out of memory", "memoryerror")
_DISK_WORDS = ("no space left on device", "disk quota exceeded")


@dataclass(frozen=True)
class JobOutcome:
    """What a finished run means for the job row; `detail` (a traceback) goes to the log only."""

    state: str
    message: str
    pr_url: str | None = None
    result_status: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Crashed:
    """The run ended without an outcome for an unknown reason; the job is retried until it has used up its attempts."""

    reason: str


@dataclass(frozen=True)
class Interrupted:
    """The server stopped the run while shutting down; the job goes back to queued, no attempt counted."""

    reason: str


def outcome_from_result(result: PublishResult) -> JobOutcome:
    """Map a PublishResult (only .status, .message and .pr_url are read) to the job's final state and message."""
    status = result.status
    state = STATE_BY_RESULT_STATUS.get(status)
    if state is None:
        return JobOutcome(FAILED, f"the runner returned an unknown status {status!r}", None, str(status))
    if state == SKIPPED:
        return JobOutcome(SKIPPED, "up to date", result.pr_url, status)
    default = f"{status} {result.pr_url or ''}".strip() if state == DONE else "the export failed"
    return JobOutcome(state, _clip(result.message or default), result.pr_url, status)


def outcome_from_exception(exc: BaseException, memory_limit: int | None = None) -> JobOutcome:
    """A BotError's message already says what to do; anything else is named by its type. Tracebacks go to the log.

    Out of memory and disk full are named as such wherever they hide in the exception chain (a BotError raised
    `from` an OSError, torch's RuntimeError for a failed allocation).
    """
    message = str(exc) or type(exc).__name__
    if not isinstance(exc, BotError):
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    detail = None if isinstance(exc, BotError) else "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__))
    cause = _resource_cause(_chain(exc))
    if cause == OUT_OF_MEMORY:
        return JobOutcome(FAILED, _clip(_out_of_memory(memory_limit, message)), result_status=OUT_OF_MEMORY,
                          detail=detail)
    if cause == DISK_FULL:
        return JobOutcome(FAILED, _clip(_disk_full(message)), result_status=DISK_FULL, detail=detail)
    return JobOutcome(FAILED, _clip(message), result_status="error", detail=detail)


def outcome_from_death(returncode: int, stderr_tail: Iterable[str], oom_kills: int,
                       memory_limit: int | None) -> JobOutcome | Crashed:
    """The export process ended without sending an outcome: name the cause if it is known, else a retryable crash.

    `stderr_tail` is its last lines of stderr (a C++ allocation failure aborts with "std::bad_alloc" there);
    `oom_kills` is how many processes the kernel's OOM killer killed while it ran (/proc/vmstat).
    """
    how = exit_description(returncode)
    tail = " ".join(stderr_tail).lower()
    if returncode == -signal.SIGKILL:
        if oom_kills:
            return JobOutcome(FAILED, _out_of_memory(memory_limit, "killed by the kernel's out-of-memory killer"),
                              result_status=OUT_OF_MEMORY)
        return JobOutcome(FAILED, "the export process was killed with SIGKILL from outside the server (an operator, "
                                  "or a memory watchdog); replay the delivery to try again", result_status=KILLED)
    if any(word in tail for word in _MEMORY_WORDS):
        return JobOutcome(FAILED, _out_of_memory(memory_limit, f"the export process died ({how}) failing to "
                                                               "allocate memory"), result_status=OUT_OF_MEMORY)
    if any(word in tail for word in _DISK_WORDS):
        return JobOutcome(FAILED, _disk_full(f"the export process died ({how})"), result_status=DISK_FULL)
    return Crashed(f"the export process died ({how})")


def exit_description(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _chain(exc: BaseException, depth: int = 8) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and len(seen) < depth and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _resource_cause(chain: list[BaseException]) -> str | None:
    for exc in chain:
        if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
            return OUT_OF_MEMORY
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return DISK_FULL
        text = str(exc).lower()
        if any(word in text for word in _MEMORY_WORDS):
            return OUT_OF_MEMORY
        if any(word in text for word in _DISK_WORDS):
            return DISK_FULL
    return None


def _out_of_memory(limit: int | None, what: str) -> str:
    bound = f"its {format_size(limit)} limit (--child-memory)" if limit else "the machine's memory"
    return (f"out of memory: the export needed more than {bound} ({what}); not retried. Raise --child-memory if "
            "the machine has the memory, then replay the delivery")


def _disk_full(what: str) -> str:
    return (f"disk full: no space left for the export ({what}); not retried. Free space in the state dir's file "
            "system, then replay the delivery")


def format_size(size: int) -> str:
    """Bytes as the largest binary unit that keeps one decimal: 8 GiB, 1.5 GiB, 512 MiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{size} B"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"
