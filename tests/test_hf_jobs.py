"""Hugging Face Jobs against the emulated Hub: `deploy`, a webhook event -> a Job running `hub-export-bot job` -> a PR.

The emulator (tests/emulators/hub_jobs.py) answers the Jobs and webhooks routes the real HfApi calls and really runs
each Job's command in a subprocess, with the Job's environment and secrets only. Exports use the tiny random BERT; a
delivery repeated after an export must find it and not export again.
"""

from __future__ import annotations

import json

import pytest
from huggingface_hub import HfApi

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


@pytest.fixture
def cli(jobs_hub, monkeypatch, capsys):
    """`hub-export-bot ARGS` in this process (the Jobs it starts run as subprocesses): (exit code, stdout, stderr)."""
    def run(*args: str, secret: str = SECRET):
        for name, value in {**jobs_hub.env(TOKEN), "WEBHOOK_SECRET": secret}.items():
            monkeypatch.setenv(name, value)
        from bot.cli import main

        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def deploy(cli):
    def run(*extra: str, secret: str = SECRET) -> dict:
        code, out, err = cli("deploy", "--image", IMAGE, "--watch", "org:acme", "--flavor", "cpu-basic",
                             "--wait", "60", *extra, secret=secret)
        assert code == 0, err
        assert TOKEN not in out + err
        return json.loads(out.strip().splitlines()[-1])

    return run


def upload(hub, tiny, repo: str = REPO) -> str:
    checkpoint = tiny("bert")
    return hub.create_repo(repo, {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()})


def result_of(hub, job_id: str) -> dict:
    return json.loads([line for line in hub.job_output(job_id).splitlines() if line.startswith("{")][-1])


def bot_prs(hub, repo: str = REPO) -> list:
    return [d for d in hub.discussions(repo) if d.is_pull_request]


def test_deploy_is_idempotent_and_a_pushed_event_becomes_exactly_one_pr(jobs_hub, deploy, tiny):
    hub = jobs_hub
    first = deploy()
    assert first["changed"] and first["webhook_id"] and first["source_job_id"]
    source = hub.jobs[first["source_job_id"]]
    assert source.stage == "COMPLETED" and result_of(hub, source.id)["status"] == "idle"
    assert source.spec["command"] == ["hub-export-bot", "job"] and source.spec["dockerImage"] == IMAGE
    assert TOKEN not in json.dumps(source.spec)  # the token is a secret, never in the spec or the command

    again = deploy()
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


def test_a_failed_job_is_reported_and_a_wrong_secret_is_refused(jobs_hub, deploy, tiny):
    hub = jobs_hub
    deploy()
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

    changed = deploy()  # deploy notices the secret drift and rebinds the one webhook
    assert changed["changed"] and changed["webhook_id"] == hook.id and len(hub.webhooks) == 1
    assert hub.webhooks[hook.id].secret == SECRET


def test_deploy_dry_run_changes_nothing_and_an_option_change_updates_in_place(jobs_hub, cli, deploy):
    hub = jobs_hub
    code, out, err = cli("deploy", "--image", IMAGE, "--watch", "org:acme", "--dry-run")
    assert code == 0, err
    assert "would run a source Job" in out and "flavor cpu-upgrade" in out
    assert TOKEN not in out + err and SECRET not in out + err
    assert hub.jobs == {} and hub.webhooks == {}

    first = deploy()
    watched = deploy("--watch", "model:other/one")  # watched only: updated in place, no new Job
    assert watched["changed"] and watched["source_job_id"] is None and len(hub.jobs) == 1
    flavor = deploy("--watch", "model:other/one", "--flavor", "cpu-upgrade")
    assert flavor["changed"] and flavor["webhook_id"] == first["webhook_id"] and len(hub.webhooks) == 1
    assert hub.webhooks[first["webhook_id"]].job["flavor"] == "cpu-upgrade" and len(hub.jobs) == 2

    code, _, err = cli("deploy", "--image", IMAGE, "--watch", "acme")
    assert code == 2 and "org:NAME" in err
    code, _, err = cli("deploy", "--image", IMAGE, "--watch", "org:acme", secret="")
    assert code == 2 and "WEBHOOK_SECRET" in err


