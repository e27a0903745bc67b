"""The Hub emulator plus Hugging Face Jobs and webhooks, as `huggingface_hub`'s HfApi calls them (2.4):

    POST /api/jobs/{namespace}                    run_job          -> JobInfo JSON (stage SCHEDULING)
    GET  /api/jobs/{namespace}/{id}               inspect_job      -> JobInfo JSON
    GET  /api/jobs/{namespace}/{id}/logs          fetch_job_logs   -> text/event-stream of `data: {"data", "timestamp"}`
    POST /api/jobs/{namespace}/{id}/cancel        cancel_job
    GET  /api/settings/webhooks                   list_webhooks    -> [webhook]
    POST /api/settings/webhooks                   create_webhook   -> {"webhook": webhook}   (url or jobSourceId)
    GET  /api/settings/webhooks/{id}              get_webhook      -> {"webhook": webhook}
    POST /api/settings/webhooks/{id}              update_webhook   -> {"webhook": webhook}
    POST /api/settings/webhooks/{id}/enable|disable

A Job really runs: its command is executed here, in a subprocess, with the Job's environment, its secrets and (for a
webhook-started Job) WEBHOOK_PAYLOAD / WEBHOOK_REPO_ID / WEBHOOK_REPO_TYPE / WEBHOOK_SECRET, and nothing else of the
test process's environment but PATH, HOME and PYTHONPATH (and HF_HUB_DISABLE_XET: this hub speaks LFS).
`hub-export-bot ...` runs as `python -m bot ...` (the image's entry point is this project). The image itself is not pulled or run: that is the part only the real Hub can check.

Guesses about the real service, kept here:
- A webhook bound to a Job (`jobSourceId`) stores a copy of that Job's spec as `job` (dockerImage, command,
  arguments, environment, flavor, timeout, labels) plus the names of the secrets it was given; secret values are
  never returned. The source Job's own secrets are not copied (as the client documents).
- Stages go SCHEDULING -> RUNNING -> COMPLETED (exit 0) or ERROR (message "Job failed with exit code: N"); a Job
  over its timeoutSeconds is killed and ends ERROR "Job timeout"; cancel ends CANCELED.
- `push_event` plays a push to a repo's main branch: every enabled webhook with domain "repo" that watches the repo,
  its owner (user or org) fires; a Job webhook starts a Job owned by the webhook's creator.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone

from tests.emulators.hub import HubEmulator, HubError

_JOBS = r"^/api/jobs/(?P<ns>[^/]+)"
_HOOKS = r"^/api/settings/webhooks"
_ROUTES = [
    ("POST", _JOBS + r"$", "_run_job"),
    ("GET", _JOBS + r"/(?P<id>[0-9a-f]{24})$", "_inspect_job"),
    ("GET", _JOBS + r"/(?P<id>[0-9a-f]{24})/logs$", "_job_logs"),
    ("POST", _JOBS + r"/(?P<id>[0-9a-f]{24})/cancel$", "_cancel_job"),
    ("GET", _HOOKS + r"$", "_list_webhooks"),
    ("POST", _HOOKS + r"$", "_create_webhook"),
    ("GET", _HOOKS + r"/(?P<id>[0-9a-f]{24})$", "_get_webhook"),
    ("POST", _HOOKS + r"/(?P<id>[0-9a-f]{24})$", "_update_webhook"),
    ("POST", _HOOKS + r"/(?P<id>[0-9a-f]{24})/(?P<action>enable|disable)$", "_toggle_webhook"),
]
SPEC_KEYS = ("dockerImage", "spaceId", "command", "arguments", "environment", "flavor", "labels")
PASSED_THROUGH = ("PATH", "HOME", "PYTHONPATH", "LANG", "TMPDIR")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class EmulatedJob:
    id: str
    owner: str
    spec: dict  # as sent by run_job (secrets removed)
    secrets: dict[str, str] = field(repr=False)
    extra_env: dict[str, str] = field(repr=False)
    initiator: dict | None = None
    stage: str = "SCHEDULING"
    message: str | None = None
    created_at: str = field(default_factory=_now)
    started_at: str | None = None
    finished_at: str | None = None
    logs: list[tuple[str, str]] = field(default_factory=list)  # (timestamp, line)
    returncode: int | None = None
    process: subprocess.Popen | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def env(self) -> dict[str, str]:
        return {**(self.spec.get("environment") or {}), **self.extra_env}


@dataclass
class EmulatedWebhook:
    id: str
    owner: str
    watched: list[dict]
    domains: list[str]
    secret: str | None = field(repr=False)
    url: str | None = None
    job: dict | None = None  # copy of the source Job's spec, plus "timeout"
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    disabled: bool = False


class JobsHub(HubEmulator):
    """HubEmulator with Jobs and webhooks; see the module docstring."""

    def __init__(self):
        super().__init__()
        self.jobs: dict[str, EmulatedJob] = {}
        self.webhooks: dict[str, EmulatedWebhook] = {}
        self._ids = itertools.count(1)

    # ---- test-facing helpers ---------------------------------------------------------------------------------------

    def push_event(self, repo_id: str, sha: str | None = None) -> list[str]:
        """A push to `repo_id`'s main: fire the watching webhooks; the ids of the Jobs they started."""
        sha = sha or self.head(repo_id)
        with self._lock:
            repo = self._get("model", repo_id)
            payload = {"event": {"action": "update", "scope": "repo.content"},
                       "repo": {"type": "model", "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                                "private": repo.private, "url": {"web": f"{self.url}/{repo_id}"}},
                       "updatedRefs": [{"ref": "refs/heads/main", "oldSha": "0" * 40, "newSha": sha}]}
            started = []
            for hook in self.webhooks.values():
                if hook.disabled or "repo" not in hook.domains or not self._watches(hook, repo_id):
                    continue
                if hook.job is None:
                    continue  # URL webhooks are the webhook server's tests' business
                payload["webhook"] = {"id": hook.id, "version": 3}
                env = {"WEBHOOK_PAYLOAD": json.dumps(payload), "WEBHOOK_REPO_ID": repo_id,
                       "WEBHOOK_REPO_TYPE": "model", "WEBHOOK_SECRET": hook.secret or ""}
                spec = {k: v for k, v in hook.job.items() if k in SPEC_KEYS}
                if hook.job.get("timeout"):
                    spec["timeoutSeconds"] = hook.job["timeout"]
                job = self._start_job(hook.owner, spec, dict(hook.secrets), env,
                                      {"type": "webhook", "id": hook.id})
                started.append(job.id)
            return started

    def wait_job(self, job_id: str, timeout: float = 300) -> EmulatedJob:
        job = self.jobs[job_id]
        if not job.done.wait(timeout):
            raise TimeoutError(f"job {job_id} still {job.stage} after {timeout} s")
        return job

    def job_output(self, job_id: str) -> str:
        return "\n".join(line for _, line in self.jobs[job_id].logs)

    # ---- routing ---------------------------------------------------------------------------------------------------

    def _route(self, req, is_cdn):
        answer = None if is_cdn else self._dispatch(_ROUTES, req)  # Jobs and webhooks, then the Hub's own routes
        return answer or super()._route(req, is_cdn)

    def _new_id(self) -> str:
        return f"{next(self._ids):024x}"

    def _user(self, req, write: bool = True) -> str:
        user, can_write = self._auth(req)
        if user is None:
            raise HubError(401, "You must be authenticated to do this")
        if write and not can_write:
            raise HubError(403, "This token is read-only: a write token is needed")
        return user

    def _namespace(self, req, match, write: bool = True) -> str:
        user = self._user(req, write)
        ns = match["ns"]
        if ns != user and user not in self.orgs.get(ns, ()):
            raise HubError(403, f"You don't have access to the namespace {ns}")
        return ns

    def _watches(self, hook: EmulatedWebhook, repo_id: str) -> bool:
        owner = repo_id.split("/")[0]
        return any((w["type"] == "model" and w["name"] == repo_id) or (w["type"] in ("user", "org") and
                                                                        w["name"] == owner) for w in hook.watched)

    # ---- Jobs ------------------------------------------------------------------------------------------------------

    def _job_json(self, job: EmulatedJob) -> dict:
        owner_type = "org" if job.owner in self.orgs else "user"
        return {"id": job.id, "createdAt": job.created_at, "startedAt": job.started_at, "finishedAt": job.finished_at,
                **{k: job.spec[k] for k in SPEC_KEYS if k in job.spec},
                "secrets": {name: "encrypted" for name in job.secrets},
                "status": {"stage": job.stage, "message": job.message},
                "owner": {"id": hashlib.sha1(job.owner.encode()).hexdigest()[:24], "name": job.owner,
                          "type": owner_type},
                "initiator": job.initiator}

    def _run_job(self, req, match):
        ns = self._namespace(req, match)
        body = req.json()
        if not body.get("command") or not (body.get("dockerImage") or body.get("spaceId")):
            raise HubError(400, "command and dockerImage (or spaceId) are required")
        secrets = body.pop("secrets", None) or {}
        job = self._start_job(ns, body, secrets, {}, {"type": "user", "id": ns, "name": ns})
        return self._json(self._job_json(job))

    def _inspect_job(self, req, match):
        self._namespace(req, match, write=False)
        job = self.jobs.get(match["id"])
        if job is None or job.owner != match["ns"]:
            raise HubError(404, "Job not found")
        return self._json(self._job_json(job))

    def _job_logs(self, req, match):
        self._namespace(req, match, write=False)
        job = self.jobs.get(match["id"])
        if job is None:
            raise HubError(404, "Job not found")
        events = [("", "===== Job started =====")] + list(job.logs)
        body = "".join(f"data: {json.dumps({'data': line, 'timestamp': ts or job.created_at})}\n\n"
                       for ts, line in events)
        return 200, {"Content-Type": "text/event-stream"}, body.encode()

    def _cancel_job(self, req, match):
        self._namespace(req, match)
        job = self.jobs.get(match["id"])
        if job is None:
            raise HubError(404, "Job not found")
        if job.stage in ("SCHEDULING", "RUNNING"):
            job.stage, job.message = "CANCELED", "Job canceled"
            if job.process and job.process.poll() is None:
                job.process.kill()
        return self._json({})

    def _start_job(self, owner: str, spec: dict, secrets: dict, extra_env: dict, initiator: dict) -> EmulatedJob:
        job = EmulatedJob(self._new_id(), owner, spec, secrets, extra_env, initiator)
        self.jobs[job.id] = job
        threading.Thread(target=self._execute, args=(job,), daemon=True, name=f"job-{job.id}").start()
        return job

    def _execute(self, job: EmulatedJob) -> None:
        command = list(job.spec["command"]) + list(job.spec.get("arguments") or [])
        if command[0] == "hub-export-bot":
            command = [sys.executable, "-m", "bot", *command[1:]]
        elif command[0] in ("python", "python3"):
            command = [sys.executable, *command[1:]]
        env = {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ}
        env.update(HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")  # this hub speaks LFS, not Xet
        env.update({k: str(v) for k, v in job.env.items()})
        env.update(job.secrets)
        with self._lock:
            if job.stage == "CANCELED":
                job.done.set()
                return
            job.stage, job.started_at = "RUNNING", _now()
            job.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True, errors="replace")
        timeout = job.spec.get("timeoutSeconds")
        timer = threading.Timer(timeout, self._time_out, args=(job,)) if timeout else None
        if timer:
            timer.start()
        for line in job.process.stdout:
            job.logs.append((_now(), line.rstrip("\n")))
        job.returncode = job.process.wait()
        if timer:
            timer.cancel()
        with self._lock:
            if job.stage == "RUNNING":
                job.stage, job.message = ("COMPLETED", None) if job.returncode == 0 else \
                    ("ERROR", f"Job failed with exit code: {job.returncode}")
            job.finished_at = _now()
        job.done.set()

    def _time_out(self, job: EmulatedJob) -> None:
        with self._lock:
            if job.stage == "RUNNING":
                job.stage, job.message = "ERROR", "Job timeout"
                job.process.kill()

    # ---- webhooks --------------------------------------------------------------------------------------------------

    def _hook_json(self, hook: EmulatedWebhook) -> dict:
        job = None
        if hook.job is not None:
            job = {**hook.job, "secrets": sorted(hook.secrets)}
        return {"id": hook.id, "url": hook.url, "job": job, "watched": hook.watched, "domains": hook.domains,
                "secret": hook.secret, "disabled": hook.disabled}

    def _hook(self, req, match) -> EmulatedWebhook:
        user = self._user(req, write=req.method != "GET")
        hook = self.webhooks.get(match["id"])
        if hook is None or hook.owner != user:
            raise HubError(404, "Webhook not found")
        return hook

    def _source_job(self, user: str, job_id: str) -> dict:
        job = self.jobs.get(job_id)
        if job is None or (job.owner != user and user not in self.orgs.get(job.owner, ())):
            raise HubError(404, f"Job {job_id} not found")
        copy = {k: job.spec[k] for k in SPEC_KEYS if k in job.spec}
        copy["timeout"] = job.spec.get("timeoutSeconds")
        return copy

    def _check_watched(self, body: dict) -> list[dict]:
        watched = body.get("watched")
        if not isinstance(watched, list) or not watched or any(
                not isinstance(w, dict) or w.get("type") not in ("user", "org", "model", "dataset", "space", "bucket")
                or not w.get("name") for w in watched):
            raise HubError(400, "watched must be a non-empty list of {type, name}")
        return [{"type": w["type"], "name": w["name"]} for w in watched]

    def _list_webhooks(self, req, match):
        user = self._user(req, write=False)
        return self._json([self._hook_json(h) for h in self.webhooks.values() if h.owner == user])

    def _create_webhook(self, req, match):
        user = self._user(req)
        body = req.json()
        watched = self._check_watched(body)
        if bool(body.get("url")) == bool(body.get("jobSourceId")):
            raise HubError(400, "Set exactly one of url or jobSourceId")
        if body.get("secrets") and not body.get("jobSourceId"):
            raise HubError(400, "secrets are only valid with a job")
        hook = EmulatedWebhook(self._new_id(), user, watched, list(body.get("domains") or ["repo", "discussion"]),
                               body.get("secret"), body.get("url"))
        if body.get("jobSourceId"):
            hook.job = self._source_job(user, body["jobSourceId"])
            hook.secrets = dict(body.get("secrets") or {})
        self.webhooks[hook.id] = hook
        return self._json({"webhook": self._hook_json(hook)})

    def _get_webhook(self, req, match):
        return self._json({"webhook": self._hook_json(self._hook(req, match))})

    def _update_webhook(self, req, match):
        hook = self._hook(req, match)
        body = req.json()
        hook.watched = self._check_watched(body)
        if body.get("url"):
            hook.url, hook.job, hook.secrets = body["url"], None, {}
        if body.get("jobSourceId"):
            hook.url, hook.job = None, self._source_job(hook.owner, body["jobSourceId"])
            hook.secrets = dict(body.get("secrets") or {})
        if "domains" in body:
            hook.domains = list(body["domains"])
        if "secret" in body:
            hook.secret = body["secret"]
        return self._json({"webhook": self._hook_json(hook)})

    def _toggle_webhook(self, req, match):
        hook = self._hook(req, match)
        hook.disabled = match["action"] == "disable"
        return self._json({"webhook": self._hook_json(hook)})


