"""Stand-ins for `bot.publish.publish` that the webhook server runs in its worker processes (`--runner`).

They are module-level functions because the worker pickles its runner to a child process. `scripted` behaves according
to the repo name, so one server can exercise every outcome, and leaves a marker file per call in $SERVER_TEST_MARKERS
(one `.start` when it begins, one `.done` when it returns) so tests can count how many times a job really ran.

    acme/sleep-2.5   sleeps 2.5 s first (combines with the words below)
    acme/uptodate    up-to-date          acme/fails     a failed PublishResult whose message holds HTML
    acme/usage-error raises UsageError   acme/boom      raises RuntimeError
    acme/crash       the process dies    anything else  opened, with a PR URL on the given endpoint
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from bot.errors import UsageError
from bot.job import FAILED, OPENED, UP_TO_DATE, PublishJob, PublishResult

FAILURE_HTML = '<script>alert("x")</script> validation failed'


def _mark(job: PublishJob, kind: str, **extra) -> None:
    folder = os.environ.get("SERVER_TEST_MARKERS")
    if not folder:
        return
    name = f"{job.repo_id.replace('/', '__')}-{job.revision[:12]}-{os.getpid()}-{time.time_ns()}.{kind}"
    (Path(folder) / name).write_text(json.dumps({"repo_id": job.repo_id, "revision": job.revision, **extra}))


def scripted(job: PublishJob, *, endpoint: str, token: str | None, work_dir: Path, progress=None) -> PublishResult:
    _mark(job, "start", endpoint=endpoint, token=token, trigger=job.trigger, work_dir=str(work_dir),
          work_dir_exists=Path(work_dir).is_dir())
    if progress:
        progress("scripted runner started")
    name = job.repo_id.split("/")[-1]
    if match := re.search(r"sleep-(\d+(?:\.\d+)?)", name):
        time.sleep(float(match.group(1)))
    if "crash" in name:
        os._exit(3)
    if "boom" in name:
        raise RuntimeError("boom")
    if "usage-error" in name:
        raise UsageError("unsupported architecture 'resnet'; see `hub-export-bot features`")
    if "uptodate" in name:
        result = PublishResult(UP_TO_DATE, job.repo_id, job.revision, "nothing changed since the last export")
    elif "fails" in name:
        result = PublishResult(FAILED, job.repo_id, job.revision, FAILURE_HTML)
    else:
        result = PublishResult(OPENED, job.repo_id, job.revision, "opened PR #1",
                               pr_url=f"{endpoint}/{job.repo_id}/discussions/1", pr_num=1)
    _mark(job, "done", status=result.status)
    return result


def instant(job: PublishJob, *, endpoint: str, token: str | None, work_dir: Path, progress=None) -> PublishResult:
    """Returns at once: for the load benchmark, where only the transport and the queue are measured."""
    return PublishResult(OPENED, job.repo_id, job.revision, "opened PR #1",
                         pr_url=f"{endpoint}/{job.repo_id}/discussions/1", pr_num=1)
