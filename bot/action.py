"""The GitHub Actions front door: `hub-export-bot action`, the command action.yml runs.

It reads the job's environment (GITHUB_* from the runner, INPUT_* that action.yml passes through `env:`), builds one
`PublishJob` for the same pipeline the CLI uses, and reports back the ways Actions offers: workflow commands on
stdout (masks, groups, `::error::`), step outputs (GITHUB_OUTPUT), a step summary (GITHUB_STEP_SUMMARY), a JSON report
file in RUNNER_TEMP, and a commit status and comment through bot.github.

Exit codes (bot.job): 0 opened / updated / up-to-date / dry-run, 1 failed, 2 bad input (a workflow or event
mistake that no re-run fixes), 3 partial: a PR was opened or updated (or kept) but some requested artifact failed;
the `status` output is then `partial`.

Security, because this runs with the user's tokens on the user's checkout:
- inputs reach us only as environment variables; action.yml never interpolates them into a script;
- both tokens are masked (`::add-mask::`) before anything else is printed, and redacted from every file we write
  and every text we send to GitHub (the runner masks the log, not the files or API calls);
- model-path must resolve inside the workspace, and no symlink under it may point outside (no exfiltration of runner
  files through a crafted checkout);
- text that comes from the checkpoint or the pipeline is printed so it can never start a workflow command;
- nothing from the checkpoint is executed: the pipeline refuses remote code and pickle.

Test hook: HUB_EXPORT_BOT_PUBLISH=tests.<module>:<function> replaces bot.publish.publish with a test double, so
tests can run `hub-export-bot action` as a subprocess without the real pipeline. Only modules under `tests.` are
accepted and its use is announced with a `::warning::`; never set it in a workflow.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, TextIO

from bot import __version__
from bot.errors import BotError, UsageError
from bot.job import PUBLISH_DTYPES, ExportOptions, PublishJob, make_options
from bot.render import export_data

if TYPE_CHECKING:
    from bot.publish import PublishResult

PUBLISH_HOOK = "HUB_EXPORT_BOT_PUBLISH"
EVENTS = ("push", "workflow_dispatch", "pull_request")  # pull_request only with dry-run (read_inputs)
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_SERVER = "https://github.com"
SUCCESS_STATUSES = ("opened", "updated", "up-to-date", "dry-run")  # bot.publish's statuses that exit 0
COMMENT_STATUSES = ("opened", "updated", "partial", "failed")  # up-to-date and dry-run runs change nothing worth a notification
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}

PublishFn = Callable[..., "PublishResult"]


# -- the job log -----------------------------------------------------------------------------------------------------


def escape_data(text: str) -> str:
    """Workflow-command message escaping: % first, then CR and LF (so a message cannot end the command line)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Workflow-command property escaping: the data rules plus `:` and `,`, which delimit properties."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


class Console:
    """The job log. Every line is redacted; untrusted lines are neutralised so they cannot issue commands."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.secrets: list[str] = []

    def mask(self, secret: str) -> None:
        """Ask the runner to mask `secret` in the log from now on, and redact it from everything we write."""
        if secret and secret not in self.secrets:
            self.secrets.append(secret)
            self._write(f"::add-mask::{escape_data(secret)}")

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if len(secret) >= 4:  # a 1-3 character "token" is a mistake; redacting it would shred every message
                text = text.replace(secret, "***")
        return text

    def line(self, text: str) -> None:
        """Untrusted text (progress, error details): a line starting with `::` would be read as a command."""
        for line in self.redact(text).splitlines() or [""]:
            self._write("\\" + line if line.lstrip().startswith(("::", "##[")) else line)

    def command(self, name: str, message: str = "", **properties: str) -> None:
        props = ",".join(f"{key}={escape_property(self.redact(value))}" for key, value in properties.items())
        self._write(f"::{name}{' ' + props if props else ''}::{escape_data(self.redact(message))}")

    def error(self, message: str, title: str = "hub-export-bot") -> None:
        self.command("error", message, title=title)

    def warning(self, message: str, title: str = "hub-export-bot") -> None:
        self.command("warning", message, title=title)

    def notice(self, message: str, title: str = "hub-export-bot") -> None:
        self.command("notice", message, title=title)

    @contextmanager
    def group(self, title: str) -> Iterator[None]:
        self.command("group", title)
        try:
            yield
        finally:
            self.command("endgroup")

    def progress(self, started: float) -> Callable[[str], None]:
        def show(message: str) -> None:
            self.line(f"[{time.perf_counter() - started:6.1f}s] {message}")

        return show

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


# -- what the runner gives us ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionContext:
    """The GitHub side of the run: which commit of which repository, and where to write results."""

    event_name: str
    repository: str
    sha: str
    workspace: Path
    server_url: str
    api_url: str | None
    run_url: str | None
    runner_temp: Path
    commit_title: str

    @property
    def source_url(self) -> str:
        return f"{self.server_url}/{self.repository}/commit/{self.sha}"


@dataclass(frozen=True)
class ActionInputs:
    """The action's `with:` inputs, validated."""

    hub_repo: str
    model_path: str  # as the user wrote it, for messages
    model_dir: Path  # resolved, inside the workspace
    options: ExportOptions
    hf_token: str = field(repr=False)
    github_token: str = field(repr=False)
    dry_run: bool
    comment: bool


