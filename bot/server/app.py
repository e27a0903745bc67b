"""The webhook app: transport only. Verify the secret, parse, filter, enqueue, answer; workers do the slow part.

A delivery is answered as soon as its job is durably queued (202), so the Hub never waits for an export. Status codes:
401 no secret, 403 wrong secret, 411 no Content-Length, 413 too large, 408 body too slow, 400 not JSON, 422 not a Hub
payload, 200 ignored or duplicate, 202 queued, 429 the repo or its owner has too many exports pending, 503 the queue is
full (both with Retry-After). An unexpected failure (e.g. the database is unwritable) is a 500 on purpose: the delivery
was not accepted. Refusals are logged through a rate-limited logger (logs.py): strangers can cause them at will.
"""

from __future__ import annotations

import hmac
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from bot.hub import DEFAULT_ENDPOINT
from bot.job import PUBLISH_DTYPES
from bot.server.body import CLOSE, BodyRefused, read_body
from bot.server.limits import HttpLimits, QueueLimits
from bot.server.logs import REFUSALS_LOGGER
from bot.server.page import render_jobs_page
from bot.server.payload import Accepted, PayloadError, decide, parse_delivery
from bot.server.queue import QUEUED, RUNNING, STATES, JobQueue, Refused
from bot.server.worker import Executor, Runner, WorkerPool, run_publish

log = logging.getLogger(__name__)
refusals = logging.getLogger(REFUSALS_LOGGER)

SECRET_HEADER = "X-Webhook-Secret"
RETRY_AFTER_SECONDS = 60  # for 429/503: about one export; the Hub shows it, a person replays the delivery after it


@dataclass(frozen=True)
class ServerSettings:
    """Everything the server needs, read once at start-up; secrets are kept out of repr (and so out of logs)."""

    secret: str = field(repr=False)
    state_dir: Path = Path("hub-export-bot-state")
    hf_endpoint: str = DEFAULT_ENDPOINT
    hf_token: str | None = field(default=None, repr=False)
    allow: tuple[str, ...] = ()
    workers: int = 1
    job_timeout: float = 3600.0
    shutdown_grace: float = 8.0
    max_attempts: int = 3
    show_private: bool = False
    http: HttpLimits = HttpLimits()
    queue_limits: QueueLimits = QueueLimits()
    child_memory: int | None = None  # bytes of address space per export process; None: no limit
    child_env: tuple[str, ...] = ()  # environment variables passed to export processes beyond the allow-list
    dtypes: tuple[str, ...] = PUBLISH_DTYPES  # ONNX dtype variants each export offers (bot.job)

    @property
    def database(self) -> Path:
        return self.state_dir / "jobs.sqlite3"

    @property
    def work_root(self) -> Path:
        return self.state_dir / "work"


def _answer(status_code: int, status: str, headers: dict | None = None, **fields) -> JSONResponse:
    return JSONResponse({"status": status, **fields}, status_code=status_code, headers=headers)


