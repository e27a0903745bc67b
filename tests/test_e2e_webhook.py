"""End to end, as a new user meets the webhook server: the REAL publish pipeline, no runner double.

The Hub emulator runs in this process; `python -m bot serve` runs as a subprocess pointed at it (HF_ENDPOINT) and is
driven over real HTTP with signed deliveries shaped like the Hub's. One export happens in the whole file: everything
after the first job (redelivery, kill -9 and restart, the push that merges the bot's PR) must not export again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for
from tests.test_server_http import push

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO = "acme/tiny-bert"
README = "---\nlicense: apache-2.0\n---\n\n# Tiny BERT\n\nMaintainer text.\n"
SECRET = "s3cret"
TOKEN = "hf_test_token"  # the emulated Hub's write token (hub.env() hands it to the server as HF_TOKEN)
FINAL = ("done", "failed", "skipped")
EXPORT_TIMEOUT = 600  # a tiny bert, 2 features x 2 formats, dynamo first: ~30-60 s on a small machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m bot serve` on a fixed port (a Hub webhook URL does not change when the server restarts)."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = root / "state"
        self.logs: list[Path] = []
        self.process: subprocess.Popen | None = None
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def start(self) -> "Server":
        self.logs.append(self.root / f"server-{len(self.logs) + 1}.log")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--state-dir", str(self.state_dir)],
                cwd=REPO_ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        wait_for(lambda: f"listening on {self.url}" in self.log.read_text() or self.process.poll() is not None,
                 timeout=60)
        assert self.process.poll() is None, f"the server exited:\n{self.log.read_text()}"
        return self

    @property
    def log(self) -> Path:
        return self.logs[-1]

    def all_logs(self) -> str:
        return "".join(p.read_text() for p in self.logs)

    def deliver(self, payload: dict) -> httpx.Response:
        return self.client.post("/webhooks/hub", content=json.dumps(payload),
                                headers={"X-Webhook-Secret": SECRET, "Content-Type": "application/json",
                                         "User-Agent": "huggingface-hub-webhooks"})

    def job(self, job_id: int) -> dict:
        response = self.client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_final(self, job_id: int, timeout: float = EXPORT_TIMEOUT) -> dict:
        def finished():
            assert self.process.poll() is None, f"the server died:\n{self.log.read_text()}"
            job = self.job(job_id)
            return job if job["state"] in FINAL else None

        return wait_for(finished, timeout=timeout, interval=0.5)

    def kill(self, signum: int) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=60)

    def stop(self) -> None:
        self.client.close()
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def server(hub, tmp_path):
    proc = Server(tmp_path, {**os.environ, **hub.env(TOKEN), "WEBHOOK_SECRET": SECRET})
    yield proc
    proc.stop()


def test_a_push_becomes_exactly_one_pr_through_redelivery_kill_9_restart_and_merge(hub, server, tiny):
    checkpoint = tiny("bert", "sequence-classification")
    files = {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()}
    first = hub.create_repo(REPO, {"README.md": README.encode()})
    sha = hub.commit(REPO, files, message="Upload the fine-tuned model")
    server.start()
    assert server.client.get("/healthz").json()["status"] == "ok"

    # 1. the Hub delivers the push: answered at once with a job id, exported by the real pipeline into one PR
    delivery = push(REPO, sha, old=first)
    response = server.deliver(delivery)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    job_id = response.json()["job_id"]
    assert re.search(r'<span class="state (queued|running)">', server.client.get("/").text)  # watched on /
    job = server.wait_final(job_id)
    pr_url = f"{hub.url}/{REPO}/discussions/1"
    assert job["state"] == "done", job
    assert (job["repo_id"], job["sha"], job["attempts"]) == (REPO, sha, 1)
    assert job["pr_url"] == pr_url and job["result_status"] == "opened" and job["duration_s"] > 0

    (pr,) = hub.discussions(REPO)
    assert pr.is_pull_request and pr.status == "open" and pr.author == "bot-user"
    assert "opened by the Hub webhook" in pr.description
    assert hub.head(REPO) == sha  # main untouched: the exports are only offered
    pr_files = hub.files(REPO, "refs/pr/1")
    for path in ("onnx/model.onnx", "torchscript/model.pt", "export_manifest.json", "README.md"):
        assert path in pr_files, path
    assert json.loads(pr_files["export_manifest.json"])["source"]["revision"] == sha
    assert "Maintainer text." in pr_files["README.md"].decode()

    # 2. the maintainer looks at / : the job, its commit and its PR link
    page = server.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f'/{REPO}/commit/{sha}"' in page.text and '<span class="state done">done</span>' in page.text
    assert f'<a href="{pr_url}">PR</a>' in page.text
    assert [j["id"] for j in server.client.get("/jobs").json()] == [job_id]

    # 3. the bot's own commit to refs/pr/1 triggers a delivery too: acknowledged and ignored
    pr_push = push(REPO, hub.head(REPO, "refs/pr/1"), ref="refs/pr/1", old=sha)
    ignored = server.deliver(pr_push)
    assert ignored.status_code == 200 and ignored.json()["status"] == "ignored"

    # 4. the Hub redelivers the same push (it retries on timeouts): a duplicate, nothing runs
    again = server.deliver(delivery)
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "job_id": job_id, "state": "done"}

    # 5. kill -9 and restart on the same state dir and port: nothing re-runs, the job is still there
    assert server.kill(signal.SIGKILL) == -signal.SIGKILL
    server.start()
    # start-up recovery runs before the first request is answered: a job it re-queued would show up here
    assert server.client.get("/healthz").json() == {"status": "ok", "queued": 0, "running": 0, "workers": 1}
    assert server.job(job_id) == job
    assert server.deliver(delivery).json() == {"status": "duplicate", "job_id": job_id, "state": "done"}
    assert len(hub.discussions(REPO)) == 1

    # 6. the maintainer merges the PR; the Hub delivers that push: a new job that ends "up to date" (no PR loop)
    merged = hub.merge_pr(REPO, 1)
    response = server.deliver(push(REPO, merged, old=sha))
    assert response.status_code == 202, response.text
    merge_job = server.wait_final(response.json()["job_id"], timeout=120)
    assert merge_job["state"] == "skipped" and merge_job["message"] == "up to date", merge_job
    assert merge_job["result_status"] == "up-to-date" and merge_job["sha"] == merged
    (pr,) = hub.discussions(REPO)
    assert pr.status == "merged"
    assert "onnx/model.onnx" in hub.files(REPO)

    jobs = server.client.get("/jobs").json()
    assert [(j["id"], j["state"], j["attempts"]) for j in jobs] == [
        (merge_job["id"], "skipped", 1), (job_id, "done", 1)]
    second_log = server.log.read_text()
    assert f"job {job_id} {REPO}@" not in second_log and "re-queued" not in second_log  # only the merge push ran

    # 7. an orderly stop; no log line ever showed the secret or the token
    assert server.kill(signal.SIGTERM) == 0
    logs = server.all_logs()
    assert "Traceback" not in logs
    assert SECRET not in logs and TOKEN not in logs
