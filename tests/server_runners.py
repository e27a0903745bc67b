"""Stand-ins for `bot.publish.publish` that the webhook server runs in its worker processes (`--runner`).

They are module-level functions because the worker pickles its runner to a child process. `scripted` behaves according
to the repo name, so one server can exercise every outcome, and leaves a marker file per call (one `.start` when it
begins, one `.done` when it returns) so tests can count how many times a job really ran. The markers go to
$SERVER_TEST_MARKERS if the export process was given it (--child-env), else to a folder named `markers` in the
nearest ancestor of the work dir that has one: export processes get a small environment, and the tests check that.

    acme/sleep-2.5   sleeps 2.5 s first (combines with the words below)
    acme/uptodate    up-to-date          acme/fails     a failed PublishResult whose message holds HTML
    acme/usage-error raises UsageError   acme/boom      raises RuntimeError
    acme/crash       the process dies    anything else  opened, with a PR URL on the given endpoint
    acme/alloc-8g    allocates 8 GiB of address space (numpy.empty: no memory is touched if it succeeds)
    acme/oom-kill    dies by SIGKILL, as when the kernel's OOM killer picks it
    acme/bad-alloc   aborts after C++'s allocation-failure message on stderr
    acme/disk-full   raises ENOSPC naming a file in its work dir
    acme/missing     raises FileNotFoundError naming a file in its work dir

The start marker also records the environment's variable names and the RLIMIT_AS the process runs under.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import signal
import sys
import time
from pathlib import Path

from bot.errors import UsageError
from bot.job import FAILED, OPENED, UP_TO_DATE, PublishJob, PublishResult

FAILURE_HTML = '<script>alert("x")</script> validation failed'


def _markers(near: Path) -> Path | None:
    if folder := os.environ.get("SERVER_TEST_MARKERS"):
        return Path(folder)
    return next((p / "markers" for p in Path(near).parents if (p / "markers").is_dir()), None)


def _mark(job: PublishJob, near: Path, kind: str, **extra) -> None:
    folder = _markers(near)
    if folder is None:
        return
    name = f"{job.repo_id.replace('/', '__')}-{job.revision[:12]}-{os.getpid()}-{time.time_ns()}.{kind}"
    (folder / name).write_text(json.dumps({"repo_id": job.repo_id, "revision": job.revision, **extra}))


def scripted(job: PublishJob, *, endpoint: str, token: str | None, work_dir: Path, progress=None) -> PublishResult:
    _mark(job, work_dir, "start", endpoint=endpoint, token=token, trigger=job.trigger, work_dir=str(work_dir),
          work_dir_exists=Path(work_dir).is_dir(), env_names=sorted(os.environ),
          rlimit_as=resource.getrlimit(resource.RLIMIT_AS)[0])
    if progress:
        progress("scripted runner started")
    name = job.repo_id.split("/")[-1]
    if match := re.search(r"sleep-(\d+(?:\.\d+)?)", name):
        time.sleep(float(match.group(1)))
    if "crash" in name:
        os._exit(3)
    if "alloc-8g" in name:
        import numpy

        numpy.empty(8 << 30, numpy.uint8)
    if "oom-kill" in name:
        os.kill(os.getpid(), signal.SIGKILL)
    if "bad-alloc" in name:
        sys.stderr.write("terminate called after throwing an instance of 'std::bad_alloc'\n  what():  std::bad_alloc\n")
        sys.stderr.flush()
        os.abort()
    if "disk-full" in name:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(work_dir) / "onnx" / "model.onnx"))
    if "missing" in name:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(Path(work_dir) / "onnx" / "model.onnx"))
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
    _mark(job, work_dir, "done", status=result.status)
    return result


def instant(job: PublishJob, *, endpoint: str, token: str | None, work_dir: Path, progress=None) -> PublishResult:
    """Returns at once: for the load benchmark, where only the transport and the queue are measured."""
    return PublishResult(OPENED, job.repo_id, job.revision, "opened PR #1",
                         pr_url=f"{endpoint}/{job.repo_id}/discussions/1", pr_num=1)
