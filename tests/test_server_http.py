"""The webhook server as the Hub and a maintainer meet it: a real uvicorn process on 127.0.0.1, a real HTTP client.

The server runs `tests.server_runners:scripted` instead of the publish pipeline (`--runner`), which leaves a marker
file per run, so "exactly once" is counted, not assumed. kill -9, SIGTERM and SIGINT are sent to the real process (and
to its whole process group, as a terminal or a service manager does).
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
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
        root.mkdir(parents=True, exist_ok=True)
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
        with open(self.log, "wb") as log:  # a process group of its own, so that a test can signal the whole group
            self.process = subprocess.Popen([*server_command(), *self.options], cwd=REPO_ROOT, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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

    def signal(self, signum: int, timeout: float = 30, *, group: bool = False) -> int:
        """Send `signum` to the server (or to its whole process group, export processes included); its exit status."""
        self.client.close()
        if group:
            os.killpg(self.process.pid, signum)
        else:
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

    def make(*options: str, env: dict | None = None) -> ServerProcess:
        servers.append(ServerProcess(tmp_path / f"server-{len(servers)}", *options, env=env))
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


def test_a_non_ascii_secret_matches_as_utf8_bytes(fresh):
    secret = "whsec-clé-秘密"
    proc = fresh(env={"WEBHOOK_SECRET": secret}).start()
    assert proc.post(push(new=sha(901)), secret=secret.encode()).status_code == 202
    assert proc.post(push(new=sha(902)), secret="whsec-cle-".encode()).status_code == 403
    assert proc.post(push(new=sha(903)), secret=secret.encode("utf-8")[:-1]).status_code == 403
    assert proc.signal(signal.SIGTERM) == 0
    assert secret not in proc.all_logs()


def test_the_secret_is_compared_in_constant_time_as_bytes(tmp_path, monkeypatch):
    """In process (no server needed): the comparison goes through hmac.compare_digest, on the raw bytes."""
    import asyncio

    from bot.server import app as app_module

    compared = []
    real = app_module.hmac.compare_digest
    monkeypatch.setattr(app_module.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    app = app_module.create_app(app_module.ServerSettings(secret="clé", state_dir=tmp_path))

    async def deliver(secret: bytes) -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/webhooks/hub", content=b"[]", headers={"X-Webhook-Secret": secret})
        return response.status_code

    assert asyncio.run(deliver("clé".encode())) == 422  # past the secret: the body is not a payload
    assert asyncio.run(deliver(b"cle")) == 403
    assert compared == [("clé".encode(), "clé".encode()), (b"cle", "clé".encode())]


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
    (b"[" * 5000 + b"]" * 5000, 400, "not valid JSON"),
])
def test_bodies_that_are_not_hub_payloads_are_refused_without_a_500(server, body, status, detail):
    """(Bodies over --max-body-size: test_server_limits.py.)"""
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
    (push(repo="acme-evil/model"), "repo acme-evil/model does not match --allow acme/*"),
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


def test_out_of_memory_deaths_are_reported_as_such_and_not_retried(server):
    killed = server.post(push("acme/oom-kill", sha(3))).json()["job_id"]
    aborted = server.post(push("acme/bad-alloc", sha(4))).json()["job_id"]
    killed_job, aborted_job = server.wait_state(killed, FAILED), server.wait_state(aborted, FAILED)
    assert killed_job["attempts"] == 1 and killed_job["result_status"] in ("killed", "out-of-memory")
    assert "SIGKILL" in killed_job["message"] or "out-of-memory killer" in killed_job["message"]
    assert (aborted_job["attempts"], aborted_job["result_status"]) == (1, "out-of-memory")
    assert aborted_job["message"].startswith("out of memory: the export needed more than its")
    assert (server.marker_count("acme/oom-kill", "start"), server.marker_count("acme/bad-alloc", "start")) == (1, 1)


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


def test_nothing_served_contains_a_local_path(server):
    missing = server.post(push("acme/missing", sha(23))).json()["job_id"]
    full = server.post(push("acme/disk-full", sha(24))).json()["job_id"]
    assert server.wait_state(missing, FAILED)["message"].endswith("No such file or directory: '…/model.onnx'")
    job = server.wait_state(full, FAILED)
    assert job["result_status"] == "disk-full" and "…/model.onnx" in job["message"]
    served = [server.client.get(path).text for path in ("/", "/jobs?limit=1000", f"/jobs/{missing}", "/healthz")]
    for text in served:
        assert str(server.root) not in text and str(server.state_dir) not in text and "/work/" not in text
        assert TOKEN not in text and SECRET not in text
    assert str(server.state_dir) in server.log.read_text()  # the operator's log keeps them


def test_the_export_process_gets_a_small_environment_without_the_secret(server):
    job_id = server.post(push("acme/env", sha(25))).json()["job_id"]
    server.wait_state(job_id, DONE)
    seen = json.loads(next(server.markers.glob("acme__env-*.start")).read_text())
    assert "WEBHOOK_SECRET" not in seen["env_names"] and "SERVER_TEST_MARKERS" not in seen["env_names"]
    assert {"PATH", "HF_TOKEN", "HF_ENDPOINT", "HF_HUB_DISABLE_XET"} <= set(seen["env_names"])
    assert seen["token"] == TOKEN and seen["rlimit_as"] > 0  # the token travels in the job; a memory limit is set


def test_allow_patterns_name_whole_owners(fresh, tmp_path):
    for pattern in ("acme*", "*/model", "ac?me/*"):
        proc = subprocess.run([*server_command(), "--port", "0", "--state-dir", str(tmp_path / "unused"),
                               "--allow", pattern], cwd=REPO_ROOT,
                              env={**os.environ, "WEBHOOK_SECRET": SECRET}, capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 2 and "the owner must be a whole owner name" in proc.stderr, proc.stderr
    proc = fresh("--allow", "acme", "--allow", "other/bert-*").start()
    assert proc.post(push("ACME/anything", sha(26))).status_code == 202
    assert proc.post(push("other/bert-base", sha(27))).status_code == 202
    for repo in ("acme-evil/model", "other/roberta", "evil/acme"):
        response = proc.post(push(repo, sha(28)))
        assert response.json()["status"] == "ignored" and "does not match --allow" in response.json()["reason"]


def test_the_state_dir_is_private_and_a_loose_one_is_tightened(fresh):
    proc = fresh().start()
    assert stat.S_IMODE(proc.state_dir.stat().st_mode) == 0o700
    proc.post(push("acme/model", sha(29)))
    for path in proc.state_dir.iterdir():
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert proc.signal(signal.SIGTERM) == 0

    loose = fresh()
    loose.state_dir.mkdir(parents=True)
    (loose.state_dir / "jobs.sqlite3").write_bytes(b"")
    os.chmod(loose.state_dir / "jobs.sqlite3", 0o644)
    os.chmod(loose.state_dir, 0o755)
    loose.start()
    assert stat.S_IMODE(loose.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((loose.state_dir / "jobs.sqlite3").stat().st_mode) == 0o600
    assert "the state dir was readable by other users; made it private" in loose.log.read_text()


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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_let_a_short_job_finish_requeue_a_long_one_and_exit_0(fresh, signum):
    server = fresh("--workers", "2", "--shutdown-grace", "3").start()
    short = server.post(push("acme/sleep-1", sha(40))).json()["job_id"]
    long = server.post(push("acme/sleep-60", sha(41))).json()["job_id"]
    wait_for(lambda: server.marker_count("acme/sleep-1", "start") and server.marker_count("acme/sleep-60", "start"))
    assert server.signal(signum, timeout=30) == 0  # well before the long job could have finished
    queue = JobQueue(server.state_dir / "jobs.sqlite3")
    assert queue.get(short).state == DONE
    job = queue.get(long)
    assert (job.state, job.attempts) == (QUEUED, 0) and "the server shut down" in job.message
    assert server.marker_count("acme/sleep-60", "done") == 0
    assert list((server.state_dir / "work").iterdir()) == []
    log = server.log.read_text()
    assert f"stopped ({signum.name})" in log and "Traceback" not in log


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_process_group_is_handled_like_one_to_the_server(fresh, signum):
    """A terminal's Ctrl-C or a service manager signals every process of the group: the export must not die of it
    (that would count an attempt and start the job again during the shutdown); the server decides."""
    server = fresh("--shutdown-grace", "1").start()
    job_id = server.post(push("acme/sleep-60", sha(42))).json()["job_id"]
    marker = wait_for(lambda: next(server.markers.glob("acme__sleep-60-*.start"), None))
    child_pid = int(marker.name.split("-")[-2])
    assert server.signal(signum, group=True) == 0
    job = JobQueue(server.state_dir / "jobs.sqlite3").get(job_id)
    assert (job.state, job.attempts) == (QUEUED, 0) and "the server shut down" in job.message
    assert server.marker_count("acme/sleep-60", "start") == 1
    wait_for(lambda: not _alive(child_pid), timeout=5)
    assert list((server.state_dir / "work").iterdir()) == []
    assert f"stopped ({signum.name})" in server.log.read_text()


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