def read_context(environ: Mapping[str, str]) -> ActionContext:
    """The runner's GITHUB_* variables and event payload; a UsageError when they are missing or the event is wrong."""
    event = environ.get("GITHUB_EVENT_NAME", "")
    missing = [name for name in ("GITHUB_EVENT_NAME", "GITHUB_REPOSITORY", "GITHUB_SHA", "GITHUB_WORKSPACE")
               if not environ.get(name)]
    if missing:
        raise UsageError(f"{', '.join(missing)} not set: `hub-export-bot action` runs as a step of a GitHub Actions "
                         f"job (see the hub-export-bot README); on your machine use `hub-export-bot publish`")
    if event == "pull_request_target":
        raise UsageError("the pull_request_target event is not supported: it runs a PR's files with your secrets; "
                         "use `on: pull_request` with `dry-run: true` to check a PR")
    if event not in EVENTS:
        raise UsageError(f"the {event!r} event is not supported: run the action `on: push` (to the branch that holds "
                         f"the model), `on: workflow_dispatch`, or `on: pull_request` with `dry-run: true`")
    payload = _read_event(environ.get("GITHUB_EVENT_PATH", ""))
    head = payload.get("head_commit") or {}
    title = (head.get("message") or "").splitlines()[0] if isinstance(head, dict) and head.get("message") else ""
    sha = environ["GITHUB_SHA"]
    pull = payload.get("pull_request")
    if event == "pull_request" and isinstance(pull, dict):  # GITHUB_SHA is a merge commit nobody sees: use the head
        title = str(pull.get("title") or "")
        sha = str((pull.get("head") or {}).get("sha") or sha)
    server = (environ.get("GITHUB_SERVER_URL") or DEFAULT_SERVER).rstrip("/")
    repository = environ["GITHUB_REPOSITORY"]
    run_id = environ.get("GITHUB_RUN_ID")
    return ActionContext(
        event_name=event, repository=repository, sha=sha,
        workspace=Path(environ["GITHUB_WORKSPACE"]), server_url=server,
        api_url=(environ.get("GITHUB_API_URL") or "").rstrip("/") or None,
        run_url=f"{server}/{repository}/actions/runs/{run_id}" if run_id else None,
        runner_temp=Path(environ.get("RUNNER_TEMP") or tempfile.gettempdir()), commit_title=title)


def _read_event(path: str) -> dict:
    if not path:
        raise UsageError("GITHUB_EVENT_PATH is not set: the runner sets it for every job; is this GitHub Actions?")
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the event payload {path}: {exc}") from exc
    if not isinstance(payload, dict):
        raise UsageError(f"the event payload {path} is not a JSON object")
    return payload


