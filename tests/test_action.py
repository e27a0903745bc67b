"""The GitHub Action: action.yml's shape and injection rule, bot.action's adaptor, bot.github against the emulator,
and `hub-export-bot action` run as a subprocess in a replayed push-event environment.

The publish pipeline is replaced by the doubles in tests/action_fakes.py; GitHub is the emulator, driven by the real
PyGithub. An end-to-end run with the real pipeline and the Hub emulator lives with the publish tests.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot import action
from bot.action import escape_data, escape_property, run_action
from bot.github import CONTEXT, DEFAULT_RETRY, make_retry, report_to_github
from tests import action_fakes
from tests.emulators.github import read_github_output

ROOT = Path(__file__).resolve().parents[1]
REPO = "acme/models"
HUB_REPO = "my-org/my-model"
HF_TOKEN = "hf_SecretValue_0123456789"
GH_TOKEN = "ghs_test_token"
ENDPOINT = "https://hub.example"
INPUTS = {  # action input -> the environment variable action.yml passes it as
    "model-path": "INPUT_MODEL_PATH", "hub-repo": "INPUT_HUB_REPO", "features": "INPUT_FEATURES",
    "formats": "INPUT_FORMATS", "opset": "INPUT_OPSET", "atol": "INPUT_ATOL", "dtypes": "INPUT_DTYPES", "hf-token": "INPUT_HF_TOKEN",
    "github-token": "INPUT_GITHUB_TOKEN", "dry-run": "INPUT_DRY_RUN", "comment": "INPUT_COMMENT",
}


# -- action.yml and the example workflow -------------------------------------------------------------------------


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def action_yml() -> dict:
    return load_yaml(ROOT / "action.yml")


def steps(action_yml: dict) -> list[dict]:
    return action_yml["runs"]["steps"]


def export_step(action_yml: dict) -> dict:
    return next(step for step in steps(action_yml) if step.get("id") == "export")


def test_action_inputs_and_defaults(action_yml):
    inputs = action_yml["inputs"]
    assert set(inputs) == set(INPUTS) | {"python-version"}
    defaults = {name: spec.get("default") for name, spec in inputs.items()}
    assert defaults == {"model-path": ".", "hub-repo": None, "features": "", "formats": "onnx,torchscript",
                        "opset": "18", "atol": "", "dtypes": "", "hf-token": None, "github-token": "${{ github.token }}",
                        "dry-run": "false", "comment": "false", "python-version": "3.11"}
    assert {name for name, spec in inputs.items() if spec.get("required")} == {"hub-repo", "hf-token"}
    assert all(spec.get("description") for spec in inputs.values())


def test_action_outputs_come_from_the_export_step(action_yml):
    assert action_yml["runs"]["using"] == "composite"
    outputs = action_yml["outputs"]
    assert {name: spec["value"] for name, spec in outputs.items()} == {
        name: f"${{{{ steps.export.outputs.{name} }}}}" for name in ("pr-url", "pr-number", "report", "status", "output-dir")}


def test_no_expression_is_interpolated_into_a_script(action_yml):
    """Script injection rule: `${{ inputs.* }}` or `${{ github.event.* }}` in `run:` is pasted in before bash runs.
    Stricter here: no expression at all inside a script; values arrive through `env:`."""
    scripts = [step["run"] for step in steps(action_yml) if "run" in step]
    assert len(scripts) >= 3
    for script in scripts:
        assert "${{" not in script, script
    assert all(step.get("shell") == "bash" for step in steps(action_yml) if "run" in step)


def test_every_input_reaches_the_command_only_through_env(action_yml):
    step = export_step(action_yml)
    env = step["env"]
    for name, variable in INPUTS.items():
        assert env[variable] == f"${{{{ inputs.{name} }}}}"
    assert "hub-export-bot" in step["run"] and step["run"].rstrip().endswith("action")
    python = next(s for s in steps(action_yml) if s.get("uses", "").startswith("actions/setup-python@"))
    assert python["uses"] == "actions/setup-python@v5"
    assert python["with"]["python-version"] == "${{ inputs.python-version }}"


def test_install_steps_use_cpu_torch_and_cache_pip_on_the_actions_pyproject(action_yml):
    install = next(step for step in steps(action_yml) if step.get("id") == "install")["run"]
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in install  # pinned, CPU only
    assert install.index("whl/cpu torch") < install.index('"$GITHUB_ACTION_PATH"')  # torch first, then the project
    key_step = next(step for step in steps(action_yml) if step.get("id") == "pip-cache")
    assert 'pathlib.Path(os.environ["GITHUB_ACTION_PATH"], "pyproject.toml")' in key_step["run"]
    cache = next(step for step in steps(action_yml) if step.get("uses", "").startswith("actions/cache@"))
    assert "steps.pip-cache.outputs.hash" in cache["with"]["key"]
    assert cache["with"]["path"] == "${{ steps.pip-cache.outputs.dir }}"


def test_example_workflow_is_what_a_user_copies(action_yml):
    workflow = load_yaml(ROOT / ".github/workflows/example-export.yml")
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert set(triggers) == {"push", "pull_request", "workflow_dispatch"}
    assert triggers["push"]["branches"] == ["main"] and triggers["push"]["paths"]
    assert workflow["permissions"] == {"contents": "read", "statuses": "write"}
    assert "${{ github.ref }}" in workflow["concurrency"]["group"]
    job = workflow["jobs"]["export"]
    assert 0 < job["timeout-minutes"] <= 120
    job_steps = job["steps"]
    assert job_steps[0]["uses"].startswith("actions/checkout@") and job_steps[0]["with"]["lfs"] is True
    use = next(step for step in job_steps if step.get("uses") == "hub-export-bot/hub-export-bot@v1")
    assert use["with"]["hub-repo"] == HUB_REPO and use["with"]["hf-token"] == "${{ secrets.HF_TOKEN }}"
    assert use["with"]["dry-run"] == "${{ github.event_name == 'pull_request' }}"  # a PR check never publishes
    # a commit comment needs `contents: write`, which the example does not grant: the default must not ask for it
    assert "comment" not in use["with"] and action_yml["inputs"]["comment"]["default"] == "false"
    upload = job_steps[-1]
    assert upload["uses"].startswith("actions/upload-artifact@")
    assert upload["with"]["path"] == "${{ steps.export.outputs.output-dir }}"
    assert set(use["with"]) <= set(action_yml["inputs"])


def test_the_docs_show_the_example_workflow_verbatim():
    example = (ROOT / ".github/workflows/example-export.yml").read_text()
    body = "".join(line for line in example.splitlines(keepends=True) if not line.startswith("#"))
    docs = (ROOT / "docs/github-action.md").read_text()
    assert f"```yaml\n{body}```" in docs


# -- bot.action with doubles for publish and the GitHub emulator ------------------------------------------------


@pytest.fixture
def sha(gh):
    gh.add_repo(REPO)
    return gh.add_commit(REPO, message="Fine-tune on more data\n\nlonger body")


@pytest.fixture
def env(gh, sha, tmp_path):
    """The example workflow's environment: a push event, the action's inputs as action.yml passes them."""
    environ = gh.push_env(REPO, tmp_path, sha)
    workspace = Path(environ["GITHUB_WORKSPACE"])
    (workspace / "config.json").write_text('{"model_type": "bert"}')
    (workspace / "model.safetensors").write_bytes(b"\0" * 2048)
    environ.update({"GITHUB_RUN_ID": "4242", "HF_ENDPOINT": ENDPOINT, "INPUT_MODEL_PATH": ".",
                    "INPUT_HUB_REPO": HUB_REPO, "INPUT_FEATURES": "", "INPUT_FORMATS": "onnx,torchscript",
                    "INPUT_OPSET": "18", "INPUT_ATOL": "", "INPUT_HF_TOKEN": HF_TOKEN, "INPUT_GITHUB_TOKEN": GH_TOKEN,
                    "INPUT_DRY_RUN": "false", "INPUT_COMMENT": "true"})
    return environ


class Run:
    """One run_action call and everything it left behind."""

    def __init__(self, environ: dict, publish_fn) -> None:
        self.environ = environ
        self.calls = []

        def recording(job, **kwargs):
            self.calls.append((job, kwargs))
            return publish_fn(job, **kwargs)

        out = io.StringIO()
        self.code = run_action(environ, publish_fn=recording, out=out)
        self.stdout = out.getvalue()
        self.outputs = read_github_output(environ["GITHUB_OUTPUT"])
        self.summary = Path(environ["GITHUB_STEP_SUMMARY"]).read_text()
        self.report = json.loads(Path(self.outputs["report"]).read_text()) if self.outputs.get("report") else None

    @property
    def call(self) -> dict:
        return json.loads((Path(self.calls[0][1]["work_dir"]) / "publish_call.json").read_text())


def statuses(gh, sha):
    return [(s["state"], s["context"], s["description"], s["target_url"]) for s in gh.statuses[(REPO, sha)]]


def test_opened_sets_outputs_summary_green_status_and_comment(gh, sha, env):
    run = Run(env, action_fakes.opened)
    pr_url = f"{ENDPOINT}/{HUB_REPO}/discussions/3"
    assert run.code == 0, run.stdout
    assert run.outputs["pr-url"] == pr_url and run.outputs["status"] == "opened"
    assert run.report["status"] == "opened" and run.report["pr_url"] == pr_url
    assert [(a["path"], a["passed"], a["atol"]) for a in run.report["export"]["artifacts"]] == [
        ("onnx/model.onnx", True, 1e-4), ("torchscript/model.pt", True, 1e-4)]
    assert run.report["export"]["artifacts"][0]["max_abs_diff"] == pytest.approx(3.1e-6)
    assert run.report["export"]["skipped"] == {"masked-lm": action_fakes.export_result(".").skipped["masked-lm"]}

    # the job handed to the pipeline: the workspace checkout, linked back to the GitHub commit
    call = run.call
    assert call["source_dir"] == str(Path(env["GITHUB_WORKSPACE"]).resolve())
    assert call["source_url"] == f"{gh.url}/{REPO}/commit/{sha}"
    assert (call["repo_id"], call["trigger"], call["endpoint"]) == (HUB_REPO, "action", ENDPOINT)
    assert call["token_given"] is True
    assert (call["features"], call["formats"], call["opset"], call["atol"]) == ([], ["onnx", "torchscript"], 18, None)
    assert Path(call["work_dir"]).parent == Path(env["RUNNER_TEMP"])

    # the summary a person reads
    assert f"opened [PR #3]({pr_url})" in run.summary
    assert "| `default` | ONNX | `onnx/model.onnx` | 1.2 MB | 3.1e-06 / 1.0e-04 | ✅ validated |" in run.summary
    assert "- `masked-lm`: the checkpoint has no weights" in run.summary
    assert f"[`{REPO}@{sha[:7]}`]({gh.url}/{REPO}/commit/{sha}) (Fine-tune on more data)" in run.summary

    # GitHub: pending while exporting, then green with counts, linking to the Hub PR; and a commit comment
    assert statuses(gh, sha) == [
        ("pending", CONTEXT, f"Exporting . to {HUB_REPO}…", f"{gh.url}/{REPO}/actions/runs/4242"),
        ("success", CONTEXT, "2 artifacts validated, PR #3 opened", pr_url)]
    [comment] = gh.commit_comments[(REPO, sha)]
    assert pr_url in comment["body"] and "| feature | format | file |" in comment["body"]


def test_log_uses_groups_and_neutralises_untrusted_commands(env):
    run = Run(env, action_fakes.opened)
    lines = run.stdout.splitlines()
    group, end = next(i for i, l in enumerate(lines) if l.startswith("::group::")), lines.index("::endgroup::")
    inside = lines[group + 1:end]
    assert any("resolving the checkpoint" in line for line in inside)
    # a progress message trying to issue a workflow command cannot: no line of ours starts with it
    assert not any(line.lstrip().startswith("::set-output") for line in lines)
    assert any("::set-output name=evil::pwned" in line for line in inside)
    assert f"::group::Export . at {env['GITHUB_SHA'][:7]} and publish to {HUB_REPO}" == lines[group]


def test_failed_export_exits_1_with_red_status_and_a_summary_that_says_why(gh, sha, env):
    run = Run(env, action_fakes.failed)
    assert run.code == 1
    assert run.outputs["status"] == "failed" and run.outputs["pr-url"] == ""
    error = next(line for line in run.stdout.splitlines() if line.startswith("::error "))
    assert "title=hub-export-bot%3A publishing to my-org/my-model failed::1 artifact failed validation" in error
    assert "❌ hub-export-bot could not publish" in run.summary
    assert "#### Why it failed" in run.summary and "1 artifact failed validation (default, onnx)" in run.summary
    assert "#### How to retry" in run.summary and "`atol` input" in run.summary and "Re-run jobs" in run.summary
    assert "| `default` | ONNX | not written | — | 2.1e-01 / 1.0e-04 | ❌ values not close" in run.summary
    assert "\\| output last_hidden_state" in run.summary  # a pipe in an error cannot break the table
    assert statuses(gh, sha)[-1] == ("failure", CONTEXT, "Failed: 1 of 2 artifacts did not validate",
                                     f"{gh.url}/{REPO}/actions/runs/4242")
    assert "Why it failed" in gh.commit_comments[(REPO, sha)][0]["body"]
    assert run.report["export"]["failures"][0]["max_abs_diff"] == pytest.approx(0.21)


def partial_update(job, *, endpoint, token, work_dir, progress=None):
    """The PR was updated with what validated; one requested artifact failed; the comment could not be posted."""
    action_fakes._record(job, endpoint, token, work_dir, progress)
    return action_fakes.PublishResult(
        "partial", job.repo_id, action_fakes.SHA, "updated PR #3 with exports of 4f1c0de00000; 1 of 2 requested "
        "artifacts failed and are not included (default/onnx)", pr_url=f"{endpoint}/{job.repo_id}/discussions/3",
        pr_num=3, export=action_fakes.export_result(work_dir, failing=True), pr_action="updated",
        removed=["onnx/model.onnx"], withheld=[{"path": "onnx/model_default.onnx", "feature": "default",
                                                "format": "onnx", "reason": "`onnx/model_default.onnx` is already "
                                                "in the repo and was not written by hub-export-bot"}],
        warnings=["the PR was updated, but could not comment on the PR: the Hub answered 500"])


def test_partial_exits_3_with_its_own_status_headline_and_a_red_status_linking_the_pr(gh, sha, env):
    run = Run(env, partial_update)
    pr_url = f"{ENDPOINT}/{HUB_REPO}/discussions/3"
    assert run.code == 3
    assert (run.outputs["status"], run.outputs["pr-url"]) == ("partial", pr_url)
    assert (run.report["status"], run.report["exit_code"], run.report["pr_action"]) == ("partial", 3, "updated")
    assert run.report["removed"] == ["onnx/model.onnx"] and run.report["withheld"][0]["path"] == "onnx/model_default.onnx"
    assert f"⚠️ hub-export-bot updated [PR #3]({pr_url}) on [`{HUB_REPO}`]" in run.summary
    assert "but 1 of 2 requested artifacts failed" in run.summary and "✅" not in run.summary.splitlines()[0]
    assert "**Left out**" in run.summary and "**Removed**" in run.summary and "#### How to retry" in run.summary
    assert any(line.startswith("::error ") and "some requested artifacts failed" in line
               for line in run.stdout.splitlines())
    assert any(line.startswith("::warning ") and "could not comment on the PR" in line
               for line in run.stdout.splitlines())
    assert statuses(gh, sha)[-1] == ("failure", CONTEXT, "Partial: 1 of 2 artifacts failed, PR #3 updated", pr_url)
    assert "⚠️" in gh.commit_comments[(REPO, sha)][0]["body"]


def test_up_to_date_is_green_without_a_comment(gh, sha, env):
    run = Run(env, action_fakes.up_to_date)
    assert run.code == 0
    assert (run.outputs["status"], run.outputs["pr-url"]) == ("up-to-date", "")
    assert statuses(gh, sha)[-1][:3] == ("success", CONTEXT,
                                         "Up to date: the Hub repo already has exports of these files")
    assert statuses(gh, sha)[-1][3] == f"{ENDPOINT}/{HUB_REPO}"
    assert gh.commit_comments[(REPO, sha)] == []
    assert "is up to date" in run.summary


def test_dry_run_needs_no_hf_token_and_lists_the_files(gh, sha, env):
    env.update(INPUT_DRY_RUN="true", INPUT_HF_TOKEN="")
    run = Run(env, action_fakes.dry_run)
    assert run.code == 0 and run.outputs["status"] == "dry-run"
    assert run.call["dry_run"] is True and run.call["token_given"] is False
    assert "Dry run: nothing was published" in run.summary and "- `onnx/model.onnx`" in run.summary
    assert statuses(gh, sha)[-1][2] == "Dry run: 2 artifacts validated, no PR opened"
    assert gh.commit_comments[(REPO, sha)] == []


def test_inputs_are_parsed_like_a_user_writes_them(env):
    env.update(INPUT_FEATURES="fill-mask,\n default", INPUT_FORMATS=" ONNX ", INPUT_OPSET="17", INPUT_ATOL="2e-4",
               INPUT_COMMENT="False", INPUT_MODEL_PATH="models/bert/")
    model = Path(env["GITHUB_WORKSPACE"], "models", "bert")
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    run = Run(env, action_fakes.opened)
    assert run.code == 0, run.stdout
    call = run.call
    assert (call["features"], call["formats"], call["opset"], call["atol"]) == (
        ["masked-lm", "default"], ["onnx"], 17, 2e-4)
    assert call["source_dir"] == str(model.resolve())


@pytest.mark.parametrize("variable, value, message", [
    ("INPUT_OPSET", "eighteen", "input opset must be a number such as 18"),
    ("INPUT_OPSET", "99", "opset 99 is out of range"),
    ("INPUT_ATOL", "tight", "input atol must be a number"),
    ("INPUT_ATOL", "5", "atol 5.0 must be a small positive number"),
    ("INPUT_FEATURES", "telepathy", "unknown feature 'telepathy'"),
    ("INPUT_FORMATS", "onnx,tflite", "unknown format 'tflite'"),
    ("INPUT_HUB_REPO", "", "input hub-repo is required"),
    ("INPUT_HUB_REPO", "my model", "is not a Hub repo id"),
    ("INPUT_HUB_REPO", "org/../x", "is not a Hub repo id"),
    ("INPUT_HF_TOKEN", "", "store a Hugging Face token with write access as the repository secret HF_TOKEN"),
    ("INPUT_DRY_RUN", "maybe", "input dry-run must be true or false"),
    ("INPUT_COMMENT", "sometimes", "input comment must be true or false"),
    ("INPUT_MODEL_PATH", "missing", "is not a folder in the workspace"),
])
def test_bad_input_exits_2_and_publishes_nothing(gh, sha, env, variable, value, message):
    env[variable] = value
    run = Run(env, action_fakes.opened)
    assert run.code == 2
    assert run.calls == []
    error = next(line for line in run.stdout.splitlines() if line.startswith("::error "))
    assert "title=hub-export-bot%3A bad input::" in error and message in error
    assert run.outputs["status"] == "failed" and run.report["exit_code"] == 2
    assert "bad input, nothing was published" in run.summary and message in run.summary
    assert gh.statuses[(REPO, sha)] == []


@pytest.mark.parametrize("model_path", ["..", "../outside", "/etc", "sub/../../outside", "link-out"])
def test_model_path_must_stay_inside_the_workspace(env, tmp_path, model_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    Path(env["GITHUB_WORKSPACE"], "sub").mkdir()
    Path(env["GITHUB_WORKSPACE"], "link-out").symlink_to(outside, target_is_directory=True)
    env["INPUT_MODEL_PATH"] = model_path
    run = Run(env, action_fakes.opened)
    assert run.code == 2 and run.calls == []
    assert "leads outside the workspace" in run.stdout


def test_symlinks_out_of_the_workspace_are_refused(env, tmp_path):
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    Path(env["GITHUB_WORKSPACE"], "tokenizer.json").symlink_to(secret)
    run = Run(env, action_fakes.opened)
    assert run.code == 2 and run.calls == []
    assert "tokenizer.json is a symlink leading outside the workspace" in run.stdout


def test_symlinks_inside_the_workspace_are_fine(env):
    workspace = Path(env["GITHUB_WORKSPACE"])
    (workspace / "weights").mkdir()
    (workspace / "weights" / "model.bin").write_bytes(b"x")
    (workspace / "alias.bin").symlink_to(workspace / "weights" / "model.bin")
    assert Run(env, action_fakes.opened).code == 0


def test_git_lfs_pointers_are_explained(env):
    Path(env["GITHUB_WORKSPACE"], "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 438000000\n")
    run = Run(env, action_fakes.opened)
    assert run.code == 2 and run.calls == []
    assert "model.safetensors in '.' are Git LFS pointers" in run.stdout and "lfs: true" in run.stdout


@pytest.mark.parametrize("event, message", [
    ("pull_request", "a pull_request event runs only with `dry-run: true`"),
    ("pull_request_target", "the pull_request_target event is not supported"),
    ("schedule", "the 'schedule' event is not supported"),
])
def test_other_events_exit_2(env, event, message):
    env["GITHUB_EVENT_NAME"] = event
    run = Run(env, action_fakes.opened)
    assert run.code == 2 and run.calls == [] and message in run.stdout


def test_a_pull_request_with_dry_run_exports_validates_and_summarises_without_a_hub_write(gh, sha, env):
    head = "c" * 40
    env.update(GITHUB_EVENT_NAME="pull_request", INPUT_DRY_RUN="true", INPUT_HF_TOKEN="")
    Path(env["GITHUB_EVENT_PATH"]).write_text(json.dumps(
        {"pull_request": {"number": 7, "title": "Fine-tune | more data", "head": {"sha": head}}}))
    run = Run(env, action_fakes.dry_run)
    assert run.code == 0 and run.call["dry_run"] is True and run.call["token_given"] is False
    assert run.outputs["status"] == "dry-run" and run.outputs["pr-url"] == "" and run.outputs["pr-number"] == ""
    assert run.outputs["output-dir"] == run.report["output_dir"] != ""
    assert f"[`{REPO}@{head[:7]}`]" in run.summary  # the PR's head commit, not the merge commit
    assert "(Fine-tune \\| more data)" in run.summary  # the PR title, escaped
    assert "Dry run: nothing was published" in run.summary and "| `default` | ONNX |" in run.summary


def test_workflow_dispatch_is_accepted(env):
    env["GITHUB_EVENT_NAME"] = "workflow_dispatch"
    Path(env["GITHUB_EVENT_PATH"]).write_text(json.dumps({"ref": "refs/heads/main", "inputs": {}}))
    run = Run(env, action_fakes.opened)
    assert run.code == 0
    assert f"[`{REPO}@{env['GITHUB_SHA'][:7]}`]" in run.summary


def test_outside_actions_it_says_where_it_runs(tmp_path):
    out = io.StringIO()
    assert run_action({"INPUT_HUB_REPO": HUB_REPO}, publish_fn=action_fakes.opened, out=out) == 2
    assert "GITHUB_EVENT_NAME, GITHUB_REPOSITORY, GITHUB_SHA, GITHUB_WORKSPACE not set" in out.getvalue()


def test_tokens_are_masked_first_and_never_shown_elsewhere(gh, sha, env):
    run = Run(env, action_fakes.leaky)
    lines = run.stdout.splitlines()
    assert lines[:2] == [f"::add-mask::{HF_TOKEN}", f"::add-mask::{GH_TOKEN}"]
    shown = "\n".join(lines[2:]) + run.summary + Path(env["GITHUB_OUTPUT"]).read_text()
    shown += Path(run.outputs["report"]).read_text()
    shown += json.dumps(gh.statuses[(REPO, sha)]) + json.dumps(gh.commit_comments[(REPO, sha)])
    assert HF_TOKEN not in shown and GH_TOKEN not in shown
    assert "the Hub refused token ***" in run.summary
    assert run.code == 1


def test_publish_raising_a_usage_error_exits_2_with_a_red_status(gh, sha, env):
    run = Run(env, action_fakes.unsupported)
    assert run.code == 2 and run.outputs["status"] == "failed"
    assert "unsupported architecture 'mamba9'" in run.summary
    assert statuses(gh, sha)[-1][0] == "failure"


def test_a_crash_is_reported_then_fails_the_step(gh, sha, env):
    run = Run(env, action_fakes.crash)
    assert run.code == 1 and run.outputs["status"] == "failed"
    assert "Traceback (most recent call last)" in run.stdout and "RuntimeError: boom" in run.summary
    assert "bug in hub-export-bot" in run.summary
    assert statuses(gh, sha)[-1][0] == "failure"


def test_a_cancelled_run_does_not_leave_the_status_pending(gh, sha, env):
    def cancelled(job, **kwargs):
        raise KeyboardInterrupt  # what the runner's SIGINT turns into

    with pytest.raises(KeyboardInterrupt):
        run_action(env, publish_fn=cancelled, out=io.StringIO())
    assert [s[:3] for s in statuses(gh, sha)][-1] == ("error", CONTEXT, "Cancelled before the export finished")


def test_github_failures_are_warnings_not_failures(gh, sha, env):
    gh.fail_next("POST", r"/statuses/", 403, times=2)
    gh.fail_next("POST", r"/comments$", 403)
    run = Run(env, action_fakes.opened)
    assert run.code == 0 and run.outputs["status"] == "opened"
    prefix = "::warning title=hub-export-bot%3A GitHub::"
    warnings = [line for line in run.stdout.splitlines() if line.startswith(prefix)]
    assert len(warnings) == 3 and "statuses: write" in warnings[0]
    assert "⚠️ GitHub: could not comment" in run.summary
    assert len(run.report["github_errors"]) == 3
    assert gh.statuses[(REPO, sha)] == [] and gh.commit_comments[(REPO, sha)] == []


def test_without_a_github_token_nothing_is_sent_to_github(gh, sha, env):
    env["INPUT_GITHUB_TOKEN"] = ""
    run = Run(env, action_fakes.opened)
    assert run.code == 0
    assert "::notice title=hub-export-bot::no github-token" in run.stdout
    assert gh.statuses[(REPO, sha)] == [] and gh.requests == []


def test_the_test_hook_only_loads_test_modules(gh, sha, env):
    env[action.PUBLISH_HOOK] = "os:system"
    out = io.StringIO()
    assert run_action(env, out=out) == 2
    assert "accepts only tests.<module>:<function>" in out.getvalue()


def test_workflow_command_escaping():
    assert escape_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"


# -- bot.github against the emulator ---------------------------------------------------------------------------


FAST = make_retry(backoff_factor=0)


def report(gh, sha, **kwargs):
    arguments = {"state": "success", "description": "4 artifacts validated, PR #3 opened",
                 "target_url": "https://huggingface.co/my-org/my-model/discussions/3", "comment_body": None,
                 "retry": FAST}
    return report_to_github(gh.url, GH_TOKEN, REPO, sha, **{**arguments, **kwargs})


def test_status_and_comment_are_recorded(gh, sha):
    result = report(gh, sha, comment_body="Exported: https://huggingface.co/my-org/my-model/discussions/3")
    assert result.ok and result.status == "success"
    [status] = gh.statuses[(REPO, sha)]
    assert (status["state"], status["context"], status["target_url"], status["description"]) == (
        "success", "hub-export-bot", "https://huggingface.co/my-org/my-model/discussions/3",
        "4 artifacts validated, PR #3 opened")
    [comment] = gh.commit_comments[(REPO, sha)]
    assert result.comment_url == comment["html_url"] and comment["body"].startswith("Exported:")
    assert gh.requests == [("POST", f"/repos/{REPO}/statuses/{sha}"), ("POST", f"/repos/{REPO}/commits/{sha}/comments")]


def test_failure_status_and_long_descriptions_are_clipped(gh, sha):
    result = report(gh, sha, state="failure", description="Failed: " + "x" * 300, target_url=None)
    assert result.ok
    [status] = gh.statuses[(REPO, sha)]
    assert status["state"] == "failure" and len(status["description"]) == 140 and status["target_url"] is None


def test_a_500_storm_is_reported_not_raised(gh, sha):
    gh.fail_next("POST", r"/statuses/", 500, times=100)
    result = report(gh, sha, comment_body="hello")
    assert not result.ok and result.status is None
    assert "kept answering server errors after retries" in result.errors[0]
    assert gh.requests.count(("POST", f"/repos/{REPO}/statuses/{sha}")) == 4  # 1 + 3 retries
    assert len(gh.commit_comments[(REPO, sha)]) == 1  # the comment is tried independently


def test_one_500_is_retried_by_the_default_retry(gh, sha):
    gh.fail_next("POST", r"/statuses/", 502)
    assert report(gh, sha, retry=DEFAULT_RETRY).ok  # urllib3's first retry does not wait
    assert gh.requests.count(("POST", f"/repos/{REPO}/statuses/{sha}")) == 2


def test_403_and_bad_credentials_are_reported_with_what_to_do(gh, sha):
    gh.fail_next("POST", r"/statuses/", 403)
    forbidden = report(gh, sha)
    assert forbidden.errors == [f"could not set the hub-export-bot status on {REPO}@{sha[:7]}: GitHub answered 403 "
                                "Resource not accessible by integration (the token may not do this: give the "
                                "workflow `permissions: statuses: write`)"]
    gh.fail_next("POST", r"/comments$", 403)
    assert "`permissions: contents: write`, or set `comment: false`" in report(gh, sha, comment_body="c").errors[0]
    refused = report_to_github(gh.url, "ghs_wrong", REPO, sha, state="success", description="d", target_url=None,
                               comment_body="c", retry=FAST)
    assert len(refused.errors) == 2 and all("401 Bad credentials" in error for error in refused.errors)


def test_unknown_sha_and_unreachable_api_are_reported(gh, sha):
    unknown = report_to_github(
        gh.url, GH_TOKEN, REPO, "f" * 40, state="success", description="d", target_url=None, comment_body=None)
    assert unknown.errors == [f"could not set the hub-export-bot status on {REPO}@fffffff: GitHub answered 422 No "
                              f"commit found for SHA: {'f' * 40} (GitHub refused the request as invalid)"]
    unreachable = report_to_github("http://127.0.0.1:9", GH_TOKEN, REPO, sha, state="pending", description="d",
                                   target_url=None, comment_body=None, retry=None, timeout=5)
    assert "is unreachable (ConnectionError" in unreachable.errors[0]


def test_state_must_be_a_github_state(gh, sha):
    with pytest.raises(ValueError):
        report(gh, sha, state="done")


# -- `hub-export-bot action` as a subprocess, the way the runner starts it ------------------------------------------


def run_subprocess(environ: dict, fake: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "INPUT_", "RUNNER_"))}
    full.update(environ)
    full.update({action.PUBLISH_HOOK: f"tests.action_fakes:{fake}", "PYTHONPATH": str(ROOT)})
    from bot import cli

    if "action" in cli.COMMANDS:  # the real front door, once the CLI has the subcommand
        command = [sys.executable, "-m", "bot", "action"]
    else:
        command = [sys.executable, "-c", "from bot.action import main; raise SystemExit(main())"]
    return subprocess.run(command, env=full, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_subprocess_push_event_opens_a_pr_with_a_green_status(gh, sha, env):
    proc = run_subprocess(env, "opened")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"::add-mask::{HF_TOKEN}\n::add-mask::{GH_TOKEN}\n")
    assert "::warning title=hub-export-bot::HUB_EXPORT_BOT_PUBLISH is set" in proc.stdout
    outputs = read_github_output(env["GITHUB_OUTPUT"])
    pr_url = f"{ENDPOINT}/{HUB_REPO}/discussions/3"
    assert (outputs["pr-url"], outputs["status"]) == (pr_url, "opened")
    assert json.loads(Path(outputs["report"]).read_text())["export"]["artifacts"][1]["path"] == "torchscript/model.pt"
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert f"opened [PR #3]({pr_url})" in summary
    assert "| feature | format | file | size | max diff / atol | status |" in summary
    assert statuses(gh, sha)[-1] == ("success", CONTEXT, "2 artifacts validated, PR #3 opened", pr_url)
    assert pr_url in gh.commit_comments[(REPO, sha)][0]["body"]
    assert HF_TOKEN not in proc.stdout.split("\n", 2)[2] + proc.stderr + summary


def test_subprocess_failing_export_is_red_and_explained(gh, sha, env):
    proc = run_subprocess(env, "failed")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"^::error title=hub-export-bot%3A publishing to my-org/my-model failed::", proc.stdout, re.M)
    assert read_github_output(env["GITHUB_OUTPUT"])["status"] == "failed"
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert "#### Why it failed" in summary and "#### How to retry" in summary
    assert statuses(gh, sha)[-1][0] == "failure"
