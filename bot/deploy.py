"""`hub-export-bot deploy`: the Job a Hub webhook re-runs for every push, and that webhook, created idempotently.

What the Hub offers (huggingface_hub's HfApi): a webhook can target a Job instead of a URL
(`create_webhook(job_id=...)`, sent as `jobSourceId`). The Hub copies that *source* Job's spec (image, command,
flavor, timeout, environment) into the webhook, and each event runs a new Job from the copy with the delivery in
WEBHOOK_PAYLOAD / WEBHOOK_REPO_ID / WEBHOOK_REPO_TYPE / WEBHOOK_SECRET. Secrets are not copied from the source Job:
they are passed to the webhook (`secrets=`). So deploy:

1. lists the webhooks (`list_webhooks`) and takes the one whose Job runs `hub-export-bot job` as ours;
2. none: runs the source Job once (without a payload `hub-export-bot job` only says "idle" and exits 0, which also
   proves the image starts), waits for it, then creates the webhook bound to it with HF_TOKEN as a secret;
3. ours, with another image, flavor, timeout, environment or secret: runs a new source Job and rebinds the webhook;
   only watched items or domains differ: updates the webhook in place; everything equal: changes nothing, says so.

The token is never printed, never put in a command line or in the Job's visible environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from bot.errors import BotError, UsageError
from bot.hfjobs import DEFAULT_FLAVOR, DEFAULT_TIMEOUT, JOB_COMMAND, JobTemplate, job_environment, wait_for_job
from bot.jobentry import EXPECTED_SECRET_ENV

WATCH_TYPES = ("user", "org", "model")
DOMAINS = ("repo",)  # pushes only: discussion events would start Jobs that have nothing to export


@dataclass(frozen=True)
class Wanted:
    """The webhook deploy should leave behind."""

    template: JobTemplate
    watched: tuple[tuple[str, str], ...]  # (type, name), sorted
    secret: str = field(repr=False)
    domains: tuple[str, ...] = DOMAINS

    def watched_dicts(self) -> list[dict]:
        return [{"type": t, "name": n} for t, n in self.watched]


@dataclass
class Report:
    changed: bool
    actions: list[str]
    webhook_id: str | None = None
    job_id: str | None = None

    def to_json(self) -> dict:
        return {"changed": self.changed, "actions": self.actions, "webhook_id": self.webhook_id,
                "source_job_id": self.job_id}


def parse_watch(text: str) -> tuple[str, str]:
    """`org:acme`, `user:alice`, `model:acme/bert` -> (type, name)."""
    kind, colon, name = text.partition(":")
    if not colon or kind not in WATCH_TYPES or not name or name.count("/") != (1 if kind == "model" else 0):
        raise UsageError(f"--watch {text!r}: write org:NAME, user:NAME or model:OWNER/NAME")
    return kind, name


def _ours(hooks) -> list:
    return [h for h in hooks if h.job is not None and list(h.job.command or []) == JOB_COMMAND]


def _job_differs(hook, wanted: Wanted) -> list[str]:
    """The fields of the webhook's Job copy that are not what we want (the secret counts: the Job checks it)."""
    job, t = hook.job, wanted.template
    diffs = [name for name, have, want in (("image", job.docker_image, t.image), ("flavor", job.flavor, t.flavor),
                                           ("timeout", job.timeout, t.timeout),
                                           ("environment", job.environment or {}, t.environment))
             if have != want]
    if hook.secret != wanted.secret:
        diffs.append("secret")
    return diffs


def _hook_differs(hook, wanted: Wanted) -> list[str]:
    diffs = []
    if sorted((w.type, w.name) for w in hook.watched) != list(wanted.watched):
        diffs.append("watched")
    if sorted(hook.domains) != sorted(wanted.domains):
        diffs.append("domains")
    if hook.disabled:
        diffs.append("disabled")
    return diffs


def deploy(api, wanted: Wanted, *, token: str, namespace: str | None, dry_run: bool, wait: float,
           rebind: bool = False, say=lambda message: None) -> Report:
    """Make the Hub hold exactly one bot webhook bound to a Job as `wanted` says; see the module docstring."""
    ours = _ours(api.list_webhooks())
    hook = ours[0] if ours else None
    if len(ours) > 1:
        say(f"warning: {len(ours)} webhooks run `hub-export-bot job`; managing {ours[0].id} only, delete the others "
            f"({', '.join(h.id for h in ours[1:])}) or every push exports more than once")
    job_diffs = ["rebind requested"] if rebind and hook else (_job_differs(hook, wanted) if hook else [])
    hook_diffs = _hook_differs(hook, wanted) if hook else []
    if hook and not job_diffs and not hook_diffs:
        return Report(False, [f"webhook {hook.id} already runs the wanted Job: nothing changed"], hook.id)
    if hook is None:
        plan = ["run a source Job (image check, no payload)", "create the webhook bound to it"]
    elif job_diffs:
        plan = [f"run a new source Job ({', '.join(job_diffs)} changed)", f"rebind webhook {hook.id} to it"]
    else:
        plan = [f"update webhook {hook.id} ({', '.join(hook_diffs)} changed)"]
    if dry_run:
        return Report(False, [f"would {step}" for step in plan], hook.id if hook else None)

    secrets = {"HF_TOKEN": token, EXPECTED_SECRET_ENV: wanted.secret}
    if hook is not None and not job_diffs:
        if hook.disabled:
            api.enable_webhook(hook.id)
        api.update_webhook(hook.id, watched=wanted.watched_dicts(), domains=list(wanted.domains))
        return Report(True, plan, hook.id)
    source = wanted.template.run(api, token=token, namespace=namespace, role="source")
    say(f"source Job {source.id} started: {source.url}")
    info = wait_for_job(api, source.id, namespace=namespace, deadline=time.monotonic() + wait)
    if info.status.stage != "COMPLETED":
        raise BotError(f"the source Job {source.id} ended {info.status.stage} ({info.status.message or 'no message'})"
                       f" instead of COMPLETED: check that the image {wanted.template.image} runs "
                       f"`hub-export-bot job` (logs: {source.url}); no webhook was changed")
    if hook is None:
        created = api.create_webhook(job_id=source.id, watched=wanted.watched_dicts(), domains=list(wanted.domains),
                                     secret=wanted.secret, secrets=secrets)
        return Report(True, plan, created.id, source.id)
    if hook.disabled:
        api.enable_webhook(hook.id)
    api.update_webhook(hook.id, job_id=source.id, watched=wanted.watched_dicts(), domains=list(wanted.domains),
                       secret=wanted.secret, secrets=secrets)
    return Report(True, plan, hook.id, source.id)