def read_inputs(environ: Mapping[str, str], workspace: Path) -> ActionInputs:
    """Validate every INPUT_* variable; each mistake is a UsageError that names the input and what to write."""
    def get(name: str) -> str:
        return environ.get(f"INPUT_{name}", "").strip()

    hub_repo = get("HUB_REPO")
    if not hub_repo:
        raise UsageError("input hub-repo is required: the Hub model repo to open the PR on, e.g. `my-org/my-model`")
    if not _REPO_ID.fullmatch(hub_repo) or ".." in hub_repo or "--" in hub_repo:
        raise UsageError(f"input hub-repo {hub_repo!r} is not a Hub repo id: write owner/name, e.g. `my-org/my-model`")
    dry_run = _boolean("dry-run", get("DRY_RUN"), default=False)
    hf_token = get("HF_TOKEN")
    if not hf_token and not dry_run:
        raise UsageError("input hf-token is empty: store a Hugging Face token with write access as the repository "
                         "secret HF_TOKEN (Settings → Secrets and variables → Actions) and pass "
                         "`hf-token: ${{ secrets.HF_TOKEN }}`; note that workflows run for forks get no secrets")
    features = [] if get("FEATURES").lower() in ("", "auto") else _split(get("FEATURES"))
    options = make_options(features, _split(get("FORMATS")), _number("opset", get("OPSET"), int, 18),
                           _number("atol", get("ATOL"), float, None), dtypes=_split(get("DTYPES")),
                           default_dtypes=PUBLISH_DTYPES)
    model_path = environ.get("INPUT_MODEL_PATH", "").strip() or "."
    return ActionInputs(hub_repo=hub_repo, model_path=model_path, model_dir=resolve_model_dir(workspace, model_path),
                        options=options, hf_token=hf_token, github_token=get("GITHUB_TOKEN"), dry_run=dry_run,
                        comment=_boolean("comment", get("COMMENT"), default=False))


def _split(value: str) -> list[str]:
    """`a,b`, `a b` and one per line (a YAML block) all mean the same list."""
    return [item for item in re.split(r"[\s,]+", value) if item]


def _boolean(name: str, value: str, default: bool) -> bool:
    lowered = value.lower()
    if not lowered:
        return default
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise UsageError(f"input {name} must be true or false, not {value!r}")


def _number(name: str, value: str, kind: type, default):
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        example = "18" if kind is int else "1e-4"
        raise UsageError(f"input {name} must be a number such as {example}, not {value!r}") from None


def resolve_model_dir(workspace: Path, model_path: str) -> Path:
    """The checkpoint folder, refused unless it and every symlink under it stay inside the workspace.

    Why so strict: the folder's files are uploaded to the Hub. A `..` path, an absolute path or a symlink to
    ~/.ssh would publish runner files that are not part of the repository.
    """
    root = workspace.resolve()
    try:
        folder = (root / model_path).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise UsageError(f"input model-path {model_path!r} cannot be resolved: {exc}") from exc
    if not folder.is_relative_to(root):
        raise UsageError(f"input model-path {model_path!r} leads outside the workspace: give a folder inside the "
                         f"repository, relative to its root, such as `.` or `models/my-model`")
    if not folder.is_dir():
        raise UsageError(f"input model-path {model_path!r} is not a folder in the workspace: check out the repository "
                         f"first (`uses: actions/checkout@v4`) and point model-path at the folder holding config.json")
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d != ".git" or Path(dirpath, d).is_symlink()]
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            if not path.is_symlink():
                continue
            try:
                target = path.resolve()
            except (OSError, RuntimeError):
                target = None
            if target is None or not target.is_relative_to(root):
                raise UsageError(f"{path.relative_to(root)} is a symlink leading outside the workspace; the action "
                                 f"only publishes files that are part of the repository: replace it with the file")
    pointers = sorted(p.name for p in folder.iterdir() if _is_lfs_pointer(p))
    if pointers:
        raise UsageError(f"{', '.join(pointers)} in {model_path!r} are Git LFS pointers, not the files: check out "
                         f"with `uses: actions/checkout@v4` and `with: lfs: true`")
    return folder


def _is_lfs_pointer(path: Path) -> bool:
    try:
        if not path.is_file() or path.stat().st_size > 1024:
            return False
        with path.open("rb") as handle:
            return handle.read(len(_LFS_POINTER)) == _LFS_POINTER
    except OSError:
        return False


def _resolve_publish(environ: Mapping[str, str], console: Console) -> PublishFn:
    """bot.publish.publish, or the test double named by the test hook (see the module docstring)."""
    spec = environ.get(PUBLISH_HOOK, "").strip()
    if not spec:
        from bot.publish import publish

        return publish
    module, _, name = spec.partition(":")
    if not module.startswith("tests.") or not name:
        raise UsageError(f"{PUBLISH_HOOK}={spec!r}: this test hook accepts only tests.<module>:<function>; unset it")
    console.warning(f"{PUBLISH_HOOK} is set: publishing with the test double {spec}, not the real pipeline")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"{PUBLISH_HOOK}={spec!r} cannot be loaded: {exc}") from exc


