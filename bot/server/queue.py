"""The durable job queue: one SQLite file (WAL) in the state dir, so an accepted delivery survives a kill -9.

Why SQLite: a webhook receiver must never lose an accepted delivery and never run one twice; SQLite gives atomic,
durable transactions and a UNIQUE (repo_id, sha) constraint for free, with nothing to operate. Every operation opens
its own short-lived connection, so the queue can be used from any thread (request handlers, workers) without sharing
connections. Writes use BEGIN IMMEDIATE, which takes the write lock up front: two workers can never claim one job.

A job's life: queued -> running -> done | skipped | failed. `attempts` counts how many times it was started; a job
whose run ended without a result (the worker's child process died, or the whole server was killed) goes back to
queued until it has been started `max_attempts` times, then it is failed: a poison job cannot loop forever.

Repo ids are compared case-insensitively everywhere (the Hub treats `Acme/Bert` and `acme/bert` as one repo), and the
queue is bounded (QueueLimits): a flood of pushes is refused with a reason instead of growing the backlog without end.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from bot.server.limits import QueueLimits
from bot.server.redact import scrub_paths

QUEUED, RUNNING, DONE, FAILED, SKIPPED = "queued", "running", "done", "failed", "skipped"
STATES = (QUEUED, RUNNING, DONE, FAILED, SKIPPED)
FINAL_STATES = (DONE, FAILED, SKIPPED)
SUPERSEDED = "superseded"  # result_status of a queued job made pointless by a newer push to the same branch

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    repo_id       TEXT    NOT NULL,
    sha           TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'skipped')),
    created_at    REAL    NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    message       TEXT,
    pr_url        TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    result_status TEXT,
    private       INTEGER NOT NULL DEFAULT 0,
    UNIQUE (repo_id, sha)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id);
CREATE INDEX IF NOT EXISTS jobs_by_repo_nocase ON jobs (repo_id COLLATE NOCASE, sha);
"""
# Repo ids are ASCII (payload.py checks them), so SQLite's ASCII-only NOCASE is exactly the Hub's case-insensitivity.
_SAME_REPO = "repo_id = ? COLLATE NOCASE"
_OWNER = "substr(repo_id, 1, instr(repo_id, '/') - 1)"
PENDING_STATES = (QUEUED, RUNNING)


@dataclass(frozen=True)
class JobRecord:
    """One row of the jobs table; times are Unix seconds."""

    id: int
    repo_id: str
    sha: str
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    message: str | None
    pr_url: str | None
    attempts: int
    result_status: str | None
    private: bool

    @property
    def duration(self) -> float | None:
        """Seconds the last run took (so far, while running)."""
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0.0, end - self.started_at)

    def to_json(self, *, redact_private: bool = False) -> dict:
        """The API's view of a job: no local paths in messages (the status pages need no secret); private repos'
        names and details are hidden unless the operator allowed them."""
        data = asdict(self)
        for key in ("created_at", "started_at", "finished_at"):
            data[key] = _iso(data[key])
        data["duration_s"] = None if self.duration is None else round(self.duration, 3)
        data["message"] = scrub_paths(data["message"])
        if redact_private and self.private:
            data.update(repo_id="(private repo)", sha=None, message=None, pr_url=None)
        return data


@dataclass(frozen=True)
class Enqueued:
    """What enqueue() did: `created` a job, `requeued` a failed or superseded one, or found a `duplicate`."""

    job_id: int
    outcome: str  # "created", "requeued" or "duplicate"
    state: str  # the job's state after the call

    @property
    def queued(self) -> bool:
        return self.outcome != "duplicate"


@dataclass(frozen=True)
class Refused:
    """enqueue() took no job because a QueueLimits bound is reached; `limit` is "queue", "owner" or "repo"."""

    limit: str
    reason: str


@dataclass(frozen=True)
class Recovery:
    """Jobs found running at start-up: the server died under them."""

    requeued: list[int]
    failed: list[int]


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


