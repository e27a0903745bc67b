"""Hugging Face Jobs against the emulated Hub: `deploy`, a webhook event -> a Job running `hub-export-bot job` -> one PR.

The emulator (tests/emulators/hub_jobs.py) answers the Jobs and webhooks routes the real HfApi calls and really runs
each Job's command in a subprocess, with the Job's environment and secrets only. One export happens in this file's
main flow; every later delivery must find it and not export again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from tests.conftest import wait_for

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO = "acme/tiny-bert"
SECRET = "webhook-s3cret"
TOKEN = "hf_test_token"
IMAGE = "registry.example/hub-export-bot:1"


@pytest.fixture
def jobs_hub():
    from tests.emulators.hub_jobs import JobsHub

    with JobsHub() as emulator:
        emulator.orgs["acme"] = {"bot-user"}
        yield emulator


def cli(hub, *args: str, secret: str = SECRET, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, **hub.env(TOKEN), "WEBHOOK_SECRET": secret}
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def deploy(hub, *extra: str, secret: str = SECRET) -> dict:
    done = cli(hub, "deploy", "--image", IMAGE, "--watch", "org:acme", "--flavor", "cpu-basic", "--wait", "60",
               *extra, secret=secret)
    assert done.returncode == 0, done.stderr
    assert TOKEN not in done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def upload(hub, tiny, repo: str = REPO) -> str:
    checkpoint = tiny("bert")
    return hub.create_repo(repo, {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()})


def result_of(hub, job_id: str) -> dict:
    return json.loads([line for line in hub.job_output(job_id).splitlines() if line.startswith("{")][-1])


def bot_prs(hub, repo: str = REPO) -> list:
    return [d for d in hub.discussions(repo) if d.is_pull_request]


def test_deploy_is_idempotent_and_a_pushed_event_becomes_exactly_one_pr(jobs_hub, tiny):
    hub = jobs_hub
    first = deploy(hub)
    assert first["changed"] and first["webhook_id"] and first["source_job_id"]
    source = hub.jobs[first["source_job_id"]]
    assert source.stage == "COMPLETED" and result_of(hub, source.id)["status"] == "idle"
    assert source.spec["command"] == ["hub-export-bot", "job"] and source.spec["dockerImage"] == IMAGE
    assert TOKEN not in json.dumps(source.spec)  # the token is a secret, never in the spec or the command

    again = deploy(hub)
    assert not again["changed"] and "nothing changed" in again["actions"][0]
    assert len(hub.webhooks) == 1 and len(hub.jobs) == 1  # no second webhook, no second source Job

    hook = hub.webhooks[first["webhook_id"]]
    assert hook.watched == [{"type": "org", "name": "acme"}] and hook.domains == ["repo"]
    assert set(hook.secrets) == {"HF_TOKEN", "HUB_EXPORT_BOT_WEBHOOK_SECRET"}
    assert HfApi(endpoint=hub.url, token=TOKEN).list_webhooks()[0].job.docker_image == IMAGE

    sha = upload(hub, tiny)
    [job_id] = hub.push_event(REPO)
    job = hub.wait_job(job_id)
    assert job.stage == "COMPLETED", hub.job_output(job_id)
    assert job.initiator == {"type": "webhook", "id": hook.id}
    opened = result_of(hub, job_id)
    assert opened["status"] == "opened" and opened["sha"] == sha and opened["pr_num"] == 1
    assert [d.num for d in bot_prs(hub)] == [1]
    assert "export_manifest.json" in hub.files(REPO, "refs/pr/1")

    [again_id] = hub.push_event(REPO)  # the same event delivered again: found, not exported twice
    assert hub.wait_job(again_id).stage == "COMPLETED"
    assert result_of(hub, again_id)["status"] == "up-to-date"
    assert len(bot_prs(hub)) == 1


def test_a_failed_job_is_reported_and_a_wrong_secret_is_refused(jobs_hub, tiny):
    hub = jobs_hub
    deploy(hub)
    checkpoint = tiny("bert")
    hub.create_repo("acme/pickled", {"config.json": (checkpoint / "config.json").read_bytes(),
                                     "pytorch_model.bin": b"not loaded"})
    [job_id] = hub.push_event("acme/pickled")
    job = hub.wait_job(job_id)
    assert job.stage == "ERROR" and job.message == "Job failed with exit code: 2"
    failed = result_of(hub, job_id)
    assert failed["status"] == "error" and "safetensors" in failed["message"]
    assert bot_prs(hub, "acme/pickled") == []

    hook = next(iter(hub.webhooks.values()))
    hook.secret = "changed-by-hand"  # the event is no longer signed with the secret the Job was deployed with
    [job_id] = hub.push_event("acme/pickled")
    assert hub.wait_job(job_id).stage == "ERROR"
    assert "does not match" in result_of(hub, job_id)["message"]

    changed = deploy(hub)  # deploy notices the secret drift and rebinds the one webhook
    assert changed["changed"] and changed["webhook_id"] == hook.id and len(hub.webhooks) == 1
    assert hub.webhooks[hook.id].secret == SECRET


def test_deploy_dry_run_changes_nothing_and_an_option_change_updates_in_place(jobs_hub):
    hub = jobs_hub
    dry = cli(hub, "deploy", "--image", IMAGE, "--watch", "org:acme", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would run a source Job" in dry.stdout and "flavor cpu-upgrade" in dry.stdout
    assert TOKEN not in dry.stdout + dry.stderr and SECRET not in dry.stdout + dry.stderr
    assert hub.jobs == {} and hub.webhooks == {}

    first = deploy(hub)
    watched = deploy(hub, "--watch", "model:other/one")  # watched only: updated in place, no new Job
    assert watched["changed"] and watched["source_job_id"] is None and len(hub.jobs) == 1
    flavor = deploy(hub, "--watch", "model:other/one", "--flavor", "cpu-upgrade")
    assert flavor["changed"] and flavor["webhook_id"] == first["webhook_id"] and len(hub.webhooks) == 1
    assert hub.webhooks[first["webhook_id"]].job["flavor"] == "cpu-upgrade" and len(hub.jobs) == 2

    bad = cli(hub, "deploy", "--image", IMAGE, "--watch", "acme")
    assert bad.returncode == 2 and "org:NAME" in bad.stderr
    unset = cli(hub, "deploy", "--image", IMAGE, "--watch", "org:acme", secret="")
    assert unset.returncode == 2 and "WEBHOOK_SECRET" in unset.stderr


def test_job_entry_filters_as_serve_does(jobs_hub):
    from tests.test_server_http import push

    env = {**os.environ, **jobs_hub.env(TOKEN), "WEBHOOK_SECRET": SECRET,
           "WEBHOOK_PAYLOAD": json.dumps(push("acme/x", ref="refs/heads/dev"))}
    ignored = subprocess.run([sys.executable, "-m", "bot", "job"], cwd=REPO_ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
    assert ignored.returncode == 0 and json.loads(ignored.stdout)["status"] == "ignored"
    env["WEBHOOK_PAYLOAD"] = "{not json"
    bad = subprocess.run([sys.executable, "-m", "bot", "job"], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "not valid JSON" in json.loads(bad.stdout)["message"]