# --- the command line -----------------------------------------------------------------------------------------------

def add_deploy_parser(commands) -> None:
    parser = commands.add_parser(
        "deploy", help="create (or update) the Hugging Face Job and Hub webhook that export every push",
        description="Create the Hub webhook that runs `hub-export-bot job` as a Hugging Face Job for every push to "
                    "the watched repos, idempotently: a second run with the same options changes nothing. "
                    "HF_TOKEN (write access; it becomes a Job secret) and WEBHOOK_SECRET are read from the "
                    "environment, never from the command line.")
    parser.add_argument("--image", required=True,
                        help="container image built from this project's Dockerfile, pullable by the Hub")
    parser.add_argument("--watch", action="append", required=True, metavar="TYPE:NAME",
                        help="what the webhook watches: org:NAME, user:NAME or model:OWNER/NAME (repeatable)")
    add_job_options(parser)
    parser.add_argument("--allow", action="extend", nargs="+", default=[], metavar="PATTERN",
                        help="only export these repos (as serve --allow: OWNER or OWNER/NAME-GLOB)")
    parser.add_argument("--dtype", action="append", default=[], choices=["fp32", "fp16", "q8", "q4", "q4f16"],
                        help="ONNX dtype variant to offer, repeatable (default: fp32 and q8, as publish)")
    parser.add_argument("--wait", type=float, default=900, metavar="SECONDS",
                        help="how long to wait for the source Job (pulling the image takes a while; default 900)")
    parser.add_argument("--rebind", action="store_true",
                        help="run a new source Job and rebind even if nothing changed (e.g. after rotating HF_TOKEN)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be created or changed; change nothing")


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """Flavor, timeout and namespace of the Jobs: shared by deploy and serve --runner hf-jobs."""
    parser.add_argument("--flavor", default=DEFAULT_FLAVOR,
                        help=f"Job hardware flavor, e.g. cpu-basic, cpu-upgrade, t4-small (default {DEFAULT_FLAVOR})")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"a Job running longer is stopped by the Hub (default {DEFAULT_TIMEOUT})")
    parser.add_argument("--namespace", help="user or organisation the Jobs run (and are billed) under "
                                            "(default: the token's user)")


def run_deploy(args, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`hub-export-bot deploy`: progress to `err`, then the actions taken, the dry run's plan and one JSON line to
    `out` (stdout and stderr unless given)."""
    out, err = out or sys.stdout, err or sys.stderr
    from bot.hub import DEFAULT_ENDPOINT
    from bot.job import PUBLISH_DTYPES, make_options
    from bot.server.payload import parse_allow

    token = os.environ.get("HF_TOKEN")
    secret = os.environ.get("WEBHOOK_SECRET", "")
    if not token:
        raise UsageError("HF_TOKEN is not set; export a token with write access (it becomes the Jobs' secret)")
    if not secret.strip():
        raise UsageError("WEBHOOK_SECRET is not set; choose a random secret for the webhook and export it")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    for pattern in args.allow:
        try:
            parse_allow(pattern)
        except ValueError as exc:
            raise UsageError(f"--allow {exc}") from None
    watched = tuple(sorted({parse_watch(w) for w in args.watch}))
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    dtypes = make_options(dtypes=args.dtype, default_dtypes=PUBLISH_DTYPES).dtypes if args.dtype else ()
    template = JobTemplate(image=args.image, flavor=args.flavor, timeout=args.timeout,
                           environment=job_environment(endpoint, args.allow, dtypes))
    wanted = Wanted(template, watched, secret)
    from huggingface_hub import HfApi

    from bot.hub import hub_errors

    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors("the Jobs and webhooks API"):
        report = deploy(api, wanted, token=token, namespace=args.namespace, dry_run=args.dry_run, wait=args.wait,
                        rebind=args.rebind, say=lambda m: (err.write(m + "\n"), err.flush()))
    lines = list(report.actions)
    if args.dry_run:
        lines.append(f"Job: image {template.image}, command {' '.join(JOB_COMMAND)}, flavor {template.flavor}, "
                     f"timeout {template.timeout} s, environment {json.dumps(template.environment)}, secrets HF_TOKEN "
                     f"and {EXPECTED_SECRET_ENV} (values not shown)")
        lines.append(f"webhook: watched {', '.join(f'{t}:{n}' for t, n in watched)}, "
                     f"domains {', '.join(wanted.domains)}")
    out.write("".join(line + "\n" for line in [*lines, json.dumps(report.to_json())]))
    out.flush()
    return 0
