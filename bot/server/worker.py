"""Worker threads that drain the job queue, each job in a child process that can be stopped.

Why a child process per job: an export is CPU- and memory-heavy and can hang or run out of memory. A thread cannot be
stopped from outside; a process can. So each job runs in a fresh child (child.py: a small environment, a memory
limit), the child sends back a small JobOutcome through a socket pair, and the worker thread only waits:

- an outcome arrives              -> the job is finished as done / skipped / failed;
- the child dies without one      -> outcomes.outcome_from_death: out of memory, disk full or killed is failed at
                                     once (a retry would end the same way); an unknown cause goes back to the queue
                                     until the job has used up its attempts;
- the per-job timeout is reached  -> the child is killed and the job is failed (a retry would time out again);
- the server shuts down (SIGTERM) -> the job may finish within the grace period, else the child is killed and the
                                     job goes back to queued without counting an attempt.

The child runs in a session of its own and ignores SIGINT and SIGTERM: a signal to the server's process group, from a
terminal or a service manager, is the server's to act on (it lets the job finish or re-queues it). The child dies
with the server (PR_SET_PDEATHSIG), so a kill -9 of the server cannot leave an orphan export that would run the job a
second time next to the re-queued one. The server stops a child with SIGKILL: the worker removes its work dir anyway.

The runner has the signature of `bot.publish.publish`; it must be importable by name (a module-level function),
because it is pickled to the child.

Where a job runs is a strategy: by default the child process above (`WorkerPool.run_in_child`); `executor=` replaces
it (bot.server.hfjobs_runner runs each job as a Hugging Face Job). The queue, the threads, recording the outcome and
retrying stay the same whichever runs the export.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import Callable, Iterable

from bot.job import PUBLISH_DTYPES, ExportOptions, PublishJob, PublishResult
from bot.server.child import CHILD_COMMAND, ChildTask, child_environment, oom_kill_count
from bot.server.outcomes import FAILED, Crashed, Interrupted, JobOutcome, outcome_from_death
from bot.server.queue import JobQueue, JobRecord

log = logging.getLogger(__name__)

Runner = Callable[..., PublishResult]  # (job, *, endpoint, token, work_dir, progress) like bot.publish.publish
# (pool, record, work_dir) -> what happened; see WorkerPool.run_in_child, the default
Executor = Callable[["WorkerPool", JobRecord, Path], "JobOutcome | Crashed | Interrupted"]

STDERR_TAIL_LINES = 20  # of a child's stderr kept to name the cause of its death


def run_publish(job: PublishJob, *, endpoint: str, token: str | None, work_dir: Path,
                progress: Callable[[str], None] | None = None) -> PublishResult:
    """The default runner: the real publish pipeline, imported in the child only (it pulls in torch)."""
    from bot.publish import publish

    return publish(job, endpoint=endpoint, token=token, work_dir=work_dir, progress=progress)


# --- the worker threads ---------------------------------------------------------------------------------------------

class WorkerPool:
    """`workers` threads, each running one job at a time in a child process; see the module docstring."""

    def __init__(self, queue: JobQueue, runner: Runner, *, endpoint: str, token: str | None, work_root: Path,
                 workers: int = 1, job_timeout: float = 3600.0, shutdown_grace: float = 8.0,
                 poll_interval: float = 1.0, child_memory: int | None = None, child_env: Iterable[str] = (),
                 dtypes: tuple[str, ...] = PUBLISH_DTYPES, executor: Executor | None = None):
        self.queue = queue
        self.executor: Executor = executor or WorkerPool.run_in_child
        self.runner = runner
        self.endpoint = endpoint
        self._token = token
        self.work_root = Path(work_root)
        self.workers = workers
        self.job_timeout = job_timeout
        self.shutdown_grace = shutdown_grace
        self.poll_interval = poll_interval
        self.child_memory = child_memory
        self.child_env = tuple(child_env)
        self.options = ExportOptions(dtypes=tuple(dtypes))
        self._threads: list[threading.Thread] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stop_deadline = float("inf")
        self._children: dict[int, subprocess.Popen] = {}
        self._children_lock = threading.Lock()

    def __repr__(self) -> str:  # never show the token
        return f"WorkerPool(workers={self.workers}, endpoint={self.endpoint!r})"

    def start(self) -> None:
        """Start the threads; the server owns the state dir, so work dirs left by a killed run are removed first."""
        shutil.rmtree(self.work_root, ignore_errors=True)
        atexit.register(self._kill_children)  # a server leaving by an exception leaves no export behind
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
            ended = self.executor(self, record, work_dir)
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

    def publish_job(self, record: JobRecord) -> PublishJob:
        """What a queued push asks the pipeline to do, whichever executor runs it."""
        return PublishJob(repo_id=record.repo_id, revision=record.sha, trigger="webhook", options=self.options)

    def past_grace(self) -> bool:
        """The server is shutting down and a running job's grace period is over: stop it and re-queue it."""
        return self._stopping.is_set() and time.monotonic() >= self._stop_deadline

    def run_in_child(self, record: JobRecord, work_dir: Path) -> JobOutcome | Crashed | Interrupted:
        """The default executor: the export in a child process of this server (see the module docstring)."""
        task = ChildTask(runner=self.runner, job=self.publish_job(record), job_id=record.id, endpoint=self.endpoint,
                         token=self._token, work_dir=work_dir, log_level=logging.getLogger("bot").getEffectiveLevel())
        ours, theirs = mp_connection.Pipe(duplex=True)
        oom_kills = oom_kill_count()
        try:
            with self._children_lock:
                process = subprocess.Popen(
                    [sys.executable, "-c", CHILD_COMMAND, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                    env=child_environment(os.environ, self.child_env), stdin=subprocess.DEVNULL,
                    stderr=subprocess.PIPE, start_new_session=True)
                self._children[record.id] = process
        finally:
            theirs.close()
        tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        relay = threading.Thread(target=_relay_stderr, args=(process.stderr, tail), daemon=True,
                                 name=f"export-job-{record.id}-stderr")
        relay.start()
        try:
            ours.send({"sys_path": list(sys.path), "memory_limit": self.child_memory, "parent_pid": os.getpid()})
            ours.send(task)
            ended = self._wait(process, ours)
            if isinstance(ended, int):  # died without an outcome: name the cause from its last words
                relay.join(timeout=5)
                return outcome_from_death(ended, list(tail), oom_kill_count() - oom_kills, self.child_memory)
            return ended
        except (BrokenPipeError, ConnectionResetError):  # it died before it read the job
            process.wait(timeout=10)
            relay.join(timeout=5)
            return outcome_from_death(process.returncode, list(tail), oom_kill_count() - oom_kills,
                                      self.child_memory)
        finally:
            ours.close()
            with self._children_lock:
                self._children.pop(record.id, None)
            _kill(process)
            relay.join(timeout=5)

    def _wait(self, process: subprocess.Popen, conn) -> JobOutcome | Interrupted | int:
        """The child's outcome, its exit status if it died without one, or what the server did to it."""
        deadline = time.monotonic() + self.job_timeout
        while True:
            if conn.poll(0.2):
                try:
                    return conn.recv()
                except EOFError:  # it closed its end without an outcome: it is dying
                    return process.wait(timeout=10)
            if (code := process.poll()) is not None:
                return code
            now = time.monotonic()
            if now >= deadline:
                _kill(process)
                return JobOutcome(FAILED, f"timed out after {self.job_timeout:g} s (--job-timeout); the export "
                                          "was stopped", result_status="timeout")
            if self.past_grace():
                _kill(process)
                return Interrupted("re-queued: the server shut down before the job finished")

    def _kill_children(self) -> None:
        with self._children_lock:
            for process in list(self._children.values()):
                if process.poll() is None:
                    process.kill()


def _kill(process: subprocess.Popen) -> None:
    """SIGKILL and reap: the child ignores SIGTERM (see the module docstring) and has nothing to clean up."""
    if process.poll() is None:
        process.kill()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process in uninterruptible sleep
        log.error("export process %d did not die after SIGKILL", process.pid)


def _relay_stderr(stream, tail: collections.deque) -> None:
    """Copy a child's stderr to the server's, keeping its last lines to tell why it died."""
    with stream:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace")
            tail.append(line.strip())
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):  # stderr closed: keep draining, or the child would block on a full pipe
                pass
