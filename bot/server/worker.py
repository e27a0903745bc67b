"""Worker threads that drain the job queue, each job in a child process that can be stopped.

Why a child process per job: an export is CPU- and memory-heavy and can hang or be killed by the OOM killer. A thread
cannot be stopped from outside; a process can. So each job runs in a fresh `spawn` child (no state inherited from the
server's threads), the child sends back a small JobOutcome through a pipe, and the worker thread only waits:

- an outcome arrives              -> the job is finished as done / skipped / failed;
- the child dies without one      -> a crash: the job goes back to the queue until it has used up its attempts;
- the per-job timeout is reached  -> the child is terminated and the job is failed (a retry would time out again);
- the server shuts down (SIGTERM) -> the job may finish within the grace period, else the child is terminated and
                                     the job goes back to queued without counting an attempt.

The child asks the kernel to kill it when the server dies (Linux PR_SET_PDEATHSIG; a watchdog thread elsewhere), so
a kill -9 of the server cannot leave an orphan export that would run the job a second time next to the re-queued one.

The runner has the signature of `bot.publish.publish`; it must be importable by name (a module-level function),
because it is pickled to the child.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import Callable

from bot.errors import BotError
from bot.job import DRY_RUN, OPENED, UP_TO_DATE, UPDATED, PublishJob, PublishResult
from bot.job import FAILED as RESULT_FAILED
from bot.server.queue import DONE, FAILED, SKIPPED, JobQueue, JobRecord

log = logging.getLogger(__name__)

Runner = Callable[..., PublishResult]  # (job, *, endpoint, token, work_dir, progress) like bot.publish.publish

# PublishResult.status -> job state (bot.job holds both without importing torch, which bot.publish pulls in)
STATE_BY_RESULT_STATUS = {OPENED: DONE, UPDATED: DONE, DRY_RUN: DONE, UP_TO_DATE: SKIPPED, RESULT_FAILED: FAILED}

MAX_MESSAGE = 1000  # characters of an error message kept in the job row and shown on the page


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
    """The run ended without an outcome; the job is retried until it has used up its attempts."""

    reason: str


@dataclass(frozen=True)
class Interrupted:
    """The server stopped the run while shutting down; the job goes back to queued, no attempt counted."""

    reason: str


def run_publish(job: PublishJob, *, endpoint: str, token: str | None, work_dir: Path,
                progress: Callable[[str], None] | None = None) -> PublishResult:
    """The default runner: the real publish pipeline, imported in the child only (it pulls in torch)."""
    from bot.publish import publish

    return publish(job, endpoint=endpoint, token=token, work_dir=work_dir, progress=progress)


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


def outcome_from_exception(exc: BaseException) -> JobOutcome:
    """A BotError's message already says what to do; anything else is named by its type. Tracebacks go to the log."""
    if isinstance(exc, BotError):
        return JobOutcome(FAILED, _clip(str(exc) or type(exc).__name__), result_status="error")
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return JobOutcome(FAILED, _clip(message), result_status="error", detail=detail)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"


# --- the child process ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChildTask:
    """Everything the child needs, pickled to it by multiprocessing (through a pipe: never on a command line)."""

    runner: Runner
    job: PublishJob
    job_id: int
    endpoint: str
    token: str | None = field(repr=False)
    work_dir: Path
    log_level: int
    parent_pid: int


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


