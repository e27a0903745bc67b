"""Publishing to the (emulated) Hub with the real huggingface_hub client: one PR, dedupe, loops, faults."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot import publish as pub
from bot.errors import UsageError
from bot.job import PublishJob, make_options

REPO = "acme/tiny-bert"
README = "---\nlicense: apache-2.0\ntags:\n- bert\n---\n\n# Tiny BERT\n\nMaintainer text.\n"
FAST = make_options(exporter="torchscript")  # the publish flow is under test here, not the ONNX exporter


def checkpoint_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}


@pytest.fixture
def repo(hub, tiny):
    hub.create_repo(REPO, {**checkpoint_files(tiny("bert", "sequence-classification")), "README.md": README.encode()})
    return REPO


def run(hub, tmp_path, token="hf_test_token", **job):
    job = PublishJob(repo_id=REPO, options=job.pop("options", FAST), **job)
    return pub.publish(job, endpoint=hub.url, token=token, work_dir=tmp_path / "work")


def strict_validation(monkeypatch, fmt: str) -> None:
    """Make every `fmt` artifact fail validation (no tolerance at all), the other format validate as usual."""
    import bot.pipeline

    real = bot.pipeline.validate

    def validate(kind, runner, names, cases, *tolerance):
        return real(kind, runner, names, cases, *((1e-12, 0.0) if kind == fmt else tolerance))

    monkeypatch.setattr(bot.pipeline, "validate", validate)


def weight_downloads(hub) -> int:
    return sum(1 for method, path in hub.requests if method == "GET" and
               (path.endswith("model.safetensors") or path.startswith("/lfs/")))


def test_opens_one_pr_with_artifacts_manifest_and_card(hub, repo, tmp_path):
    main_before = hub.head(REPO)
    result = run(hub, tmp_path)
    assert result.status == pub.OPENED and result.pr_num == 1 and result.pr_url.endswith("/discussions/1")
    assert hub.head(REPO) == main_before  # main untouched
    files = hub.files(REPO, "refs/pr/1")
    for path in ("onnx/model.onnx", "torchscript/model.pt", "onnx/model_default.onnx", "torchscript/model_default.pt"):
        assert path in files, path
    manifest = json.loads(files["export_manifest.json"])
    assert manifest["source"]["revision"] == main_before and manifest["source"]["model"] == REPO
    readme = files["README.md"].decode()
    assert readme.startswith("---\nlicense: apache-2.0\ntags:\n- bert\n- onnx\n- torchscript\n---\n\n# Tiny BERT\n\n"
                             "Maintainer text.\n")
    assert "<!-- hub-export-bot:start -->" in readme and "`onnx/model.onnx`" in readme
    (pr,) = hub.discussions(REPO)
    assert pr.title == "Add validated ONNX and TorchScript exports (hub-export-bot)" and pr.status == "open"
    assert "| sequence-classification | ONNX | `onnx/model.onnx` |" in pr.description
    assert "✅ validated" in pr.description and "refs/pr/" in pr.description
    assert "`masked-lm`: the checkpoint's head is BertForSequenceClassification" in pr.description
    assert hub.get_commit(REPO, "refs/pr/1").lfs >= {"onnx/model.onnx", "torchscript/model.pt"}


def test_second_run_is_up_to_date_without_downloading_weights(hub, repo, tmp_path):
    run(hub, tmp_path)
    before = weight_downloads(hub)
    result = run(hub, tmp_path / "again")
    assert result.status == pub.UP_TO_DATE and "PR #1" in result.message
    assert result.pr_url == f"{hub.url}/{REPO}/discussions/1"
    assert weight_downloads(hub) == before
    assert len(hub.discussions(REPO)) == 1


def test_merging_the_bot_pr_does_not_trigger_a_new_one(hub, repo, tmp_path):
    run(hub, tmp_path)
    hub.merge_pr(REPO, 1)
    result = run(hub, tmp_path / "after-merge")
    assert result.status == pub.UP_TO_DATE and "match the current weights" in result.message
    assert len(hub.discussions(REPO)) == 1


def test_new_weights_update_the_open_pr_and_comment(hub, repo, tmp_path, tiny):
    run(hub, tmp_path)
    retrained = tiny_retrained(tiny, tmp_path)
    hub.commit(REPO, {"model.safetensors": retrained}, message="retrain")
    result = run(hub, tmp_path / "update")
    assert result.status == pub.UPDATED and result.pr_num == 1
    assert len(hub.discussions(REPO)) == 1
    (pr,) = hub.discussions(REPO)
    assert any("`model.safetensors`" in c for c in pr.comments)
    manifest = json.loads(hub.files(REPO, "refs/pr/1")["export_manifest.json"])
    assert manifest["source"]["files"]["model.safetensors"] == hashlib.sha256(retrained).hexdigest()
    assert manifest["source"]["revision"] == hub.head(REPO)


def tiny_retrained(tiny, tmp_path) -> bytes:
    from tests.tiny import build_checkpoint

    return (build_checkpoint(tmp_path / "retrained", "bert", "sequence-classification", seed=1)
            / "model.safetensors").read_bytes()


def test_a_closed_pr_is_not_reopened_for_the_same_source(hub, repo, tmp_path):
    run(hub, tmp_path)
    hub.close_pr(REPO, 1)
    result = run(hub, tmp_path / "again")
    assert result.status == pub.UP_TO_DATE and "closed without merging" in result.message
    assert len(hub.discussions(REPO)) == 1


def test_nothing_validated_opens_no_pr(hub, repo, tmp_path, monkeypatch):
    strict_validation(monkeypatch, "onnx")
    result = run(hub, tmp_path, options=make_options(formats=["onnx"], exporter="torchscript"))
    assert result.status == pub.FAILED and "nothing validated" in result.message and result.exit_code == 1
    assert hub.discussions(REPO) == []


def test_partial_failure_opens_the_pr_but_is_reported_as_partial(hub, repo, tmp_path, monkeypatch):
    strict_validation(monkeypatch, "onnx")
    result = run(hub, tmp_path)
    assert (result.status, result.pr_action, result.pr_num, result.exit_code) == (pub.PARTIAL, pub.PR_OPENED, 1, 3)
    assert "opened PR #1" in result.message and "2 of 4 requested artifacts failed" in result.message
    files = hub.files(REPO, "refs/pr/1")
    assert "torchscript/model.pt" in files and not any(p.startswith("onnx/") for p in files)
    assert "❌ validation failed (not included)" in hub.discussions(REPO)[0].description
    assert json.loads(files["export_manifest.json"])["status"] == "partial"


def test_a_push_to_the_pr_during_export_is_detected_and_replanned(hub, repo, tmp_path, tiny):
    run(hub, tmp_path)
    hub.commit(REPO, {"model.safetensors": tiny_retrained(tiny, tmp_path)}, message="retrain")
    pushed, messages = [], []

    def race(message):
        messages.append(message)
        if "pushing the new export" in message and not pushed:
            pushed.append(hub.commit(REPO, {"notes.txt": b"maintainer edit"}, branch="refs/pr/1"))

    job = PublishJob(repo_id=REPO, options=FAST)
    result = pub.publish(job, endpoint=hub.url, token="hf_test_token", work_dir=tmp_path / "w", progress=race)
    assert pushed and result.status == pub.UPDATED
    assert any("planning again" in m for m in messages)  # the 412 was seen and the run re-planned
    assert hub.get_commit(REPO, "refs/pr/1").parent == pushed[0]  # committed on top of the maintainer's push
    assert b"maintainer edit" == hub.files(REPO, "refs/pr/1")["notes.txt"]


def test_transient_errors_are_retried(hub, repo, tmp_path):
    hub.fail_next("GET", r"^/api/models/acme/tiny-bert", 503, times=2)
    assert run(hub, tmp_path).status == pub.OPENED


@pytest.mark.parametrize("setup, token, message", [
    (lambda hub: None, "hf_test_token", "not found"),
    (lambda hub: hub.create_repo(REPO, {"config.json": b"{}"}), "hf_bad", "rejected the token"),
])
def test_user_mistakes_are_usage_errors(hub, tmp_path, setup, token, message):
    setup(hub)
    with pytest.raises(UsageError, match=message):
        run(hub, tmp_path, token=token)


def test_unknown_revision_is_a_usage_error(hub, repo, tmp_path):
    with pytest.raises(UsageError, match="revision 'nope' not found"):
        run(hub, tmp_path, revision="nope")


def cli(hub, *args, token="hf_test_token"):
    env = {**os.environ, **hub.env(token)}
    return subprocess.run([sys.executable, "-m", "bot", "publish", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_cli_dry_run_prints_the_pr_and_commits_nothing(hub, repo, tmp_path):
    proc = cli(hub, REPO, "--dry-run", "--exporter", "torchscript", "--format", "torchscript")
    assert proc.returncode == 0, proc.stderr
    assert "PR title: Add validated ONNX and TorchScript exports" in proc.stdout
    assert "  torchscript/model.pt" in proc.stdout and "  README.md" in proc.stdout
    assert hub.discussions(REPO) == []
    assert "hf_test_token" not in proc.stdout + proc.stderr


def test_cli_errors_exit_2_without_traceback(hub, repo, tmp_path):
    for args, token, message in [((REPO,), "hf_read_token", "is read-only"),
                                 (("acme/missing",), "hf_test_token", "not found"),
                                 (("not-a-repo-id",), "hf_test_token", "not a Hub repo id")]:
        proc = cli(hub, *args, "--exporter", "torchscript", "--format", "torchscript", token=token)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert token not in proc.stderr
    assert hub.discussions(REPO) == []
