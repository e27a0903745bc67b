"""`serve --runner hf-jobs`: each queued export runs as a Hugging Face Job instead of a child process here.

The server keeps what it is good at (verifying deliveries, the durable queue, per-repo and per-owner limits, the
status page); the export, which needs the CPU and memory, runs on the Hub's hardware. Each job starts
`hub-export-bot job` (the same entry a webhook-started Job runs) with a delivery built from the queued push, polls it
with inspect_job, reads the JSON result line from its logs, and records the outcome with a link to the Job's logs.

A Job over --job-timeout is cancelled and failed; at shutdown, a Job still running after the grace period is cancelled
and its export re-queued (as a local child would be killed and re-queued).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

from bot.hfjobs import JobTemplate, job_environment, result_line, wait_for_job
from bot.jobentry import DTYPES_ENV
from bot.server.outcomes import STATE_BY_RESULT_STATUS, Interrupted, JobOutcome, outcome_from_result
from bot.server.payload import HANDLED_SCOPE
from bot.server.queue import DONE, FAILED, JobRecord

log = logging.getLogger(__name__)


def delivery_for(record: JobRecord) -> dict:
    """A Hub-shaped delivery of the queued push: `hub-export-bot job` filters and reads it like the Hub's."""
    return {"event": {"action": "update", "scope": HANDLED_SCOPE},
            "repo": {"type": "model", "name": record.repo_id, "private": record.private, "defaultBranch": "main"},
            "updatedRefs": [{"ref": "refs/heads/main", "newSha": record.sha}]}


class HfJobsExecutor:
    """A WorkerPool executor (bot.server.worker.Executor) that runs each export as a Hugging Face Job."""

    def __init__(self, template: JobTemplate, *, endpoint: str, token: str, namespace: str | None = None,
                 poll_interval: float = 5.0):
        from huggingface_hub import HfApi

        self.template, self.namespace, self.poll_interval = template, namespace, poll_interval
        self._token = token
        self.api = HfApi(endpoint=endpoint, token=token)

    def __repr__(self) -> str:  # never show the token
        return f"HfJobsExecutor(image={self.template.image!r}, flavor={self.template.flavor!r})"

    def __call__(self, pool, record: JobRecord, work_dir: Path):
        job = pool.publish_job(record)
        env = {"WEBHOOK_PAYLOAD": json.dumps(delivery_for(record)), "WEBHOOK_REPO_ID": record.repo_id,
               "WEBHOOK_REPO_TYPE": "model", DTYPES_ENV: " ".join(job.options.dtypes)}
        started = self.template.run(self.api, token=self._token, env=env, namespace=self.namespace, role="export")
        logs = started.url
        log.info("job %d %s@%s: Hugging Face Job %s (%s)", record.id, record.repo_id, record.sha[:7], started.id, logs)
        info = wait_for_job(self.api, started.id, namespace=self.namespace, poll=self.poll_interval,
                            deadline=time.monotonic() + pool.job_timeout, stop=pool.past_grace)
        if info.status.stage not in ("COMPLETED", "ERROR", "CANCELED", "DELETED"):
            self.api.cancel_job(job_id=started.id, namespace=self.namespace)
            if pool.past_grace():
                return Interrupted(f"re-queued: the server shut down; Hugging Face Job {started.id} was cancelled")
            return JobOutcome(FAILED, f"timed out after {pool.job_timeout:g} s (--job-timeout); Hugging Face Job "
                                      f"{started.id} was cancelled (logs: {logs})", result_status="timeout")
        return _outcome(info, result_line(self.api, started.id, namespace=self.namespace), logs)


def _outcome(info, line: dict | None, logs: str) -> JobOutcome:
    """The Job's result line says what happened; without one, its stage does."""
    if line and line.get("status") in STATE_BY_RESULT_STATUS:
        outcome = outcome_from_result(SimpleNamespace(status=line["status"], message=line.get("message"),
                                                      pr_url=line.get("pr_url")))
        return JobOutcome(outcome.state, f"{outcome.message} (logs: {logs})", outcome.pr_url, outcome.result_status)
    if line and line.get("message"):
        return JobOutcome(FAILED, f"{line['message']} (logs: {logs})", result_status=line.get("status", "error"))
    if info.status.stage == "COMPLETED":
        return JobOutcome(DONE, f"the Job completed without a result line (logs: {logs})", result_status="completed")
    return JobOutcome(FAILED, f"the Job ended {info.status.stage}: {info.status.message or 'no message'} "
                              f"(logs: {logs})", result_status="error")


def executor_from(args, settings) -> HfJobsExecutor:
    """`serve --runner hf-jobs` options -> the executor; UsageError for what is missing."""
    from bot.errors import UsageError

    if not args.job_image:
        raise UsageError("--runner hf-jobs needs --job-image: an image built from this project's Dockerfile")
    if not settings.hf_token:
        raise UsageError("--runner hf-jobs needs HF_TOKEN: it starts the Jobs and becomes their secret")
    template = JobTemplate(image=args.job_image, flavor=args.job_flavor, timeout=int(settings.job_timeout),
                           environment=job_environment(settings.hf_endpoint))
    return HfJobsExecutor(template, endpoint=settings.hf_endpoint, token=settings.hf_token,
                          namespace=args.job_namespace, poll_interval=args.job_poll)
