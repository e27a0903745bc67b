"""The durable job queue (dedupe, bounds, atomic claims, recovery, attempts, timings) and the workers that drain it."""

import errno
import json
import signal
import sqlite3
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import wait_for

from bot.errors import UsageError
from bot.server.limits import QueueLimits
from bot.server.outcomes import (STATE_BY_RESULT_STATUS, Crashed, outcome_from_death, outcome_from_exception,
                                 outcome_from_result)
from bot.server.queue import DONE, FAILED, QUEUED, RUNNING, SKIPPED, SUPERSEDED, Enqueued, JobQueue, Refused
from bot.server.worker import WorkerPool
from tests import server_runners

SHA1, SHA2 = "1" * 40, "2" * 40


class Clock:
    """A clock the test moves by hand, so timings are exact."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def queue(tmp_path, clock):
    return JobQueue(tmp_path / "state" / "jobs.sqlite3", max_attempts=3, clock=clock)


def test_the_database_is_in_wal_mode_and_survives_reopening(queue, tmp_path):
    queue.enqueue("acme/a", SHA1)
    with sqlite3.connect(queue.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reopened = JobQueue(queue.path)
    assert [j.repo_id for j in reopened.recent()] == ["acme/a"]


def test_a_redelivery_of_a_queued_running_done_or_up_to_date_job_creates_nothing(queue):
    first = queue.enqueue("acme/a", SHA1)
    assert (first.outcome, first.state, first.queued) == ("created", QUEUED, True)
    assert queue.enqueue("acme/a", SHA1) == Enqueued(first.job_id, "duplicate", QUEUED)
    queue.claim()
    assert queue.enqueue("acme/a", SHA1).state == RUNNING
    queue.finish(first.job_id, DONE, message="opened PR #1", pr_url="https://hub/acme/a/discussions/1")
    again = queue.enqueue("acme/a", SHA1)
    assert (again.job_id, again.outcome, again.state, again.queued) == (first.job_id, "duplicate", DONE, False)
    second = queue.enqueue("acme/b", SHA1)
    queue.claim()
    queue.finish(second.job_id, SKIPPED, message="up to date", result_status="up-to-date")
    assert queue.enqueue("acme/b", SHA1).outcome == "duplicate"
    assert len(queue.recent()) == 2


def test_a_redelivery_of_a_failed_job_queues_it_again_under_the_same_id(queue):
    job_id = queue.enqueue("acme/a", SHA1).job_id
    queue.claim()
    queue.finish(job_id, FAILED, message="validation failed", result_status="failed")
    again = queue.enqueue("acme/a", SHA1)
    assert (again.job_id, again.outcome, again.state) == (job_id, "requeued", QUEUED)
    job = queue.get(job_id)
    assert (job.state, job.attempts, job.started_at, job.finished_at) == (QUEUED, 0, None, None)
    assert "redelivery" in job.message and job.result_status is None


def test_concurrent_deliveries_of_one_push_create_exactly_one_job(queue):
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: queue.enqueue("acme/a", SHA1), range(64)))
    assert sorted(r.outcome for r in results) == ["created"] + ["duplicate"] * 63
    assert len({r.job_id for r in results}) == 1


def test_a_newer_push_supersedes_every_queued_export_of_its_repo_without_being_told_the_old_sha(queue, clock):
    older = [queue.enqueue("acme/a", f"{i}" * 40).job_id for i in (3, 4)]
    unrelated = queue.enqueue("acme/b", SHA1).job_id
    newer = queue.enqueue("acme/a", SHA2).job_id
    for job_id, by in zip(older, ("4444444", "2222222")):
        job = queue.get(job_id)
        assert (job.state, job.result_status, job.finished_at) == (SKIPPED, SUPERSEDED, clock.now)
        assert job.message == f"superseded by a newer push ({by})"
    assert queue.get(unrelated).state == QUEUED and queue.get(newer).state == QUEUED
    # a running export is never superseded: it finishes, and the newer push is exported after it
    running = queue.claim()
    assert running.id == unrelated
    queue.enqueue("acme/b", SHA2)
    assert queue.get(unrelated).state == RUNNING
    # replaying a superseded push exports it after all (e.g. main was force-pushed back to it)
    assert queue.enqueue("acme/a", "3" * 40) == Enqueued(older[0], "requeued", QUEUED)
    assert queue.get(newer).state == SKIPPED


def test_many_pushes_to_one_repo_leave_one_export_queued(queue):
    for i in range(1, 51):
        assert isinstance(queue.enqueue("acme/trainer", f"{i:040x}"), Enqueued)
    assert [j.sha for j in queue.recent(1000, QUEUED)] == [f"{50:040x}"]
    assert queue.counts()[SKIPPED] == 49


def test_repo_ids_that_differ_in_case_are_one_repo(queue):
    first = queue.enqueue("Acme/Bert", SHA1)
    assert queue.enqueue("acme/bert", SHA1) == Enqueued(first.job_id, "duplicate", QUEUED)
    assert queue.enqueue("ACME/BERT", SHA1).outcome == "duplicate"
    assert queue.find("aCmE/bErT", SHA1).id == first.job_id
    newer = queue.enqueue("acme/BERT", SHA2)
    assert queue.get(first.job_id).result_status == SUPERSEDED and newer.outcome == "created"
    assert queue.get(first.job_id).repo_id == "Acme/Bert"  # shown as first delivered


def test_the_queue_is_bounded_globally_per_owner_and_per_repo(tmp_path):
    queue = JobQueue(tmp_path / "jobs.sqlite3",
                     limits=QueueLimits(max_queued=5, max_pending_per_owner=3, max_pending_per_repo=2))
    for i in range(3):
        assert isinstance(queue.enqueue(f"Acme/m{i}", SHA1), Enqueued)
    refused = queue.enqueue("acme/m3", SHA1)  # the owner compared case-insensitively too
    assert refused == Refused("owner", "acme already has 3 exports queued or running (--max-pending-per-owner 3)")
    assert queue.find("acme/m3", SHA1) is None
    # a newer push of a repo that is already queued replaces its job: it is not one more
    assert isinstance(queue.enqueue("acme/m0", SHA2), Enqueued)
    for i in range(2):
        assert isinstance(queue.enqueue(f"other{i}/m", SHA1), Enqueued)
    full = queue.enqueue("third/m", SHA1)
    assert full.limit == "queue" and "5 exports are waiting (--max-queued 5)" in full.reason
    # per repo: one running and one waiting; a third push supersedes the waiting one instead of being refused
    queue = JobQueue(tmp_path / "repo.sqlite3", limits=QueueLimits(max_pending_per_repo=1))
    queue.enqueue("acme/a", SHA1)
    queue.claim()
    refused = queue.enqueue("ACME/a", SHA2)
    assert refused == Refused("repo", "ACME/a already has 1 export(s) queued or running (--max-pending-per-repo 1)")


def test_limits_hold_under_concurrent_deliveries(tmp_path):
    queue = JobQueue(tmp_path / "jobs.sqlite3", limits=QueueLimits(max_queued=10, max_pending_per_owner=1000))
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: queue.enqueue(f"acme/m{i}", SHA1), range(40)))
    assert sum(isinstance(r, Enqueued) for r in results) == 10 and queue.counts()[QUEUED] == 10


def test_a_failed_job_replayed_respects_the_limits(tmp_path):
    queue = JobQueue(tmp_path / "jobs.sqlite3", limits=QueueLimits(max_pending_per_owner=1))
    failed = queue.enqueue("acme/a", SHA1).job_id
    queue.claim()
    queue.finish(failed, FAILED, message="x")
    queue.enqueue("acme/b", SHA1)
    assert queue.enqueue("acme/a", SHA1).limit == "owner"
    assert queue.get(failed).state == FAILED


def test_a_repo_with_a_running_export_waits_for_it(queue):
    first = queue.enqueue("acme/a", SHA1).job_id
    assert queue.claim().id == first
    second = queue.enqueue("ACME/A", SHA2).job_id
    other = queue.enqueue("acme/b", SHA1).job_id
    assert queue.claim().id == other  # not the newer push of acme/a: its export is still running
    assert queue.claim() is None
    queue.finish(first, DONE)
    assert queue.claim().id == second


def test_the_database_is_private(tmp_path):
    queue = JobQueue(tmp_path / "state" / "jobs.sqlite3")
    queue.enqueue("acme/a", SHA1)
    assert stat.S_IMODE(queue.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(queue.path.parent.stat().st_mode) == 0o700


def test_served_messages_carry_no_local_paths(queue):
    job_id = queue.enqueue("acme/a", SHA1).job_id
    queue.claim()
    queue.finish(job_id, FAILED, message="[Errno 2] No such file or directory: '/srv/bot/state/work/7/out/model.onnx'"
                                         " (see https://hub.test/acme/a/discussions/1)")
    assert queue.get(job_id).to_json()["message"] == ("[Errno 2] No such file or directory: '…/model.onnx' "
                                                      "(see https://hub.test/acme/a/discussions/1)")


def test_claims_are_oldest_first_and_each_job_is_claimed_once(queue, tmp_path):
    ids = [queue.enqueue(f"owner{i}/m", SHA1).job_id for i in range(40)]
    other = JobQueue(queue.path)  # a second handle, as another process would have
    claimed, lock = [], threading.Lock()

    def drain(q):
        while (job := q.claim()) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=drain, args=(q,)) for q in (queue, other) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == ids
    assert queue.counts()[RUNNING] == 40 and queue.claim() is None


def test_states_and_timings(queue, clock):
    job_id = queue.enqueue("acme/a", SHA1, private=True).job_id
    created = clock.now
    clock.now += 5
    job = queue.claim()
    assert (job.id, job.state, job.attempts, job.created_at, job.started_at) == (job_id, RUNNING, 1, created,
                                                                                 created + 5)
    clock.now += 12.5
    assert queue.finish(job_id, DONE, message="opened PR #1", pr_url="https://hub/pr/1", result_status="opened")
    assert not queue.finish(job_id, FAILED, message="late")  # only a running job can finish
    job = queue.get(job_id)
    assert (job.state, job.finished_at, job.duration, job.message) == (DONE, created + 17.5, 12.5, "opened PR #1")
    data = job.to_json()
    assert data["created_at"] == "2023-11-14T22:13:20.000+00:00" and data["duration_s"] == 12.5
    assert data["repo_id"] == "acme/a" and data["pr_url"] == "https://hub/pr/1"
    hidden = job.to_json(redact_private=True)
    assert (hidden["repo_id"], hidden["sha"], hidden["message"], hidden["pr_url"]) == ("(private repo)", None,
                                                                                       None, None)
    assert queue.counts() == {QUEUED: 0, RUNNING: 0, DONE: 1, FAILED: 0, SKIPPED: 0}
    assert queue.get(999) is None
    with pytest.raises(ValueError):
        queue.finish(job_id, RUNNING)


def test_recent_is_newest_first_with_limit_and_state(queue):
    for i in range(5):
        queue.enqueue(f"acme/m{i}", SHA1)
    queue.claim()
    assert [j.repo_id for j in queue.recent(3)] == ["acme/m4", "acme/m3", "acme/m2"]
    assert [j.repo_id for j in queue.recent(state=RUNNING)] == ["acme/m0"]


def test_jobs_left_running_by_a_killed_server_are_requeued_then_failed_after_max_attempts(queue):
    job_id = queue.enqueue("acme/poison", SHA1).job_id
    for attempt in (1, 2):
        assert queue.claim().attempts == attempt
        recovery = JobQueue(queue.path, max_attempts=3).recover()  # the next start-up
        assert (recovery.requeued, recovery.failed) == ([job_id], [])
        assert queue.get(job_id).state == QUEUED
    queue.claim()
    recovery = JobQueue(queue.path, max_attempts=3).recover()
    assert (recovery.requeued, recovery.failed) == ([], [job_id])
    job = queue.get(job_id)
    assert job.state == FAILED and job.attempts == 3 and "gave up after 3 attempts" in job.message


def test_release_counts_crashes_but_not_orderly_shutdowns(queue):
    job_id = queue.enqueue("acme/a", SHA1).job_id
    queue.claim()
    assert queue.release(job_id, "shut down", count_attempt=False) == QUEUED
    assert queue.get(job_id).attempts == 0
    for _ in range(2):
        queue.claim()
        assert queue.release(job_id, "the export process died") == QUEUED
    queue.claim()
    assert queue.release(job_id, "the export process died") == FAILED
    assert queue.release(job_id, "again") == FAILED  # not running any more: unchanged
    assert queue.get(job_id).message == "the export process died; gave up after 3 attempts"


# --- mapping results to job states --------------------------------------------------------------------------------

def test_every_publish_status_has_a_job_state():
    from bot import publish

    statuses = {publish.OPENED, publish.UPDATED, publish.UP_TO_DATE, publish.DRY_RUN, publish.FAILED, publish.PARTIAL}
    assert set(STATE_BY_RESULT_STATUS) == statuses
    assert {server_runners.OPENED, server_runners.UP_TO_DATE, server_runners.FAILED} <= statuses


@pytest.mark.parametrize("status, state, message", [
    ("opened", DONE, "opened PR #1"), ("updated", DONE, "opened PR #1"), ("up-to-date", SKIPPED, "up to date"),
    ("failed", FAILED, "opened PR #1"), ("partial", FAILED, "opened PR #1"),
    ("weird", FAILED, "unknown status 'weird'"),
])
def test_results_map_to_states(status, state, message):
    result = server_runners.PublishResult(status, "acme/a", SHA1, "opened PR #1", pr_url="https://hub/pr/1")
    outcome = outcome_from_result(result)
    assert outcome.state == state and message in outcome.message
    assert outcome.result_status == status and outcome.pr_url == (None if status == "weird" else "https://hub/pr/1")


def test_exceptions_become_one_line_messages_with_the_traceback_kept_for_the_log():
    outcome = outcome_from_exception(UsageError("unsupported architecture 'resnet'"))
    assert (outcome.state, outcome.message, outcome.detail) == (FAILED, "unsupported architecture 'resnet'", None)
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError as exc:
        outcome = outcome_from_exception(exc)
    assert outcome.message.startswith("RuntimeError: boom") and "Traceback" not in outcome.message
    assert "Traceback" in outcome.detail
    assert len(outcome_from_exception(ValueError("x" * 5000)).message) == 1000


def _raised(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    try:
        raise exc from cause
    except BaseException as caught:  # noqa: BLE001
        return caught


@pytest.mark.parametrize("exc, status", [
    (_raised(MemoryError()), "out-of-memory"),
    (_raised(RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                          "memory: you tried to allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)")),
     "out-of-memory"),
    (_raised(OSError(errno.ENOMEM, "Cannot allocate memory")), "out-of-memory"),
    (_raised(UsageError("could not save the export"), OSError(errno.ENOSPC, "No space left on device")), "disk-full"),
    (_raised(RuntimeError("write failed"), OSError(errno.EDQUOT, "Disk quota exceeded")), "disk-full"),
    (_raised(RuntimeError("shape mismatch")), "error"),
])
def test_out_of_memory_and_disk_full_are_named_wherever_they_hide(exc, status):
    outcome = outcome_from_exception(exc, memory_limit=3 << 30)
    assert (outcome.state, outcome.result_status) == (FAILED, status)
    if status == "out-of-memory":
        assert outcome.message.startswith("out of memory: the export needed more than its 3 GiB limit "
                                          "(--child-memory)") and "not retried" in outcome.message
    if status == "disk-full":
        assert outcome.message.startswith("disk full") and "not retried" in outcome.message


@pytest.mark.parametrize("code, tail, oom_kills, expected", [
    (-signal.SIGKILL, [], 1, "out-of-memory"),
    (-signal.SIGKILL, [], 0, "killed"),
    (-signal.SIGABRT, ["terminate called after throwing an instance of 'std::bad_alloc'", "  what():  std::bad_alloc"],
     0, "out-of-memory"),
    (1, ["OSError: [Errno 28] No space left on device"], 0, "disk-full"),
    (-signal.SIGSEGV, ["Fatal Python error: Segmentation fault"], 0, None),
    (3, [], 0, None),
])
def test_deaths_for_a_cause_a_retry_cannot_fix_are_failed_others_retried(code, tail, oom_kills, expected):
    ended = outcome_from_death(code, tail, oom_kills, 8 << 30)
    if expected is None:
        assert isinstance(ended, Crashed) and "the export process died" in ended.reason
    else:
        assert (ended.state, ended.result_status) == (FAILED, expected)


# --- the worker pool, with real child processes ---------------------------------------------------------------------



@pytest.fixture
def markers(tmp_path, monkeypatch):
    folder = tmp_path / "markers"
    folder.mkdir()
    monkeypatch.setenv("SERVER_TEST_MARKERS", str(folder))
    return folder


def make_pool(queue, tmp_path, **options):
    settings = dict(endpoint="http://hub.test", token="hf_worker_token", work_root=tmp_path / "work", workers=2,
                    job_timeout=20, shutdown_grace=5, poll_interval=0.1, child_env=("SERVER_TEST_MARKERS",))
    return WorkerPool(queue, server_runners.scripted, **{**settings, **options})


def test_the_pool_runs_each_job_in_a_child_and_records_every_kind_of_outcome(tmp_path, markers):
    queue = JobQueue(tmp_path / "jobs.sqlite3", max_attempts=2)
    repos = ["acme/model", "acme/uptodate", "acme/fails", "acme/usage-error", "acme/boom", "acme/crash",
             "acme/sleep-30"]
    ids = {repo: queue.enqueue(repo, SHA1).job_id for repo in repos}
    pool = make_pool(queue, tmp_path, job_timeout=3)
    pool.start()
    try:
        wait_for(lambda: queue.counts()[DONE] + queue.counts()[FAILED] + queue.counts()[SKIPPED] == len(repos))
    finally:
        pool.stop()
    jobs = {repo: queue.get(job_id) for repo, job_id in ids.items()}
    assert (jobs["acme/model"].state, jobs["acme/model"].pr_url) == (DONE, "http://hub.test/acme/model/discussions/1")
    assert (jobs["acme/uptodate"].state, jobs["acme/uptodate"].message) == (SKIPPED, "up to date")
    assert (jobs["acme/fails"].state, jobs["acme/fails"].message) == (FAILED, server_runners.FAILURE_HTML)
    assert jobs["acme/usage-error"].message.startswith("unsupported architecture 'resnet'")
    assert jobs["acme/boom"].message == "RuntimeError: boom"
    crash = jobs["acme/crash"]
    assert (crash.state, crash.attempts) == (FAILED, 2)
    assert crash.message == "the export process died (exit code 3); gave up after 2 attempts"
    slow = jobs["acme/sleep-30"]
    assert (slow.state, slow.result_status) == (FAILED, "timeout") and "timed out after 3 s" in slow.message
    assert all(job.finished_at >= job.started_at >= job.created_at for job in jobs.values())
    # the runner got the job, endpoint, token and a fresh work dir; work dirs are removed afterwards
    starts = sorted(markers.glob("*.start"))
    assert len(list(markers.glob("acme__crash-*.start"))) == 2 and len(starts) == len(repos) + 1
    seen = json.loads(next(markers.glob("acme__model-*.start")).read_text())
    assert {k: v for k, v in seen.items() if k not in ("env_names", "rlimit_as")} == {
        "repo_id": "acme/model", "revision": SHA1, "endpoint": "http://hub.test", "token": "hf_worker_token",
        "trigger": "webhook", "work_dir_exists": True, "work_dir": str(tmp_path / "work" / str(ids["acme/model"]))}
    assert list((tmp_path / "work").iterdir()) == []
    assert not list(markers.glob("acme__sleep-30-*.done"))  # the timed-out child was really stopped


def test_stopping_the_pool_requeues_a_job_that_does_not_finish_within_the_grace_period(tmp_path, markers):
    queue = JobQueue(tmp_path / "jobs.sqlite3")
    job_id = queue.enqueue("acme/sleep-30", SHA1).job_id
    pool = make_pool(queue, tmp_path, workers=1, shutdown_grace=0.5)
    pool.start()
    wait_for(lambda: list(markers.glob("*.start")))
    pool.stop()
    assert pool.alive() == 0
    job = queue.get(job_id)
    assert (job.state, job.attempts) == (QUEUED, 0) and "the server shut down" in job.message
    assert not list(markers.glob("*.done"))


def test_export_processes_get_an_allow_listed_environment_and_a_memory_limit(tmp_path, markers, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", "whsec-never-in-a-child")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-exports")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    queue = JobQueue(tmp_path / "jobs.sqlite3")
    ids = {repo: queue.enqueue(repo, SHA1).job_id for repo in ("acme/model", "acme/alloc-8g")}
    pool = make_pool(queue, tmp_path, child_memory=3 << 30)
    pool.start()
    try:
        wait_for(lambda: all(queue.get(i).state in (DONE, FAILED) for i in ids.values()))
    finally:
        pool.stop()
    seen = json.loads(next(markers.glob("acme__model-*.start")).read_text())
    names = set(seen["env_names"])
    assert "WEBHOOK_SECRET" not in names and "AWS_SECRET_ACCESS_KEY" not in names
    assert {"PATH", "HF_HUB_DISABLE_TELEMETRY", "LC_ALL", "SERVER_TEST_MARKERS"} <= names
    assert all(n in ("PATH", "HOME", "HF_TOKEN", "HF_ENDPOINT", "LANG", "LANGUAGE", "TMPDIR", "SERVER_TEST_MARKERS")
               or n.startswith(("HF_HUB_", "LC_", "PYTHON")) for n in names), names
    assert seen["rlimit_as"] == 3 << 30
    # 8 GiB of address space does not fit under 3 GiB: a MemoryError, reported as such, tried once
    job = queue.get(ids["acme/alloc-8g"])
    assert (job.state, job.result_status, job.attempts) == (FAILED, "out-of-memory", 1)
    assert "3 GiB limit (--child-memory)" in job.message and "Unable to allocate 8.00 GiB" in job.message


def test_oom_kills_and_disk_full_are_reported_and_not_retried_unknown_deaths_are(tmp_path, markers):
    queue = JobQueue(tmp_path / "jobs.sqlite3", max_attempts=3)
    repos = ["acme/oom-kill", "acme/bad-alloc", "acme/disk-full", "acme/crash"]
    ids = {repo: queue.enqueue(repo, SHA1).job_id for repo in repos}
    pool = make_pool(queue, tmp_path)
    pool.start()
    try:
        wait_for(lambda: all(queue.get(i).state == FAILED for i in ids.values()))
    finally:
        pool.stop()
    jobs = {repo: queue.get(job_id) for repo, job_id in ids.items()}
    status = {repo: (job.result_status, job.attempts) for repo, job in jobs.items()}
    assert status["acme/oom-kill"] in (("killed", 1), ("out-of-memory", 1))
    assert status["acme/bad-alloc"] == ("out-of-memory", 1)
    assert status["acme/disk-full"] == ("disk-full", 1)
    assert status["acme/crash"] == (None, 3)  # an unknown cause: retried until --max-attempts
    assert "SIGKILL" in jobs["acme/oom-kill"].message and "replay the delivery" in jobs["acme/oom-kill"].message
    assert "SIGABRT" in jobs["acme/bad-alloc"].message
    assert jobs["acme/disk-full"].message.startswith("disk full")
    for repo in repos:
        assert len(list(markers.glob(f"{repo.replace('/', '__')}-*.start"))) == status[repo][1]
