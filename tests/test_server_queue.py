"""The durable job queue (dedupe, atomic claims, recovery, attempts, timings) and the workers that drain it."""

import json
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import wait_for

from bot.errors import UsageError
from bot.server.queue import DONE, FAILED, QUEUED, RUNNING, SKIPPED, SUPERSEDED, Enqueued, JobQueue
from bot.server.worker import STATE_BY_RESULT_STATUS, WorkerPool, outcome_from_exception, outcome_from_result
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


def test_a_newer_push_supersedes_the_queued_export_of_its_parent(queue, clock):
    older = queue.enqueue("acme/a", SHA1).job_id
    unrelated = queue.enqueue("acme/b", SHA1).job_id
    newer = queue.enqueue("acme/a", SHA2, previous_sha=SHA1).job_id
    job = queue.get(older)
    assert (job.state, job.result_status, job.finished_at) == (SKIPPED, SUPERSEDED, clock.now)
    assert "superseded by a newer push (2222222)" in job.message
    assert queue.get(unrelated).state == QUEUED and queue.get(newer).state == QUEUED
    # a running export is never superseded: it finishes, and the newer push is exported after it
    running = queue.claim()
    assert running.id == unrelated
    queue.enqueue("acme/b", SHA2, previous_sha=SHA1)
    assert queue.get(unrelated).state == RUNNING
    # replaying the superseded push exports it after all (e.g. main was force-pushed back to it)
    assert queue.enqueue("acme/a", SHA1) == Enqueued(older, "requeued", QUEUED)


def test_claims_are_oldest_first_and_each_job_is_claimed_once(queue, tmp_path):
    ids = [queue.enqueue(f"acme/m{i}", SHA1).job_id for i in range(40)]
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

    statuses = {publish.OPENED, publish.UPDATED, publish.UP_TO_DATE, publish.DRY_RUN, publish.FAILED}
    assert set(STATE_BY_RESULT_STATUS) == statuses
    assert {server_runners.OPENED, server_runners.UP_TO_DATE, server_runners.FAILED} <= statuses


@pytest.mark.parametrize("status, state, message", [
    ("opened", DONE, "opened PR #1"), ("updated", DONE, "opened PR #1"), ("up-to-date", SKIPPED, "up to date"),
    ("failed", FAILED, "opened PR #1"), ("weird", FAILED, "unknown status 'weird'"),
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


# --- the worker pool, with real child processes ---------------------------------------------------------------------



@pytest.fixture
def markers(tmp_path, monkeypatch):
    folder = tmp_path / "markers"
    folder.mkdir()
    monkeypatch.setenv("SERVER_TEST_MARKERS", str(folder))
    return folder


def make_pool(queue, tmp_path, **options):
    settings = dict(endpoint="http://hub.test", token="hf_worker_token", work_root=tmp_path / "work", workers=2,
                    job_timeout=20, shutdown_grace=5, poll_interval=0.1)
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
    assert seen == {"repo_id": "acme/model", "revision": SHA1, "endpoint": "http://hub.test",
                    "token": "hf_worker_token", "trigger": "webhook", "work_dir_exists": True,
                    "work_dir": str(tmp_path / "work" / str(ids["acme/model"]))}
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
