"""The webhook server as the Hub and a maintainer meet it: a real uvicorn process on 127.0.0.1, a real HTTP client.

The server runs `tests.server_runners:scripted` instead of the publish pipeline (`--runner`), which leaves a marker
file per run, so "exactly once" is counted, not assumed. kill -9 and SIGTERM are sent to the real process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for

from bot.server.queue import DONE, FAILED, QUEUED, SKIPPED, JobQueue
from tests.server_runners import FAILURE_HTML

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "whsec-test-5f1e0c"
TOKEN = "hf_server_test_token_9a7b"
HUB = "http://hub.test"


def server_command() -> list[str]:
    return [sys.executable, "-m", "bot", "serve"]


def sha(n: int) -> str:
    return f"{n:040x}"


def push(repo: str = "acme/model", new: str = sha(1), *, ref: str = "refs/heads/main", scope: str = "repo.content",
         repo_type: str = "model", private: bool = False, old: str = sha(0)) -> dict:
    return {"event": {"action": "update", "scope": scope},
            "repo": {"type": repo_type, "name": repo, "id": "65c0ffee", "private": private, "headSha": new,
                     "url": {"web": f"https://huggingface.co/{repo}"}, "owner": {"id": "60c0ffee"}},
            "updatedRefs": [{"ref": ref, "oldSha": old, "newSha": new}],
            "webhook": {"id": "6529c0ffee", "version": 3}}




class ServerProcess:
    """`hub-export-bot serve` in a subprocess on an ephemeral port, its log in a file, a client for it."""

    def __init__(self, root: Path, *options: str, env: dict | None = None):
        self.root = root
        self.state_dir = root / "state"
        self.markers = root / "markers"
        self.markers.mkdir(parents=True, exist_ok=True)
        self.options = ["--port", "0", "--state-dir", str(self.state_dir), "--runner",
                        "tests.server_runners:scripted", *options]
        self.env = {**os.environ, "WEBHOOK_SECRET": SECRET, "HF_TOKEN": TOKEN, "HF_ENDPOINT": HUB,
                    "SERVER_TEST_MARKERS": str(self.markers), "HF_HUB_DISABLE_XET": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1", **(env or {})}
        self.runs = 0
        self.process: subprocess.Popen | None = None
        self.client: httpx.Client | None = None

    def start(self) -> "ServerProcess":
        self.runs += 1
        self.log = self.root / f"server-{self.runs}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([*server_command(), *self.options], cwd=REPO_ROOT, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT)
        match = wait_for(lambda: self._listening() or self._exited(), timeout=60)
        assert match is not True, f"the server exited with {self.process.returncode}:\n{self.log.read_text()}"
        self.url = match.group(1)
        self.client = httpx.Client(base_url=self.url, timeout=10)
        return self

    def _listening(self):
        return re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.log.read_text())

    def _exited(self) -> bool:
        return self.process.poll() is not None

    def post(self, payload, secret: str | bytes | None = SECRET, **kwargs) -> httpx.Response:
        headers = {} if secret is None else {"X-Webhook-Secret": secret}
        if isinstance(payload, (bytes, str)):
            return self.client.post("/webhooks/hub", content=payload, headers=headers, **kwargs)
        return self.client.post("/webhooks/hub", json=payload, headers=headers, **kwargs)

    def job(self, job_id: int) -> dict:
        return self.client.get(f"/jobs/{job_id}").json()

    def wait_state(self, job_id: int, *states: str, timeout: float = 30) -> dict:
        return wait_for(lambda: (job := self.job(job_id))["state"] in states and job, timeout=timeout)

    def marker_count(self, repo: str, kind: str) -> int:
        return len(list(self.markers.glob(f"{repo.replace('/', '__')}-*.{kind}")))

    def signal(self, signum: int, timeout: float = 30) -> int:
        self.client.close()
        self.process.send_signal(signum)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.client:
            self.client.close()
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def all_logs(self) -> str:
        return "".join(p.read_text() for p in sorted(self.root.glob("server-*.log")))


def assert_no_secrets(server: ServerProcess) -> None:
    logs = server.all_logs()
    assert SECRET not in logs and TOKEN not in logs


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the transport tests: repos under acme/ only, crashes retried once, a short job timeout."""
    proc = ServerProcess(tmp_path_factory.mktemp("server"), "--allow", "acme/*", "--max-attempts", "2",
                         "--job-timeout", "10").start()
    yield proc
    try:
        assert proc.signal(signal.SIGTERM) == 0
        assert_no_secrets(proc)
    finally:
        proc.stop()


@pytest.fixture
def fresh(tmp_path):
    """A server of the test's own, started by the test (for kill -9 and SIGTERM)."""
    servers = []

    def make(*options: str) -> ServerProcess:
        servers.append(ServerProcess(tmp_path, *options))
        return servers[-1]

    yield make
    for proc in servers:
        proc.stop()


# --- the webhook endpoint -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("secret, status", [(None, 401), ("", 401), ("wrong", 403), (SECRET + "x", 403),
                                            (SECRET.upper(), 403), ("é".encode("latin-1"), 403)])
