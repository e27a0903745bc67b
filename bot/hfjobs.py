"""Hugging Face Jobs, as the bot uses them: the Job it runs, waiting for one, and reading its result line.

Shared by `deploy` (the Job a webhook re-runs) and `serve --runner hf-jobs` (one Job per queued export), so both
start the same command in the same image with the same environment. The token always travels as a Job *secret*
(encrypted by the Hub, never in the command line or the Job's visible environment).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable

JOB_COMMAND = ["hub-export-bot", "job"]
DEFAULT_FLAVOR = "cpu-upgrade"  # 8 vCPU / 32 GB: bert-base-sized exports need more than cpu-basic's 2 vCPU
DEFAULT_TIMEOUT = 3600  # seconds
TERMINAL = ("COMPLETED", "CANCELED", "ERROR", "DELETED")
LABEL = "hub-export-bot"  # label key on every Job the bot starts


@dataclass(frozen=True)
class JobTemplate:
    """What every Job of the bot runs: image, flavor, timeout, plain environment (no secrets here)."""

    image: str  # built from the top-level Dockerfile and pushed where the Hub can pull it
    flavor: str = DEFAULT_FLAVOR
    timeout: int = DEFAULT_TIMEOUT
    environment: dict[str, str] = field(default_factory=dict)

    def run(self, api, *, token: str, env: dict[str, str] | None = None, secrets: dict[str, str] | None = None,
            namespace: str | None = None, role: str):
        """Start one Job; `role` labels it ("source" for deploy's template run, "export" for the server's)."""
        return api.run_job(image=self.image, command=list(JOB_COMMAND), env={**self.environment, **(env or {})},
                           secrets={"HF_TOKEN": token, **(secrets or {})}, flavor=self.flavor,
                           timeout=self.timeout, labels={LABEL: role}, namespace=namespace)


def job_environment(endpoint: str, allow=(), dtypes=()) -> dict[str, str]:
    """The Job's plain environment: the endpoint only when it is not the public Hub, and the serve-like filters."""
    from bot.hub import DEFAULT_ENDPOINT
    from bot.jobentry import ALLOW_ENV, DTYPES_ENV

    env = {}
    if endpoint.rstrip("/") != DEFAULT_ENDPOINT:
        env["HF_ENDPOINT"] = endpoint.rstrip("/")
    if allow:
        env[ALLOW_ENV] = " ".join(allow)
    if dtypes:
        env[DTYPES_ENV] = " ".join(dtypes)
    return env


def wait_for_job(api, job_id: str, *, namespace: str | None, deadline: float, poll: float = 2.0,
                 stop: Callable[[], bool] = lambda: False):
    """Poll inspect_job until the Job ends, the monotonic `deadline` passes or `stop()` is true; the last JobInfo."""
    while True:
        info = api.inspect_job(job_id=job_id, namespace=namespace)
        if info.status.stage in TERMINAL or time.monotonic() >= deadline or stop():
            return info
        time.sleep(poll)


def result_line(api, job_id: str, *, namespace: str | None) -> dict | None:
    """The JSON line `hub-export-bot job` printed last, from the Job's logs; None if there is none."""
    found = None
    try:
        for line in api.fetch_job_logs(job_id=job_id, namespace=namespace):
            text = line.strip()
            if text.startswith("{") and '"status"' in text:
                try:
                    found = json.loads(text)
                except ValueError:
                    continue
    except Exception:  # noqa: BLE001 - logs are a courtesy: the stage alone still says done or failed
        return found
    return found