def create_app(settings: ServerSettings, runner: Runner | None = None, executor: Executor | None = None) -> FastAPI:
    """The ASGI app; its lifespan recovers interrupted jobs, then starts the workers, and stops them on shutdown."""
    queue = JobQueue(settings.database, max_attempts=settings.max_attempts, limits=settings.queue_limits)
    pool = WorkerPool(queue, runner or run_publish, endpoint=settings.hf_endpoint, token=settings.hf_token,
                      work_root=settings.work_root, workers=settings.workers, job_timeout=settings.job_timeout,
                      shutdown_grace=settings.shutdown_grace, child_memory=settings.child_memory,
                      child_env=settings.child_env, dtypes=settings.dtypes, executor=executor)
    # os.environ decodes with surrogateescape: this gives back the secret's bytes as they were set
    expected_secret = settings.secret.encode("utf-8", "surrogateescape")
    http = settings.http
    redact = not settings.show_private

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        recovery = queue.recover()
        if recovery.requeued:
            log.warning("re-queued %d job(s) interrupted by the last shutdown: %s", len(recovery.requeued),
                        ", ".join(map(str, recovery.requeued)))
        if recovery.failed:
            log.error("gave up on %d job(s) that were interrupted %d times: %s", len(recovery.failed),
                      settings.max_attempts, ", ".join(map(str, recovery.failed)))
        pool.start()
        try:
            yield
        finally:
            log.info("stopping: waiting up to %g s for running jobs", settings.shutdown_grace)
            await run_in_threadpool(pool.stop)

    app = FastAPI(title="hub-export-bot", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.queue, app.state.pool, app.state.settings = queue, pool, settings

    @app.post("/webhooks/hub")
    async def hub_webhook(request: Request) -> JSONResponse:
        peer = request.client.host if request.client else "?"
        supplied = request.headers.get(SECRET_HEADER)
        if not supplied:
            return _answer(401, "error", CLOSE, detail=f"missing {SECRET_HEADER} header")
        # Compared as bytes in constant time: the header as sent (Starlette decodes header bytes as latin-1, which
        # encode("latin-1") undoes) against the secret's UTF-8 bytes, so a non-ASCII secret can match.
        if not hmac.compare_digest(supplied.encode("latin-1"), expected_secret):
            refusals.warning("refused a delivery with a wrong secret from %s", peer)
            return _answer(403, "error", CLOSE, detail=f"wrong {SECRET_HEADER}")
        try:
            body = await read_body(request, http.max_body_bytes, http.body_timeout)
        except BodyRefused as exc:
            refusals.info("refused a delivery from %s: %s", peer, exc.detail)
            return _answer(exc.status_code, "error", CLOSE, detail=exc.detail)
        try:
            delivery = parse_delivery(body)
        except PayloadError as exc:
            refusals.info("refused a delivery: %s", exc.detail)
            return _answer(exc.status_code, "error", detail=exc.detail, errors=exc.errors)
        delivery_id = delivery.webhook.id if delivery.webhook else None
        decision = decide(delivery, settings.allow)
        if not isinstance(decision, Accepted):
            log.info("ignored delivery for %s (webhook %s): %s", delivery.repo.name, delivery_id, decision.reason)
            return _answer(200, "ignored", reason=decision.reason)
        enqueued = await run_in_threadpool(queue.enqueue, decision.repo_id, decision.sha, private=decision.private)
        if isinstance(enqueued, Refused):
            refusals.warning("refused a delivery for %s@%s: %s", decision.repo_id, decision.sha[:7], enqueued.reason)
            return _answer(503 if enqueued.limit == "queue" else 429, "refused",
                           {"Retry-After": str(RETRY_AFTER_SECONDS)}, reason=enqueued.reason,
                           retry_after=RETRY_AFTER_SECONDS)
        if not enqueued.queued:
            log.info("duplicate delivery for %s@%s: job %d is %s", decision.repo_id, decision.sha[:7],
                     enqueued.job_id, enqueued.state)
            return _answer(200, "duplicate", job_id=enqueued.job_id, state=enqueued.state)
        pool.notify()
        log.info("%s job %d for %s@%s (webhook %s)", enqueued.outcome, enqueued.job_id, decision.repo_id,
                 decision.sha[:7], delivery_id)
        return _answer(202, "queued", job_id=enqueued.job_id, requeued=enqueued.outcome == "requeued")

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        counts = queue.counts()
        alive = pool.alive()
        healthy = alive == settings.workers
        return _answer(200 if healthy else 503, "ok" if healthy else "degraded", queued=counts[QUEUED],
                       running=counts[RUNNING], workers=alive)

    @app.get("/jobs")
    def list_jobs(limit: int = Query(50, ge=1, le=1000),
                  state: str | None = Query(None, pattern=f"^({'|'.join(STATES)})$")) -> list[dict]:
        return [job.to_json(redact_private=redact) for job in queue.recent(limit, state)]

    @app.get("/jobs/{job_id}")
    def get_job(job_id: int) -> JSONResponse:
        job = queue.get(job_id)
        if job is None:
            return _answer(404, "error", detail=f"no job {job_id}")
        return JSONResponse(job.to_json(redact_private=redact))

    @app.get("/", response_class=HTMLResponse)
    def jobs_page(limit: int = Query(50, ge=1, le=1000)) -> HTMLResponse:
        jobs = [job.to_json(redact_private=redact) for job in queue.recent(limit)]
        return HTMLResponse(render_jobs_page(jobs, queue.counts(), settings.hf_endpoint))

    return app