def test_the_secret_is_required_and_checked(server, secret, status):
    response = server.post(push(new=sha(900)), secret=secret)
    assert response.status_code == status
    assert response.json()["status"] == "error" and "X-Webhook-Secret" in response.json()["detail"]


def test_the_secret_is_checked_before_the_body_is_read(server):
    assert server.post(b"{not json", secret="wrong").status_code == 403


@pytest.mark.parametrize("body, status, detail", [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "not valid JSON"),
    (b"\xff\xfe\x00", 400, "not valid JSON"),
    (b"[]", 422, "not a Hub webhook payload"),
    (json.dumps({"event": {"action": "update", "scope": "repo.content"}}).encode(), 422, "repo: Field required"),
    (json.dumps({**push(), "updatedRefs": [{"ref": "refs/heads/main"}]}).encode(), 422, "updatedRefs.0.newSha"),
    (json.dumps(push(repo="acme/<b>x</b>")).encode(), 422, "repo.name"),
    (b"{" + b'"a":' * 300_000 + b"1" + b"}" * 300_000, 413, "larger than"),
])
def test_bodies_that_are_not_hub_payloads_are_refused_without_a_500(server, body, status, detail):
    response = server.post(body)
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]


@pytest.mark.parametrize("payload, reason", [
    (push(ref="refs/pr/7"), "no update of refs/heads/main (updated: refs/pr/7)"),
    (push(ref="refs/heads/dev"), "no update of refs/heads/main (updated: refs/heads/dev)"),
    (push(repo_type="dataset"), "repo type 'dataset' is not handled"),
    (push(repo_type="space"), "repo type 'space' is not handled"),
    (push(scope="discussion"), "event scope 'discussion' is not handled"),
    (push(scope="repo"), "event scope 'repo' is not handled"),
    (push(repo="other/model"), "repo other/model does not match --allow acme/*"),
    (push(new="0" * 40), "refs/heads/main was deleted"),
    ({k: v for k, v in push().items() if k != "updatedRefs"}, "the payload has no updatedRefs"),
])
def test_deliveries_that_are_not_ours_are_acknowledged_and_ignored(server, payload, reason):
    before = len(server.client.get("/jobs", params={"limit": 1000}).json())
    response = server.post(payload)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "reason"} and body["status"] == "ignored" and reason in body["reason"]
    assert len(server.client.get("/jobs", params={"limit": 1000}).json()) == before
    assert reason in server.log.read_text()


def test_a_push_is_queued_at_once_and_exported_exactly_once_however_often_it_is_redelivered(server):
    response = server.post(push("acme/sleep-1", sha(1)))
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and body["requeued"] is False
    job_id = body["job_id"]
    again = server.post(push("acme/sleep-1", sha(1)))
    assert again.status_code == 200 and again.json()["status"] == "duplicate" and again.json()["job_id"] == job_id
    job = server.wait_state(job_id, DONE)
    assert job["repo_id"] == "acme/sleep-1" and job["sha"] == sha(1) and job["attempts"] == 1
    assert job["pr_url"] == f"{HUB}/acme/sleep-1/discussions/1" and job["result_status"] == "opened"
    assert job["duration_s"] >= 1 and job["started_at"] and job["finished_at"]
    assert server.post(push("acme/sleep-1", sha(1))).json() == {"status": "duplicate", "job_id": job_id,
                                                                  "state": DONE}
    assert server.marker_count("acme/sleep-1", "start") == 1
    seen = json.loads(next(server.markers.glob("acme__sleep-1-*.start")).read_text())
    assert (seen["endpoint"], seen["token"], seen["trigger"]) == (HUB, TOKEN, "webhook")


def test_outcomes_are_recorded_and_a_failed_job_is_requeued_by_a_redelivery(server):
    ids = {repo: server.post(push(repo, sha(2))).json()["job_id"]
           for repo in ("acme/uptodate", "acme/fails", "acme/boom", "acme/crash")}
    uptodate = server.wait_state(ids["acme/uptodate"], SKIPPED)
    assert uptodate["message"] == "up to date"
    fails = server.wait_state(ids["acme/fails"], FAILED)
    assert fails["message"] == FAILURE_HTML and fails["result_status"] == "failed"
    assert server.wait_state(ids["acme/boom"], FAILED)["message"] == "RuntimeError: boom"
    crash = server.wait_state(ids["acme/crash"], FAILED)
    assert crash["attempts"] == 2 and "gave up after 2 attempts" in crash["message"]
    assert server.marker_count("acme/crash", "start") == 2

    replay = server.post(push("acme/fails", sha(2)))
    assert replay.status_code == 202 and replay.json() == {"status": "queued", "job_id": ids["acme/fails"],
                                                          "requeued": True}
    server.wait_state(ids["acme/fails"], FAILED)
    assert server.marker_count("acme/fails", "start") == 2
    assert "Traceback" in server.log.read_text()  # the RuntimeError's traceback went to the log, not the job


# --- status endpoints -----------------------------------------------------------------------------------------------

