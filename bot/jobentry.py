"""`hub-export-bot job`: the front door inside a Hugging Face Job started by a Hub webhook.

The Hub runs the Job with the delivery in its environment (WEBHOOK_PAYLOAD, WEBHOOK_REPO_ID, WEBHOOK_REPO_TYPE,
WEBHOOK_SECRET) instead of POSTing it to a server of ours. This module turns that environment into the same decision
(bot.server.payload) and the same PublishJob as `serve`, runs the same pipeline (bot.publish), and prints one JSON
line saying what happened. Exit codes are those of `publish`: 0 done, 1 failed, 2 bad input, 3 partial.

A Job started without WEBHOOK_PAYLOAD (the run `deploy` starts to check the image, or a person trying it) does
nothing and exits 0: that run is the template the webhook copies, not an export.
"""

from __future__ import annotations

import hmac
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

from bot.errors import BotError, UsageError
from bot.job import EXIT_OK, EXIT_USAGE, PUBLISH_DTYPES, PublishJob, make_options

# The secret the webhook was created with, given to the Job as a secret by `deploy`: a run whose WEBHOOK_SECRET
# differs was not started by the bot's webhook (an old webhook, a hand-made one) and is refused.
EXPECTED_SECRET_ENV = "HUB_EXPORT_BOT_WEBHOOK_SECRET"
ALLOW_ENV = "HUB_EXPORT_BOT_ALLOW"  # space-separated --allow patterns, as `serve --allow`
DTYPES_ENV = "HUB_EXPORT_BOT_DTYPES"  # space-separated --dtype values, as `serve --dtype`


def add_job_parser(commands) -> None:
    commands.add_parser(
        "job", help="run inside a Hugging Face Job started by a Hub webhook (see `deploy`)",
        description="Read the delivery a Hub webhook handed to this Job (WEBHOOK_PAYLOAD, WEBHOOK_REPO_ID, "
                    "WEBHOOK_REPO_TYPE, WEBHOOK_SECRET), filter it as `serve` does, export the pushed commit and "
                    "offer it as one PR. HF_TOKEN and HF_ENDPOINT as for `publish`. Prints one JSON line; exits "
                    "0 done or ignored, 1 failed, 2 bad input, 3 partial.")


def decide_from_environment(environ: Mapping[str, str]):
    """The environment of a webhook-started Job -> Accepted / Ignored, or None when it holds no delivery.

    Raises UsageError for a payload that is not a Hub delivery or a secret that does not match.
    """
    from bot.server.payload import PayloadError, decide, parse_delivery

    payload = environ.get("WEBHOOK_PAYLOAD")
    if not payload:
        return None
    expected = environ.get(EXPECTED_SECRET_ENV, "")
    supplied = environ.get("WEBHOOK_SECRET", "")
    if expected and not hmac.compare_digest(supplied.encode("utf-8", "surrogateescape"),
                                            expected.encode("utf-8", "surrogateescape")):
        raise UsageError("WEBHOOK_SECRET does not match the secret this Job was deployed with: the run was not "
                         "started by the bot's webhook; run `hub-export-bot deploy` again to rebind it")
    try:
        delivery = parse_delivery(payload.encode("utf-8", "surrogateescape"))
    except PayloadError as exc:
        raise UsageError(f"WEBHOOK_PAYLOAD: {exc.detail}") from None
    repo_id = environ.get("WEBHOOK_REPO_ID")
    if repo_id and repo_id != delivery.repo.name:
        raise UsageError(f"WEBHOOK_REPO_ID {repo_id} is not the payload's repo {delivery.repo.name}")
    return decide(delivery, environ.get(ALLOW_ENV, "").split())


def run_job_entry(environ: Mapping[str, str], progress: Callable[[str], None] | None = None,
                  out=None) -> int:
    """Decide, publish, print one JSON line; returns the exit code (UsageError propagates: exit 2)."""
    from bot.server.payload import Accepted

    out = out or sys.stdout
    started = time.perf_counter()
    try:
        decision = decide_from_environment(environ)
    except UsageError as exc:
        _emit(out, {"status": "error", "message": str(exc)}, started)
        return EXIT_USAGE
    if decision is None:
        _emit(out, {"status": "idle", "message": "no WEBHOOK_PAYLOAD: nothing to export (this is the Job a "
                                                 "webhook re-runs with a delivery)"}, started)
        return EXIT_OK
    if not isinstance(decision, Accepted):
        _emit(out, {"status": "ignored", "message": decision.reason}, started)
        return EXIT_OK
    token = environ.get("HF_TOKEN")
    if not token:
        _emit(out, {"status": "error", "repo": decision.repo_id,
                    "message": "HF_TOKEN is not set: give the Job a write token as a secret (deploy does)"}, started)
        return EXIT_USAGE
    options = make_options(dtypes=environ.get(DTYPES_ENV, "").split(), default_dtypes=PUBLISH_DTYPES)
    job = PublishJob(repo_id=decision.repo_id, revision=decision.sha, trigger="webhook", options=options)
    from bot.hub import DEFAULT_ENDPOINT
    from bot.publish import publish

    endpoint = (environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    try:
        with tempfile.TemporaryDirectory(prefix="hub-export-bot-job-") as scratch:
            result = publish(job, endpoint=endpoint, token=token, work_dir=Path(scratch), progress=progress)
    except BotError as exc:  # bad input (2) or a failure the pipeline named (1): still one JSON line
        _emit(out, {"status": "error", "repo": decision.repo_id, "sha": decision.sha, "message": str(exc)},
              started)
        return exc.exit_code
    _emit(out, {"status": result.status, "repo": result.repo_id, "sha": result.revision, "message": result.message,
                "pr_url": result.pr_url, "pr_num": result.pr_num}, started)
    return result.exit_code


def run_job_command(args) -> int:
    """`hub-export-bot job`: the CLI wrapper (progress on stderr, as `export` shows it; BotErrors other than bad
    input exit 1)."""
    from bot.progress import Reporter

    reporter = Reporter()
    try:
        return run_job_entry(os.environ, progress=reporter)
    finally:
        reporter.close()


def _emit(out, data: dict, started: float) -> None:
    """The one JSON result line the Job's logs (and `serve --runner hf-jobs`) read."""
    data["seconds"] = round(time.perf_counter() - started, 1)
    out.write(json.dumps(data) + "\n")
    out.flush()
