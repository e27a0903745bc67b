"""End to end, as a new user meets the GitHub Action: the REAL publish pipeline, no publish double.

The example workflow's step, replayed locally: `python -m bot action` runs as a subprocess with the environment the
runner gives it (a push event, GITHUB_OUTPUT, GITHUB_STEP_SUMMARY, the inputs as INPUT_* variables), against the Hub
emulator and the GitHub emulator (which the real PyGithub talks to). Two exports in the whole file: one that opens the
PR (its re-run must not export again) and one ONNX-only export that cannot validate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.emulators.github import GitHubEmulator, read_github_output
from tests.emulators.hub import HubEmulator

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "acme/model-src"  # the GitHub repository holding the checkpoint
HUB_REPO = "acme/tiny-bert"
TABLE_HEADER = "| feature | format | file | size | max diff / atol | status |"  # templates/action_summary.md.j2
HF_TOKEN = "hf_test_token"  # the emulated Hub's write token
GH_TOKEN = "ghs_test_token"  # the GitHub emulator's Actions token
README = "---\nlicense: apache-2.0\n---\n\n# Tiny BERT\n\nMaintainer text.\n"
# `hub-export-bot action` with every ONNX artifact held to no tolerance at all (atol 1e-12, rtol 0), so that ONNX
# fails validation while TorchScript (bit-exact) still passes: the real pipeline, one function replaced.
STRICT_ONNX = """
import bot.pipeline
real = bot.pipeline.validate
def validate(kind, runner, names, cases, *tolerance):
    return real(kind, runner, names, cases, *((1e-12, 0.0) if kind == "onnx" else tolerance))