class JobQueue:
    """Durable jobs keyed by (repo_id, sha); see the module docstring for the states and the attempt rule."""

    def __init__(self, path: Path, *, max_attempts: int = 3, limits: QueueLimits = QueueLimits(),
                 clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.max_attempts = max_attempts
        self.limits = limits
        self._clock = clock
        self._write_lock = threading.Lock()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # private from the start (jobs name private repos); SQLite gives its -wal and -shm files the same mode
        os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
            conn.executescript(_SCHEMA)

    @contextmanager
    def _connect(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """`durable`: the commit is fsynced before it returns, so it survives power loss and not only a kill -9.

        Accepting a delivery is durable (the Hub was told 202). Worker bookkeeping is not: in WAL mode a commit
        already survives the process being killed, the next durable commit syncs it anyway, and losing it to a
        power cut only means the job runs again, which publishing tolerates (it ends "up to date").
        """
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        # Writers of this process queue on a lock rather than in SQLite's busy handler, which polls with growing
        # sleeps and so turns a burst of deliveries into a long latency tail; other processes still get busy waits.
        with self._write_lock, self._connect(durable=durable) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # --- writes -----------------------------------------------------------------------------------------------------

    def enqueue(self, repo_id: str, sha: str, *, private: bool = False) -> Enqueued | Refused:
        """Queue an export of repo_id@sha unless one exists. Redelivery policy, decided here in one place:

        - queued, running, done, or skipped as up to date: a duplicate, nothing changes;
        - failed, or skipped as superseded: queued again under the same id with fresh attempts, because a
          redelivery is a person pressing "replay" in the webhook settings (the Hub does not resend a delivery we
          acknowledged), which is exactly how one retries a failed export.

        A job that is queued makes every other still-queued job of its repo pointless: only the default branch is
        exported, and it now holds `sha`. Those are skipped as superseded (a Trainer pushing every few minutes must not
        queue an export per checkpoint); a running export is left to finish. The limits are checked as they will be
        once that is done, under the write lock, so concurrent deliveries cannot overshoot them together.
        """
        with self._connect() as conn:  # fast path without the write lock: most redeliveries are plain duplicates
            row = self._lookup(conn, repo_id, sha)
        if row is not None and not _requeueable(row):
            return Enqueued(row["id"], "duplicate", row["state"])
        now = self._clock()
        with self._transaction(durable=True) as conn:
            row = self._lookup(conn, repo_id, sha)  # again, under the lock: it may have changed
            if row is not None and not _requeueable(row):
                return Enqueued(row["id"], "duplicate", row["state"])
            stale = [r["id"] for r in conn.execute(f"SELECT id FROM jobs WHERE {_SAME_REPO} AND state = ?",
                                                   (repo_id, QUEUED))]
            refused = self._over_limit(conn, repo_id, len(stale))
            if refused is not None:
                return refused
            if stale:
                conn.execute(
                    f"UPDATE jobs SET state = ?, finished_at = ?, result_status = ?, message = ? "
                    f"WHERE id IN ({','.join('?' * len(stale))})",
                    (SKIPPED, now, SUPERSEDED, f"superseded by a newer push ({sha[:7]})", *stale))
            if row is None:
                job_id = conn.execute(
                    "INSERT INTO jobs (repo_id, sha, state, created_at, private) VALUES (?, ?, ?, ?, ?)",
                    (repo_id, sha, QUEUED, now, int(private))).lastrowid
                return Enqueued(job_id, "created", QUEUED)
            conn.execute(
                "UPDATE jobs SET state = ?, attempts = 0, started_at = NULL, finished_at = NULL, message = ?, "
                "pr_url = NULL, result_status = NULL WHERE id = ?",
                (QUEUED, f"queued again by a redelivery (was {row['state']})", row["id"]))
            return Enqueued(row["id"], "requeued", QUEUED)

    def _over_limit(self, conn: sqlite3.Connection, repo_id: str, superseded: int) -> Refused | None:
        """The first bound one more job of repo_id would break, after `superseded` of its queued jobs are dropped."""
        limits, owner = self.limits, repo_id.partition("/")[0]
        pending = f"state IN ({','.join('?' * len(PENDING_STATES))})"
        in_repo = conn.execute(f"SELECT COUNT(*) FROM jobs WHERE {pending} AND {_SAME_REPO}",
                               (*PENDING_STATES, repo_id)).fetchone()[0] - superseded
        if in_repo >= limits.max_pending_per_repo:
            return Refused("repo", f"{repo_id} already has {in_repo} export(s) queued or running "
                                   f"(--max-pending-per-repo {limits.max_pending_per_repo})")
        of_owner = conn.execute(f"SELECT COUNT(*) FROM jobs WHERE {pending} AND {_OWNER} = ? COLLATE NOCASE",
                                (*PENDING_STATES, owner)).fetchone()[0] - superseded
        if of_owner >= limits.max_pending_per_owner:
            return Refused("owner", f"{owner} already has {of_owner} exports queued or running "
                                    f"(--max-pending-per-owner {limits.max_pending_per_owner})")
        waiting = conn.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (QUEUED,)).fetchone()[0] - superseded
        if waiting >= limits.max_queued:
            return Refused("queue", f"the queue is full: {waiting} exports are waiting (--max-queued "
                                    f"{limits.max_queued})")
        return None

    def claim(self) -> JobRecord | None:
        """Atomically take the oldest queued job and mark it running (one statement under the write lock).

        A job whose repo already has an export running waits for it: two exports of one repo at once would race to
        open the repo's one bot PR.
        """
        with self._transaction() as conn:
            rows = conn.execute(
                "UPDATE jobs SET state = ?, started_at = ?, finished_at = NULL, attempts = attempts + 1 "
                "WHERE id = (SELECT id FROM jobs AS q WHERE state = ? AND NOT EXISTS ("
                "  SELECT 1 FROM jobs AS r WHERE r.state = ? AND r.repo_id = q.repo_id COLLATE NOCASE) "
                "ORDER BY id LIMIT 1) AND state = ? RETURNING *",
                (RUNNING, self._clock(), QUEUED, RUNNING, QUEUED)).fetchall()  # all: RETURNING ends on the last row
        return _record(rows[0]) if rows else None

    def finish(self, job_id: int, state: str, *, message: str | None = None, pr_url: str | None = None,
               result_status: str | None = None) -> bool:
        """Record the result of a running job; False if it was not running (then nothing is changed)."""
        if state not in FINAL_STATES:
            raise ValueError(f"finish() needs a final state, not {state!r}")
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, message = ?, pr_url = ?, result_status = ? "
                "WHERE id = ? AND state = ?",
                (state, self._clock(), message, pr_url, result_status, job_id, RUNNING))
        return cur.rowcount == 1

    def release(self, job_id: int, reason: str, *, count_attempt: bool = True) -> str:
        """A running job ended without a result: back to queued, or failed once it has used up its attempts.

        `count_attempt=False` is for the server's own orderly shutdown, which is not the job's fault.
        Returns the job's new state.
        """
        with self._transaction() as conn:
            row = conn.execute("SELECT attempts FROM jobs WHERE id = ? AND state = ?", (job_id, RUNNING)).fetchone()
            if row is None:
                return self._state(conn, job_id)
            attempts = row["attempts"] if count_attempt else max(0, row["attempts"] - 1)
            if attempts >= self.max_attempts:
                conn.execute("UPDATE jobs SET state = ?, finished_at = ?, message = ?, attempts = ? WHERE id = ?",
                             (FAILED, self._clock(), f"{reason}; gave up after {attempts} attempts", attempts,
                              job_id))
                return FAILED
            conn.execute("UPDATE jobs SET state = ?, message = ?, attempts = ? WHERE id = ?",
                         (QUEUED, reason, attempts, job_id))
            return QUEUED

    def recover(self) -> Recovery:
        """At start-up, before any worker runs: jobs still `running` were cut off by a kill or crash; release them."""
        with self._connect() as conn:
            ids = [r["id"] for r in conn.execute("SELECT id FROM jobs WHERE state = ? ORDER BY id", (RUNNING,))]
        requeued, failed = [], []
        for job_id in ids:
            state = self.release(job_id, "the server stopped while this job was running")
            (failed if state == FAILED else requeued).append(job_id)
        return Recovery(requeued, failed)

    # --- reads ------------------------------------------------------------------------------------------------------

    def get(self, job_id: int) -> JobRecord | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row) if row else None

    def find(self, repo_id: str, sha: str) -> JobRecord | None:
        with self._connect() as conn:
            row = conn.execute(f"SELECT * FROM jobs WHERE {_SAME_REPO} AND sha = ?", (repo_id, sha)).fetchone()
        return _record(row) if row else None

    def recent(self, limit: int = 50, state: str | None = None) -> list[JobRecord]:
        """Newest first."""
        query, params = "SELECT * FROM jobs", ()
        if state is not None:
            query, params = query + " WHERE state = ?", (state,)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [_record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs per state, every state present."""
        with self._connect() as conn:
            found = dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return {state: found.get(state, 0) for state in STATES}

    @staticmethod
    def _lookup(conn: sqlite3.Connection, repo_id: str, sha: str) -> sqlite3.Row | None:
        return conn.execute(f"SELECT id, state, result_status FROM jobs WHERE {_SAME_REPO} AND sha = ?",
                            (repo_id, sha)).fetchone()

    @staticmethod
    def _state(conn: sqlite3.Connection, job_id: int) -> str:
        row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row["state"] if row else "unknown"


def _requeueable(row: sqlite3.Row) -> bool:
    """A redelivery queues these again (see JobQueue.enqueue)."""
    return row["state"] == FAILED or (row["state"] == SKIPPED and row["result_status"] == SUPERSEDED)


def _record(row: sqlite3.Row) -> JobRecord:
    data = dict(row)
    data["private"] = bool(data["private"])
    return JobRecord(**data)