# -- the run ---------------------------------------------------------------------------------------------------------


def run_action(environ: Mapping[str, str], *, publish_fn: PublishFn | None = None, out: TextIO | None = None) -> int:
    """Run one action step: validate, publish, report. Returns the exit code; never raises for user errors."""
    console = Console(out or sys.stdout)
    logging.getLogger("bot.github").setLevel(logging.ERROR)  # its warnings reach the log as ::warning:: lines
    hf_token, github_token = (environ.get(f"INPUT_{name}", "").strip() for name in ("HF_TOKEN", "GITHUB_TOKEN"))
    console.mask(hf_token)  # before anything else reaches the log
    console.mask(github_token)
    results = ResultFiles(environ, console)
    try:
        context = read_context(environ)
        inputs = read_inputs(environ, context.workspace)
        if context.event_name == "pull_request" and not inputs.dry_run:
            raise UsageError("a pull_request event runs only with `dry-run: true`: a PR's checkpoint is not yours to "
                             "publish yet (and fork PRs get no secrets); it exports and validates, and the summary "
                             "shows the results. Publish `on: push` to your default branch or `workflow_dispatch`")
        publish = publish_fn or _resolve_publish(environ, console)
    except UsageError as exc:
        console.error(str(exc), title="hub-export-bot: bad input")
        results.write_bad_input(str(exc))
        return exc.exit_code

    from bot.publish import FAILED, PublishResult

    endpoint = (environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    job = PublishJob(repo_id=inputs.hub_repo, options=inputs.options, dry_run=inputs.dry_run,
                     source_dir=inputs.model_dir, source_url=context.source_url, trigger="action")
    reporter = GitHubReporter(context, inputs, console)
    reporter.pending()
    work_dir = Path(tempfile.mkdtemp(prefix="hub-export-bot-", dir=_ensure_dir(context.runner_temp)))
    crashed = False
    with console.group(f"Export {inputs.model_path} at {context.sha[:7]} and publish to {inputs.hub_repo}"):
        try:
            result = publish(job, endpoint=endpoint, token=inputs.hf_token or None, work_dir=work_dir,
                             progress=console.progress(time.perf_counter()))
            exit_code = result.exit_code
        except KeyboardInterrupt:  # the run was cancelled: do not leave the commit "pending" forever
            reporter.cancelled()
            raise
        except BotError as exc:
            result, exit_code = PublishResult(FAILED, inputs.hub_repo, None, str(exc)), exc.exit_code
        except Exception as exc:  # a bug or an unforeseen service failure: still report it, then fail the step
            crashed = True
            console.line("".join(traceback.format_exception(exc)))
            result, exit_code = PublishResult(FAILED, inputs.hub_repo, None, f"{type(exc).__name__}: {exc}"), 1
    for warning in result.warnings:
        console.warning(warning)
    if result.status == "partial":
        console.error(result.message, title=f"hub-export-bot: {inputs.hub_repo}: some requested artifacts failed")
    elif exit_code:
        console.error(result.message, title=f"hub-export-bot: publishing to {inputs.hub_repo} failed")
    else:
        console.line(f"{result.status}: {result.message}" + (f" {result.pr_url}" if result.pr_url else ""))

    view = RunView(context, inputs, endpoint, crashed)
    reporter.final(result, results_markdown(result, view), view.hub_url)
    results.write(result, view, results_markdown(result, view, reporter.errors), exit_code, work_dir,
                  reporter.errors)
    return exit_code


def _ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


class GitHubReporter:
    """The commit status (pending, then success or failure) and the commit comment; failures become warnings."""

    def __init__(self, context: ActionContext, inputs: ActionInputs, console: Console) -> None:
        self.context, self.inputs, self.console = context, inputs, console
        self.enabled = bool(inputs.github_token and context.api_url)
        self.errors: list[str] = []
        if not self.enabled:
            self.console.notice("no github-token (or GITHUB_API_URL): no commit status or comment will be set")

    def pending(self) -> None:
        self._send(state="pending", description=f"Exporting {self.inputs.model_path} to {self.inputs.hub_repo}…",
                   target_url=self.context.run_url, comment_body=None)

    def cancelled(self) -> None:
        self._send(state="error", description="Cancelled before the export finished",
                   target_url=self.context.run_url, comment_body=None)

    def final(self, result: PublishResult, body: str, hub_url: str) -> None:
        """Green with a link to the PR (or the repo); red with a link to the PR when a partial run left one, else to
        the job log, where the details are."""
        ok = result.status in SUCCESS_STATUSES
        target = result.pr_url or (hub_url if ok else self.context.run_url)
        comment = body if self.inputs.comment and result.status in COMMENT_STATUSES else None
        self._send(state="success" if ok else "failure", description=status_description(result),
                   target_url=target, comment_body=comment)

    def _send(self, **kwargs) -> None:
        if not self.enabled:
            return
        from bot.github import report_to_github

        redacted = {k: self.console.redact(v) if isinstance(v, str) else v for k, v in kwargs.items()}
        report = report_to_github(self.context.api_url, self.inputs.github_token, self.context.repository,
                                  self.context.sha, **redacted)
        for error in report.errors:
            self.console.warning(error, title="hub-export-bot: GitHub")
            self.errors.append(error)


def status_description(result: PublishResult) -> str:
    """The commit status line: counts first, since GitHub cuts it at 140 characters."""
    export = result.export
    validated = len(getattr(export, "artifacts", None) or [])
    failed = len(getattr(export, "failures", None) or [])
    artifacts = f"{validated} artifact{'s' if validated != 1 else ''} validated"
    pr = f"PR #{result.pr_num}" if result.pr_num is not None else "PR"
    if result.status == "partial":
        return f"Partial: {failed} of {validated + failed} artifacts failed, {pr} {result.pr_action or 'not changed'}"
    if result.status == "opened":
        return f"{artifacts}, {pr} opened"
    if result.status == "updated":
        return f"{artifacts}, {pr} updated"
    if result.status == "up-to-date":
        return "Up to date: the Hub repo already has exports of these files"
    if result.status == "dry-run":
        return f"Dry run: {artifacts}, no PR opened"
    if failed:
        return f"Failed: {failed} of {validated + failed} artifacts did not validate"
    return f"Failed: {result.message}"


# -- results for people and for later steps --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunView:
    """What the markdown needs besides the result."""

    context: ActionContext
    inputs: ActionInputs
    endpoint: str
    crashed: bool

    @property
    def hub_url(self) -> str:
        return f"{self.endpoint}/{self.inputs.hub_repo}"


SUMMARY_TEMPLATE = "action_summary.md.j2"


def _shorten(text: object, limit: int = 300) -> str:
    """One line, long error texts shortened (the log has them in full); cut before escaping, in the template."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _diff(value: object) -> str:
    if value is None:
        return "—"
    return f"{value:.1e}" if isinstance(value, (int, float)) and math.isfinite(value) else str(value)


def results_markdown(result: PublishResult, view: RunView, github_errors: list[str] = ()) -> str:
    """The step summary and the commit comment (templates/action_summary.md.j2): headline, source, per-artifact
    table, skipped features, and on failure why it failed and how to retry."""
    from bot.render import collapse_skipped, render_template

    context, inputs, export = view.context, view.inputs, result.export
    failures = list(getattr(export, "failures", None) or [])
    artifacts = list(getattr(export, "artifacts", None) or [])
    return render_template(SUMMARY_TEMPLATE, {
        "status": result.status, "hub_repo": inputs.hub_repo, "hub_url": view.hub_url, "pr_url": result.pr_url,
        "pr_num": result.pr_num, "pr_action": result.pr_action or "", "message": str(result.message),
        "failed_count": len(failures), "requested_count": len(failures) + len(artifacts),
        "repository": context.repository, "sha": context.sha, "source_url": context.source_url,
        "commit_title": context.commit_title, "model_path": inputs.model_path,
        "rows": _artifact_rows(artifacts, failures),
        "skipped": collapse_skipped(dict(getattr(export, "skipped", None) or {})),
        "withheld": [{"path": str(w.get("path")), "reason": _shorten(w.get("reason"))}
                     for w in getattr(result, "withheld", None) or []],
        "removed": list(getattr(result, "removed", None) or []), "files": list(result.files),
        "validation_failed": any(getattr(f, "validation", None) is not None for f in failures),
        "crashed": view.crashed, "run_url": context.run_url, "version": __version__,
        "github_errors": list(github_errors)})


def _artifact_rows(artifacts: list, failures: list) -> list[dict]:
    from bot.render import human_size, worst_diff  # lazily: the validation types behind them load torch

    rows = []
    for a in artifacts:
        validation = getattr(a, "validation", None)
        passed = getattr(validation, "passed", True)
        rows.append({"feature": a.feature, "format_name": _FORMAT_NAMES.get(a.format, a.format), "path": a.path,
                     "size": human_size(a.size), "error": None,
                     "diff": f"{_diff(worst_diff(validation))} / {_diff(getattr(validation, 'atol', None))}",
                     "verdict": "✅ validated" if passed else "❌ not close"})
    for f in failures:
        validation = getattr(f, "validation", None)
        diff = f"{_diff(worst_diff(validation))} / {_diff(validation.atol)}" if validation is not None else "—"
        rows.append({"feature": f.feature, "format_name": _FORMAT_NAMES.get(f.format, f.format), "path": None,
                     "size": "—", "diff": diff, "verdict": "❌", "error": _shorten(f.error)})
    return rows


class ResultFiles:
    """GITHUB_OUTPUT, GITHUB_STEP_SUMMARY and the JSON report; each is skipped when the runner did not set it."""

    def __init__(self, environ: Mapping[str, str], console: Console) -> None:
        self.output = environ.get("GITHUB_OUTPUT") or None
        self.summary = environ.get("GITHUB_STEP_SUMMARY") or None
        self.runner_temp = Path(environ.get("RUNNER_TEMP") or tempfile.gettempdir())
        self.console = console

    def write(self, result: PublishResult, view: RunView, summary: str, exit_code: int, work_dir: Path,
              github_errors: list[str]) -> None:
        report = {
            "status": result.status, "exit_code": exit_code, "message": result.message,
            "repo_id": result.repo_id, "pr_url": result.pr_url, "pr_num": result.pr_num,
            "revision": result.revision, "files": list(result.files), "title": result.title,
            "pr_action": result.pr_action, "added": list(result.added), "replaced": list(result.replaced),
            "removed": list(result.removed), "withheld": list(result.withheld), "warnings": list(result.warnings),
            "source": {"repository": view.context.repository, "sha": view.context.sha,
                       "url": view.context.source_url, "model_path": view.inputs.model_path},
            "dry_run": view.inputs.dry_run, "work_dir": str(work_dir),
            "export": export_data(result.export),
            "output_dir": str(getattr(result.export, "output_dir", "") or ""),
            "github_errors": list(github_errors),
            "version": __version__,
        }
        path = self._report(report)
        exported = getattr(result.export, "output_dir", None) if getattr(result.export, "artifacts", None) else None
        self._outputs({"pr-url": result.pr_url or "", "pr-number": "" if result.pr_num is None else str(result.pr_num),
                       "report": str(path), "status": result.status, "output-dir": str(exported or "")})
        self._summary(summary)

    def write_bad_input(self, message: str) -> None:
        path = self._report({"status": "failed", "exit_code": 2, "message": message, "pr_url": None,
                             "version": __version__})
        self._outputs({"pr-url": "", "pr-number": "", "report": str(path), "status": "failed", "output-dir": ""})
        from bot.render import render_template

        self._summary(render_template("action_bad_input.md.j2", {"message": message}))

    def _report(self, data: dict) -> Path:
        fd, name = tempfile.mkstemp(prefix="hub-export-bot-report-", suffix=".json", dir=_ensure_dir(self.runner_temp))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(self.console.redact(json.dumps(data, indent=2, default=str, allow_nan=False)) + "\n")
        return Path(name)

    def _outputs(self, values: dict[str, str]) -> None:
        """The `name<<DELIMITER` form with a random delimiter: no value can end its block early."""
        if not self.output:
            return
        with open(self.output, "a", encoding="utf-8") as handle:
            for name, value in values.items():
                delimiter = f"ghadelimiter_{uuid.uuid4()}"
                handle.write(f"{name}<<{delimiter}\n{self.console.redact(value)}\n{delimiter}\n")

    def _summary(self, markdown: str) -> None:
        if self.summary:
            with open(self.summary, "a", encoding="utf-8") as handle:
                handle.write(self.console.redact(markdown) + "\n")


def main(argv: list[str] | None = None) -> int:
    """`python -m bot.action`; the CLI's `hub-export-bot action` calls run_action the same way."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_action(os.environ)


if __name__ == "__main__":
    status = main()
    import gc

    gc.freeze()  # the interpreter's last collections over torch and transformers take ~1.2 s (bot.cli.main)
    raise SystemExit(status)