bot.pipeline.validate = validate
from bot.cli import main
raise SystemExit(main(["action"]))
"""


@pytest.fixture
def gh():
    with GitHubEmulator() as emulator:
        yield emulator
    assert emulator.errors == []


class ActionRun:
    """One `hub-export-bot action` step and everything it left behind."""

    def __init__(self, environ: dict[str, str], command: tuple[str, ...] = ("-m", "bot", "action")):
        self.environ = environ
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith(("GITHUB_", "INPUT_", "RUNNER_")) and k not in ("HF_TOKEN", "HF_ENDPOINT")}
        inherited["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), inherited.get("PYTHONPATH")]))
        self.proc = subprocess.run([sys.executable, *command], env={**inherited, **environ},
                                   cwd=environ["GITHUB_WORKSPACE"], capture_output=True, text=True, timeout=900)
        self.code = self.proc.returncode
        self.stdout, self.stderr = self.proc.stdout, self.proc.stderr
        self.outputs_text = Path(environ["GITHUB_OUTPUT"]).read_text()
        self.outputs = read_github_output(environ["GITHUB_OUTPUT"])
        self.summary = Path(environ["GITHUB_STEP_SUMMARY"]).read_text()
        self.report_path = Path(self.outputs["report"]) if self.outputs.get("report") else None
        self.report = json.loads(self.report_path.read_text()) if self.report_path else None

    def __str__(self) -> str:  # what pytest shows when an assertion on the run fails
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}\n--- summary\n{self.summary}"

    def assert_no_tokens(self, *more: str) -> None:
        lines = self.stdout.splitlines()
        assert lines[:2] == [f"::add-mask::{HF_TOKEN}", f"::add-mask::{GH_TOKEN}"], self
        shown = "\n".join([*lines[2:], self.stderr, self.summary, self.outputs_text, self.report_path.read_text(),
                           *more])
        for token in (HF_TOKEN, GH_TOKEN):
            assert token not in shown


def workflow_env(hub: HubEmulator, gh: GitHubEmulator, sha: str, directory: Path, checkpoint: Path, **inputs: str):
    """The example workflow's step: a push of `sha` to SOURCE, the checkpoint checked out under model/, the inputs as
    action.yml passes them. Like on a runner, the Hub token arrives only as an input (no HF_TOKEN variable)."""
    environ = gh.push_env(SOURCE, directory, sha)
    shutil.copytree(checkpoint, Path(environ["GITHUB_WORKSPACE"], "model"))
    environ.update({k: v for k, v in hub.env(HF_TOKEN).items() if k != "HF_TOKEN"})
    environ.update({"GITHUB_RUN_ID": "4242", "INPUT_MODEL_PATH": "model", "INPUT_HUB_REPO": HUB_REPO,
                    "INPUT_FEATURES": "", "INPUT_FORMATS": "onnx,torchscript", "INPUT_OPSET": "18", "INPUT_ATOL": "",
                    "INPUT_HF_TOKEN": HF_TOKEN, "INPUT_GITHUB_TOKEN": GH_TOKEN, "INPUT_DRY_RUN": "false",
                    "INPUT_COMMENT": "true"})
    environ.update(inputs)
    return environ


@pytest.fixture
def source(hub, gh, tiny):
    """The Hub repo (a model card, nothing exported yet) and the GitHub commit that adds the checkpoint."""
    hub.create_repo(HUB_REPO, {"README.md": README.encode()})
    gh.add_repo(SOURCE)
    sha = gh.add_commit(SOURCE, message="Add the fine-tuned checkpoint\n\ntrained for 3 epochs")
    return sha, tiny("bert", "sequence-classification")


def statuses(gh: GitHubEmulator, sha: str) -> list[tuple]:
    return [(s["state"], s["context"], s["description"], s["target_url"]) for s in gh.statuses[(SOURCE, sha)]]


def test_a_push_opens_one_hub_pr_with_outputs_summary_and_green_status_and_a_rerun_is_up_to_date(
        hub, gh, source, tmp_path):
    sha, checkpoint = source
    commit_url = f"{gh.url}/{SOURCE}/commit/{sha}"
    run_url = f"{gh.url}/{SOURCE}/actions/runs/4242"
    pr_url = f"{hub.url}/{HUB_REPO}/discussions/1"

    run = ActionRun(workflow_env(hub, gh, sha, tmp_path / "run-1", checkpoint))
    assert run.code == 0, run
    assert "::group::Export model at" in run.stdout and "::endgroup::" in run.stdout

    # outputs for later steps
    assert (run.outputs["pr-url"], run.outputs["status"]) == (pr_url, "opened")
    assert run.report_path.is_file()
    assert (run.report["status"], run.report["pr_url"], run.report["exit_code"]) == ("opened", pr_url, 0)
    assert run.report["source"] == {"repository": SOURCE, "sha": sha, "url": commit_url, "model_path": "model"}
    paths = sorted(a["path"] for a in run.report["export"]["artifacts"])
    assert "onnx/model.onnx" in paths and "torchscript/model.pt" in paths
    assert all(a["passed"] for a in run.report["export"]["artifacts"]) and run.report["export"]["failures"] == []

    # the step summary a person reads: headline, source, one row per artifact
    assert f"✅ hub-export-bot opened [PR #1]({pr_url}) on [`{HUB_REPO}`]({hub.url}/{HUB_REPO})" in run.summary
    assert f"[`{SOURCE}@{sha[:7]}`]({commit_url}) (Add the fine-tuned checkpoint)" in run.summary
    assert TABLE_HEADER in run.summary
    rows = [line for line in run.summary.splitlines() if line.startswith("| `")]
    assert len(rows) == len(paths) and all(line.endswith("| ✅ validated |") for line in rows)
    assert "| `sequence-classification` | ONNX | `onnx/model.onnx` |" in run.summary
    assert "| `sequence-classification` | TorchScript | `torchscript/model.pt` |" in run.summary

    # GitHub: pending while exporting, then green on GITHUB_SHA linking to the Hub PR; a comment with the link
    assert statuses(gh, sha) == [
        ("pending", "hub-export-bot", f"Exporting model to {HUB_REPO}…", run_url),
        ("success", "hub-export-bot", f"{len(paths)} artifacts validated, PR #1 opened", pr_url)]
    [comment] = gh.commit_comments[(SOURCE, sha)]
    assert pr_url in comment["body"] and TABLE_HEADER in comment["body"]

    # the Hub: exactly one PR with the artifacts, linking back to the GitHub commit; main untouched
    (pr,) = hub.discussions(HUB_REPO)
    assert pr.is_pull_request and pr.status == "open"
    assert commit_url in pr.description and "opened by a GitHub Action" in pr.description
    pr_files = hub.files(HUB_REPO, "refs/pr/1")
    for path in (*paths, "export_manifest.json", "README.md"):
        assert path in pr_files, path
    assert "Maintainer text." in pr_files["README.md"].decode()
    assert "onnx/model.onnx" not in hub.files(HUB_REPO)
    run.assert_no_tokens(json.dumps(gh.statuses[(SOURCE, sha)]), json.dumps(gh.commit_comments[(SOURCE, sha)]),
                         pr.description, *pr.comments)

    # "Re-run jobs" on the same commit (a fresh runner): up to date, green, no second PR, no new comment
    rerun = ActionRun(workflow_env(hub, gh, sha, tmp_path / "run-2", checkpoint))
    assert rerun.code == 0, rerun
    assert (rerun.outputs["status"], rerun.outputs["pr-url"]) == ("up-to-date", pr_url)  # the open PR
    assert rerun.report["status"] == "up-to-date" and rerun.report["export"] is None  # nothing was exported
    assert f"[`{HUB_REPO}`]({hub.url}/{HUB_REPO}) is up to date" in rerun.summary
    assert "PR #1 already has these exports" in rerun.summary
    assert statuses(gh, sha)[-1] == ("success", "hub-export-bot",
                                     "Up to date: the Hub repo already has exports of these files", pr_url)
    assert len(gh.commit_comments[(SOURCE, sha)]) == 1
    assert len(hub.discussions(HUB_REPO)) == 1 and len(hub.files(HUB_REPO, "refs/pr/1")) == len(pr_files)
    rerun.assert_no_tokens(json.dumps(gh.statuses[(SOURCE, sha)]))


def test_an_export_that_does_not_validate_is_red_explained_and_opens_no_pr(hub, gh, source, tmp_path):
    sha, checkpoint = source
    run_url = f"{gh.url}/{SOURCE}/actions/runs/4242"
    # one ONNX export (one feature) held to an impossible tolerance: nothing validates
    run = ActionRun(workflow_env(hub, gh, sha, tmp_path / "run", checkpoint, INPUT_FORMATS="onnx",
                                 INPUT_FEATURES="sequence-classification", INPUT_ATOL="1e-12"),
                    command=("-c", STRICT_ONNX))
    assert run.code == 1, run
    assert (run.outputs["status"], run.outputs["pr-url"]) == ("failed", "")
    assert run.report["status"] == "failed" and run.report["exit_code"] == 1 and run.report["pr_url"] is None
    [failure] = run.report["export"]["failures"]
    assert (failure["feature"], failure["format"], failure["atol"]) == ("sequence-classification", "onnx", 1e-12)
    assert failure["max_abs_diff"] > 1e-12 and run.report["export"]["artifacts"] == []
    assert f"::error title=hub-export-bot%3A publishing to {HUB_REPO} failed::nothing validated" in run.stdout

    # the summary says what failed, why, and how to retry
    assert f"❌ hub-export-bot could not publish to [`{HUB_REPO}`]" in run.summary
    assert "#### Why it failed" in run.summary and "nothing validated, no PR opened" in run.summary
    [row] = [line for line in run.summary.splitlines() if line.startswith("| `")]
    assert row.startswith("| `sequence-classification` | ONNX | not written | — |") and " / 1.0e-12 | ❌" in row
    assert "#### How to retry" in run.summary and "`atol` input" in run.summary

    # GitHub: red, linking to the job log where the details are; the comment explains too
    assert statuses(gh, sha)[-1] == ("failure", "hub-export-bot", "Failed: 1 of 1 artifacts did not validate",
                                     run_url)
    [comment] = gh.commit_comments[(SOURCE, sha)]
    assert "Why it failed" in comment["body"]

    # the Hub: no PR, nothing committed
    assert hub.discussions(HUB_REPO) == []
    assert set(hub.files(HUB_REPO)) == {".gitattributes", "README.md"}
    run.assert_no_tokens(json.dumps(gh.statuses[(SOURCE, sha)]), comment["body"])


def test_a_partial_export_opens_the_pr_but_exits_3_with_a_partial_status(hub, gh, source, tmp_path):
    sha, checkpoint = source
    pr_url = f"{hub.url}/{HUB_REPO}/discussions/1"
    run = ActionRun(workflow_env(hub, gh, sha, tmp_path / "run", checkpoint,
                                 INPUT_FEATURES="sequence-classification"), command=("-c", STRICT_ONNX))
    assert run.code == 3, run
    assert (run.outputs["status"], run.outputs["pr-url"]) == ("partial", pr_url)
    assert (run.report["status"], run.report["exit_code"], run.report["pr_action"]) == ("partial", 3, "opened")
    assert f"⚠️ hub-export-bot opened [PR #1]({pr_url})" in run.summary
    assert "but 1 of 2 requested artifacts failed" in run.summary
    assert statuses(gh, sha)[-1] == ("failure", "hub-export-bot", "Partial: 1 of 2 artifacts failed, PR #1 opened",
                                     pr_url)
    files = hub.files(HUB_REPO, "refs/pr/1")
    assert "torchscript/model.pt" in files and "onnx/model.onnx" not in files
    run.assert_no_tokens(json.dumps(gh.statuses[(SOURCE, sha)]))