def test_job_entry_filters_as_serve_does():
    import io

    from bot.jobentry import run_job_entry
    from tests.test_server_http import push

    def run(payload: str, **extra: str) -> tuple[int, dict]:
        out = io.StringIO()
        env = {"HF_TOKEN": TOKEN, "WEBHOOK_SECRET": SECRET, "WEBHOOK_PAYLOAD": payload, **extra}
        return run_job_entry(env, out=out), json.loads(out.getvalue())

    code, line = run(json.dumps(push("acme/x", ref="refs/heads/dev")))
    assert code == 0 and line["status"] == "ignored" and "refs/heads/main" in line["message"]
    code, line = run(json.dumps(push("other/x")), HUB_EXPORT_BOT_ALLOW="acme")
    assert code == 0 and line["status"] == "ignored" and "--allow" in line["message"]
    code, line = run("{not json")
    assert code == 2 and "not valid JSON" in line["message"]
    code, line = run(json.dumps(push("acme/x")), WEBHOOK_REPO_ID="acme/y")
    assert code == 2 and "WEBHOOK_REPO_ID" in line["message"]
    code, line = run(json.dumps(push("acme/x")), HUB_EXPORT_BOT_WEBHOOK_SECRET="other")
    assert code == 2 and "does not match" in line["message"]
    code, line = run(json.dumps(push("acme/x")), HF_TOKEN="")
    assert code == 2 and "HF_TOKEN" in line["message"]


def test_serve_with_the_hf_jobs_runner_drains_its_queue_through_jobs(jobs_hub, tiny, tmp_path):
    from tests.test_server_http import SECRET as SERVER_SECRET
    from tests.test_server_http import ServerProcess, assert_no_secrets, push

    hub = jobs_hub
    sha = upload(hub, tiny)
    hub.create_repo("acme/pickled", {"config.json": (tiny("bert") / "config.json").read_bytes(),
                                     "pytorch_model.bin": b"not loaded"})
    server = ServerProcess(tmp_path, "--runner", "hf-jobs", "--job-image", IMAGE, "--job-flavor", "cpu-basic",
                           "--job-poll", "0.2", "--dtype", "fp32", "--allow", "acme",
                           env={**hub.env(TOKEN), "HF_TOKEN": TOKEN}).start()
    try:
        queued = server.post(push(REPO, sha)).json()["job_id"]
        failing = server.post(push("acme/pickled", hub.head("acme/pickled"))).json()["job_id"]
        done = server.wait_state(queued, "done", "failed", "skipped", timeout=240)
        assert done["state"] == "done", done
        assert done["pr_url"] == f"{hub.url}/{REPO}/discussions/1"
        failed = server.wait_state(failing, "done", "failed", "skipped", timeout=120)
        assert failed["state"] == "failed" and "safetensors" in failed["message"]
        assert f"(logs: {hub.url}/jobs/bot-user/" in failed["message"]
        assert server.client.get("/healthz").json()["queued"] == 0
        exports = [j for j in hub.jobs.values() if (j.spec.get("labels") or {}).get("hub-export-bot") == "export"]
        assert len(exports) == 2 and all(j.spec["flavor"] == "cpu-basic" for j in exports)
        assert all(TOKEN not in json.dumps(j.spec) for j in exports)
        assert len(bot_prs(hub)) == 1
        assert server.signal(15) == 0
        assert_no_secrets(server)
        assert SERVER_SECRET not in "".join(hub.job_output(j.id) for j in exports)
    finally:
        server.stop()


def test_a_pr_opened_by_a_concurrent_run_is_updated_instead_of_opening_a_second(jobs_hub, tiny, tmp_path,
                                                                                  monkeypatch):
    """Duplicate deliveries racing: the other run's PR appears after this run planned, just before it commits."""
    from huggingface_hub import CommitOperationAdd

    import bot.publish as publish_module
    from bot.card import PR_TITLE
    from bot.job import PublishJob, make_options

    hub = jobs_hub
    sha = upload(hub, tiny)
    real_check = publish_module._no_new_bot_pr
    raced: list[int] = []

    def racing_check(client, repo, identity, known):
        if not raced:  # the concurrent run opens its PR now, between this run's plan and its commit
            info = HfApi(endpoint=hub.url, token=TOKEN).create_commit(
                REPO, [CommitOperationAdd("notes.txt", b"other run")], commit_message=PR_TITLE, create_pr=True)
            raced.append(info.pr_num)
        return real_check(client, repo, identity, known)

    monkeypatch.setattr(publish_module, "_no_new_bot_pr", racing_check)
    job = PublishJob(repo_id=REPO, revision=sha, options=make_options(formats=["onnx"]), trigger="webhook")
    result = publish_module.publish(job, endpoint=hub.url, token=TOKEN, work_dir=tmp_path)
    assert result.status == "updated" and result.pr_num == raced[0]
    assert [d.num for d in bot_prs(hub)] == raced
    assert "export_manifest.json" in hub.files(REPO, f"refs/pr/{raced[0]}")