def test_healthz_jobs_and_job(server):
    first = server.post(push("acme/listing", sha(10))).json()["job_id"]
    second = server.post(push("acme/listing", sha(11))).json()["job_id"]
    health = server.client.get("/healthz")
    assert health.status_code == 200
    assert set(health.json()) == {"status", "queued", "running", "workers"} and health.json()["status"] == "ok"
    jobs = server.client.get("/jobs").json()
    assert [j["id"] for j in jobs[:2]] == [second, first]
    assert [j["id"] for j in server.client.get("/jobs", params={"limit": 1}).json()] == [second]
    assert all(j["state"] == DONE for j in server.client.get("/jobs", params={"state": "done"}).json())
    assert server.client.get("/jobs", params={"limit": 0}).status_code == 422
    assert server.client.get("/jobs", params={"state": "lost"}).status_code == 422
    assert server.job(first)["repo_id"] == "acme/listing"
    missing = server.client.get("/jobs/987654")
    assert missing.status_code == 404 and missing.json()["detail"] == "no job 987654"
    assert server.client.get("/jobs/abc").status_code == 422
    assert server.client.get("/docs").status_code == 404


def test_the_page_lists_jobs_with_everything_escaped_and_private_repos_hidden(server):
    failed = server.post(push("acme/fails", sha(20))).json()["job_id"]
    private = server.post(push("acme/secret-model", sha(21), private=True)).json()["job_id"]
    opened = server.post(push("acme/page-model", sha(22))).json()["job_id"]
    server.wait_state(failed, FAILED)
    server.wait_state(private, DONE)
    server.wait_state(opened, DONE)
    page = server.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "acme/fails" in html and f'/acme/fails/commit/{sha(20)}"' in html and sha(20)[:7] in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html and "<script>" not in html
    assert f'<a href="{HUB}/acme/page-model/discussions/1">PR</a>' in html
    assert "secret-model" not in html and "(private repo)" in html
    job = server.job(private)
    assert (job["repo_id"], job["sha"], job["pr_url"]) == ("(private repo)", None, None)


def test_a_second_server_on_the_same_state_dir_is_refused(server):
    proc = subprocess.run([*server_command(), "--port", "0", "--state-dir", str(server.state_dir)], cwd=REPO_ROOT,
                          env=server.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "another hub-export-bot server is using" in proc.stderr


def test_without_webhook_secret_the_server_refuses_to_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WEBHOOK_SECRET"}
    proc = subprocess.run([*server_command(), "--port", "0", "--state-dir", str(tmp_path / "state")],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "WEBHOOK_SECRET is not set" in proc.stderr and "Traceback" not in proc.stderr


# --- crashes and shutdowns ------------------------------------------------------------------------------------------

def test_kill_9_during_a_running_job_loses_nothing_and_runs_the_job_to_completion_exactly_once(fresh):
    server = fresh().start()
    running = server.post(push("acme/sleep-2", sha(30))).json()["job_id"]
    waiting = server.post(push("acme/model", sha(31))).json()["job_id"]
    marker = wait_for(lambda: next(server.markers.glob("acme__sleep-2-*.start"), None))
    child_pid = int(marker.name.split("-")[-2])
    assert server.signal(signal.SIGKILL) == -signal.SIGKILL
    wait_for(lambda: not _alive(child_pid), timeout=5)  # the export died with the server: it cannot finish twice
    assert server.marker_count("acme/sleep-2", "done") == 0

    server.start()
    assert server.wait_state(running, DONE)["attempts"] == 2
    assert server.wait_state(waiting, DONE)["attempts"] == 1
    assert (server.marker_count("acme/sleep-2", "start"), server.marker_count("acme/sleep-2", "done")) == (2, 1)
    assert server.marker_count("acme/model", "done") == 1
    assert server.post(push("acme/sleep-2", sha(30))).json()["status"] == "duplicate"
    assert "re-queued 1 job(s) interrupted by the last shutdown" in server.log.read_text()
    assert server.signal(signal.SIGTERM) == 0
    assert_no_secrets(server)


def test_sigterm_lets_a_short_job_finish_requeues_a_long_one_and_exits_0(fresh):
    server = fresh("--workers", "2", "--shutdown-grace", "3").start()
    short = server.post(push("acme/sleep-1", sha(40))).json()["job_id"]
    long = server.post(push("acme/sleep-60", sha(41))).json()["job_id"]
    wait_for(lambda: server.marker_count("acme/sleep-1", "start") and server.marker_count("acme/sleep-60", "start"))
    assert server.signal(signal.SIGTERM, timeout=30) == 0  # well before the long job could have finished
    queue = JobQueue(server.state_dir / "jobs.sqlite3")
    assert queue.get(short).state == DONE
    job = queue.get(long)
    assert (job.state, job.attempts) == (QUEUED, 0) and "the server shut down" in job.message
    assert server.marker_count("acme/sleep-60", "done") == 0
    log = server.log.read_text()
    assert "stopped (SIGTERM)" in log and "Traceback" not in log


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as dead: it runs no code)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