def _child_main(task: ChildTask, conn: mp_connection.Connection) -> None:
    _die_with_parent(task.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle: it decides finish or re-queue
    logging.basicConfig(level=logging.WARNING,
                        format=f"%(asctime)s %(levelname)s %(name)s [job {task.job_id}]: %(message)s")
    logging.getLogger("bot").setLevel(task.log_level)
    job_log = logging.getLogger("bot.server.job")
    try:
        result = task.runner(task.job, endpoint=task.endpoint, token=task.token, work_dir=task.work_dir,
                             progress=job_log.info)
        outcome = outcome_from_result(result)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the job's message
        outcome = outcome_from_exception(exc)
    conn.send(outcome)
    conn.close()


# --- the worker threads ---------------------------------------------------------------------------------------------

class WorkerPool:
    """`workers` threads, each running one job at a time in a child process; see the module docstring."""

    def __init__(self, queue: JobQueue, runner: Runner, *, endpoint: str, token: str | None, work_root: Path,
                 workers: int = 1, job_timeout: float = 3600.0, shutdown_grace: float = 8.0,
                 poll_interval: float = 1.0):
        self.queue = queue
        self.runner = runner
        self.endpoint = endpoint
        self._token = token
        self.work_root = Path(work_root)
        self.workers = workers
        self.job_timeout = job_timeout
        self.shutdown_grace = shutdown_grace
        self.poll_interval = poll_interval
        self._context = multiprocessing.get_context("spawn")
        self._threads: list[threading.Thread] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stop_deadline = float("inf")
        self._children: dict[int, multiprocessing.process.BaseProcess] = {}
        self._children_lock = threading.Lock()

    def __repr__(self) -> str:  # never show the token
        return f"WorkerPool(workers={self.workers}, endpoint={self.endpoint!r})"

    def start(self) -> None:
        """Start the threads; the server owns the state dir, so work dirs left by a killed run are removed first."""
        shutil.rmtree(self.work_root, ignore_errors=True)
        atexit.register(self._kill_children)  # runs before multiprocessing's own exit hook, which would join them
        for index in range(self.workers):
            thread = threading.Thread(target=self._loop, name=f"export-worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def notify(self) -> None:
        """A job was queued: wake an idle worker now rather than at its next poll."""
        self._wake.set()

    def alive(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        """Stop claiming; let running jobs finish within the grace period, else terminate and re-queue them."""
        self._stop_deadline = time.monotonic() + self.shutdown_grace
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=self.shutdown_grace + 30)
        atexit.unregister(self._kill_children)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                record = self.queue.claim()
            except Exception:  # noqa: BLE001 - a locked or unreadable database must not kill the worker
                log.exception("could not claim a job; retrying")
                self._stopping.wait(self.poll_interval)
                continue
            if record is None:
                self._wake.wait(self.poll_interval)
                self._wake.clear()
                continue
            self._run(record)

    def _run(self, record: JobRecord) -> None:
        label = f"job {record.id} {record.repo_id}@{record.sha[:7]}"
        log.info("%s: started (attempt %d)", label, record.attempts)
        work_dir = self.work_root / str(record.id)
        started = time.monotonic()
        try:
            shutil.rmtree(work_dir, ignore_errors=True)  # left over by a run the server was killed under
            work_dir.mkdir(parents=True)
            ended = self._execute(record, work_dir)
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable runner: report it on the job, keep working
            log.exception("%s: could not run", label)
            ended = JobOutcome(FAILED, f"could not start the export: {type(exc).__name__}: {exc}",
                               result_status="error")
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)  # exports are large; the job row keeps what happened
        took = time.monotonic() - started
        try:
            self._record(record, label, ended, took)
        except Exception:  # noqa: BLE001
            log.exception("%s: could not record the result; the job is recovered at the next start", label)

    def _record(self, record: JobRecord, label: str, ended, took: float) -> None:
        if isinstance(ended, JobOutcome):
            if ended.detail:
                log.error("%s: %s\n%s", label, ended.message, ended.detail.rstrip())
            self.queue.finish(record.id, ended.state, message=ended.message, pr_url=ended.pr_url,
                              result_status=ended.result_status)
            level = logging.WARNING if ended.state == FAILED else logging.INFO
            link = f" ({ended.pr_url})" if ended.pr_url else ""
            log.log(level, "%s: %s in %.1f s: %s%s", label, ended.state, took, ended.message, link)
        elif isinstance(ended, Interrupted):
            state = self.queue.release(record.id, ended.reason, count_attempt=False)
            log.warning("%s: %s after %.1f s; now %s", label, ended.reason, took, state)
        else:
            state = self.queue.release(record.id, ended.reason)
            log.error("%s: %s after %.1f s (attempt %d of %d); now %s", label, ended.reason, took,
                      record.attempts, self.queue.max_attempts, state)

    def _execute(self, record: JobRecord, work_dir: Path) -> JobOutcome | Crashed | Interrupted:
        task = ChildTask(runner=self.runner,
                         job=PublishJob(repo_id=record.repo_id, revision=record.sha, trigger="webhook"),
                         job_id=record.id, endpoint=self.endpoint, token=self._token, work_dir=work_dir,
                         log_level=logging.getLogger("bot").getEffectiveLevel(), parent_pid=os.getpid())
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(target=_child_main, args=(task, sender), name=f"export-job-{record.id}")
        with self._children_lock:
            process.start()
            self._children[record.id] = process
        sender.close()
        try:
            return self._wait(process, receiver)
        finally:
            receiver.close()
            with self._children_lock:
                self._children.pop(record.id, None)
            process.join(timeout=10)
            if process.is_alive():
                _terminate(process)
            if not process.is_alive():
                process.close()

    def _wait(self, process, receiver) -> JobOutcome | Crashed | Interrupted:
        deadline = time.monotonic() + self.job_timeout
        while True:
            ready = mp_connection.wait([receiver, process.sentinel], timeout=0.2)
            if receiver in ready:
                try:
                    return receiver.recv()
                except EOFError:  # the child closed the pipe without an outcome: it died
                    ready.append(process.sentinel)
            if process.sentinel in ready:
                process.join(timeout=5)
                return Crashed(f"the export process died ({_exit_description(process.exitcode)})")
            now = time.monotonic()
            if now >= deadline:
                _terminate(process)
                return JobOutcome(FAILED, f"timed out after {self.job_timeout:g} s (--job-timeout); the export "
                                          "was stopped", result_status="timeout")
            if self._stopping.is_set() and now >= self._stop_deadline:
                _terminate(process)
                return Interrupted("re-queued: the server shut down before the job finished")

    def _kill_children(self) -> None:
        with self._children_lock:
            for process in list(self._children.values()):
                if process.is_alive():
                    process.kill()


def _terminate(process) -> None:
    """SIGTERM, then SIGKILL if the export ignores it."""
    process.terminate()
    process.join(timeout=5)
    if process.is_alive():
        process.kill()
        process.join(timeout=5)


def _exit_description(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
