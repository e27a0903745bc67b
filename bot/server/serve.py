"""`hub-export-bot serve`: options, environment, and running uvicorn over a private, locked state dir.

Kept free of heavy imports at module level: the CLI imports it for every command, and most commands are not `serve`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import signal
import socket
import threading
from pathlib import Path
from typing import Mapping

from bot.errors import UsageError
from bot.server.limits import HttpLimits, QueueLimits

log = logging.getLogger("bot.server")

DEFAULT_STATE_DIR = Path("hub-export-bot-state")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'1M', '512K', '8G', '1.5GiB' or plain bytes -> bytes (binary units). For argparse."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 512K, 1M or 8G")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " kmgt".index(unit.lower() or " "))


def parse_memory(text: str) -> int:
    """--child-memory: a size, or 0 / 'none' for no limit (returned as 0)."""
    return 0 if text.strip().lower() in ("0", "none", "unlimited") else parse_size(text)


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be positive")
        return value
    return parse


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default 8000)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help=f"where the job database and work files live (default ./{DEFAULT_STATE_DIR})")
    parser.add_argument("--workers", type=int, default=1,
                        help="exports run at the same time (default 1: exports are CPU- and memory-heavy)")
    parser.add_argument("--allow", action="extend", nargs="+", default=[], metavar="PATTERN",
                        help="only serve these repos: OWNER (every repo of that user or organisation) or "
                             "OWNER/NAME where NAME may be a glob, e.g. 'acme' or 'acme/bert-*'; the owner is a whole "
                             "name, never a glob (repeatable; default: every repo whose webhook knows the secret)")
    parser.add_argument("--job-timeout", type=float, default=3600.0, metavar="SECONDS",
                        help="stop an export running longer than this and fail its job (default 3600)")
    parser.add_argument("--shutdown-grace", type=float, default=8.0, metavar="SECONDS",
                        help="on SIGTERM or SIGINT, how long a running export may take to finish before it is "
                             "stopped and re-queued (default 8)")
    parser.add_argument("--max-attempts", type=int, default=3,
                        help="a job whose export process dies this many times for an unknown reason is failed; out of "
                             "memory, disk full and killed are failed at once (default 3)")
    parser.add_argument("--show-private", action="store_true",
                        help="show private repos' names and messages on / and /jobs (hidden by default: those "
                             "pages need no secret)")
    limits = parser.add_argument_group("limits (see README: Security and failure modes)")
    limits.add_argument("--max-body-size", type=parse_size, default=HttpLimits.max_body_bytes, metavar="SIZE",
                        help="largest delivery body; a larger declared Content-Length is refused with 413 before "
                             "reading (default 1M)")
    limits.add_argument("--body-timeout", type=_positive(float), default=HttpLimits.body_timeout, metavar="SECONDS",
                        help="a body not fully received this long after its headers is cut with 408 (default 10)")
    limits.add_argument("--header-timeout", type=_positive(float), default=HttpLimits.header_timeout,
                        metavar="SECONDS", help="a connection that has not sent complete request headers this long "
                                                "after opening (or after its last response) is closed (default 10)")
    limits.add_argument("--keep-alive-timeout", type=_positive(float), default=HttpLimits.keep_alive_timeout,
                        metavar="SECONDS", help="an idle kept-alive connection is closed after this (default 5)")
    limits.add_argument("--max-connections", type=_positive(int), default=HttpLimits.max_connections, metavar="N",
                        help="open connections at once; requests beyond are answered 503, and beyond half of it the "
                             "connection silent for longest is closed (default 100)")
    limits.add_argument("--max-header-size", type=parse_size, default=HttpLimits.max_header_bytes, metavar="SIZE",
                        help="request line and headers together; larger is answered 400 (default 8K)")
    limits.add_argument("--max-queued", type=_positive(int), default=QueueLimits.max_queued, metavar="N",
                        help="exports waiting, all repos; a push beyond is answered 503 (default 100)")
    limits.add_argument("--max-pending-per-owner", type=_positive(int), default=QueueLimits.max_pending_per_owner,
                        metavar="N", help="exports queued or running per user or organisation; beyond: 429 "
                                          "(default 10)")
    limits.add_argument("--max-pending-per-repo", type=_positive(int), default=QueueLimits.max_pending_per_repo,
                        metavar="N", help="exports queued or running per repo; beyond: 429 (default 2: one running, "
                                          "the newest push waiting)")
    limits.add_argument("--child-memory", type=parse_memory, default=None, metavar="SIZE",
                        help="address-space limit of each export process, e.g. 16G; 0 for none (default: three "
                             "quarters of the machine's memory divided by --workers, at least 2G)")
    limits.add_argument("--child-env", action="extend", nargs="+", default=[], metavar="NAME",
                        help="also pass these environment variables to export processes (e.g. HTTPS_PROXY, HF_HOME); "
                             "by default they get only PATH, HOME, HF_TOKEN, HF_ENDPOINT, HF_HUB_*, LANG, LC_*, "
                             "TMPDIR and PYTHON*; WEBHOOK_SECRET never")
    parser.add_argument("--dtype", action="append", default=[], choices=["fp32", "fp16", "q8", "q4", "q4f16"],
                        help="ONNX dtype variant to offer, repeatable; each is published only if it passes its "
                             "quality gate (default: fp32 and q8, as publish)")
    parser.add_argument("--runner", default="local", metavar="RUNNER",
                        help="where exports run: local (a child process per job, default) or hf-jobs (a Hugging "
                             "Face Job per job: --job-image, --job-flavor; --job-timeout applies)")
    jobs = parser.add_argument_group("--runner hf-jobs")
    jobs.add_argument("--job-image", help="container image built from this project's Dockerfile")
    jobs.add_argument("--job-flavor", default="cpu-upgrade", help="Job hardware flavor (default cpu-upgrade)")
    jobs.add_argument("--job-namespace", help="user or organisation the Jobs run under (default: the token's user)")
    jobs.add_argument("--job-poll", type=_positive(float), default=5.0, metavar="SECONDS",
                      help="how often a running Job's status is checked (default 5)")


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `serve` subcommand to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "serve", help="receive Hub webhooks and export every push to a model repo as a PR",
        description="Serve POST /webhooks/hub for Hub webhooks (secret from WEBHOOK_SECRET). Each push to the "
                    "default branch of an allowed model repo is queued durably and exported by a worker into one "
                    "Hub PR. HF_TOKEN and HF_ENDPOINT are used as for `publish`. Status: GET /, /jobs, /healthz.")
    add_serve_arguments(parser)
    return parser


def load_runner(spec: str):
    """'package.module:function' -> the function; it must be importable by name (it is pickled to the workers)."""
    module_name, _, name = spec.partition(":")
    try:
        runner = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UsageError(f"--runner {spec}: cannot import it ({exc}); pass module:function") from None
    if not callable(runner):
        raise UsageError(f"--runner {spec} is not a function")
    return runner


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]):
    """Options and environment -> ServerSettings, or a UsageError that says what to fix."""
    from bot.hub import DEFAULT_ENDPOINT
    from bot.job import PUBLISH_DTYPES, make_options
    from bot.server.app import ServerSettings
    from bot.server.child import default_child_memory
    from bot.server.payload import parse_allow

    secret = environ.get("WEBHOOK_SECRET", "")
    if not secret.strip():
        raise UsageError("WEBHOOK_SECRET is not set; set it to the secret configured on the Hub webhook "
                         "(https://huggingface.co/settings/webhooks) so that only the Hub can queue exports")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is out of range; choose 0..65535")
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: need at least 1")
    if args.job_timeout <= 0 or args.shutdown_grace < 0:
        raise UsageError("--job-timeout must be positive and --shutdown-grace not negative")
    if args.max_attempts < 1:
        raise UsageError(f"--max-attempts {args.max_attempts}: need at least 1")
    for pattern in args.allow:
        try:
            parse_allow(pattern)
        except ValueError as exc:
            raise UsageError(f"--allow {exc}") from None
    if "WEBHOOK_SECRET" in args.child_env:
        raise UsageError("--child-env WEBHOOK_SECRET: the secret is never passed to export processes")
    if args.max_body_size < 1 or args.max_header_size < 1024:
        raise UsageError("--max-body-size must be positive and --max-header-size at least 1K")
    http = HttpLimits(max_body_bytes=args.max_body_size, body_timeout=args.body_timeout,
                      header_timeout=args.header_timeout, keep_alive_timeout=args.keep_alive_timeout,
                      max_connections=args.max_connections, max_header_bytes=args.max_header_size)
    queue_limits = QueueLimits(max_queued=args.max_queued, max_pending_per_owner=args.max_pending_per_owner,
                               max_pending_per_repo=args.max_pending_per_repo)
    child_memory = default_child_memory(args.workers) if args.child_memory is None else args.child_memory or None
    return ServerSettings(secret=secret, state_dir=Path(args.state_dir).resolve(),
                          hf_endpoint=(environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
                          hf_token=environ.get("HF_TOKEN") or None, allow=tuple(args.allow), workers=args.workers,
                          job_timeout=args.job_timeout, shutdown_grace=args.shutdown_grace,
                          max_attempts=args.max_attempts, show_private=args.show_private, http=http,
                          queue_limits=queue_limits, child_memory=child_memory, child_env=tuple(args.child_env),
                          dtypes=make_options(dtypes=args.dtype, default_dtypes=PUBLISH_DTYPES).dtypes)


def _listen(host: str, port: int) -> socket.socket:
    """Bind before uvicorn starts, so the real port (with --port 0) is known and a busy port is a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --host or --port") from None
    sock.listen(2048)  # listening before "listening on" is logged: a client that reads the log can connect at once
    sock.set_inheritable(False)
    return sock


def run_server(args: argparse.Namespace) -> int:
    """Run until SIGTERM or SIGINT; exit 0 after an orderly shutdown. Raises UsageError for bad options."""
    import uvicorn

    from bot.server.app import create_app
    from bot.server.logs import configure_logging
    from bot.server.outcomes import format_size
    from bot.server.state import lock_state_dir, set_private_umask
    from bot.server.transport import uvicorn_config

    settings = settings_from(args, os.environ)
    debug = getattr(args, "debug", False)
    configure_logging(debug)
    runner = executor = None
    if args.runner == "hf-jobs":
        from bot.server.hfjobs_runner import executor_from

        executor = executor_from(args, settings)
    elif args.runner != "local":  # module:function replacing publish (tests, benchmarks)
        runner = load_runner(args.runner)
    set_private_umask()
    lock = lock_state_dir(settings.state_dir)
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    app = create_app(settings, runner, executor)
    server = uvicorn.Server(uvicorn_config(app, settings.http, access_log=debug))
    if not settings.hf_token:
        log.warning("HF_TOKEN is not set: only public repos can be read and no PR can be opened")
    if not settings.allow:
        log.warning("no --allow: every model repo whose webhook knows the secret is served")
    shown_host = f"[{host}]" if ":" in host else host
    memory = format_size(settings.child_memory) if settings.child_memory else "no limit"
    log.info("listening on http://%s:%d (state dir %s, %d worker(s) with %s each, endpoint %s%s)", shown_host, port,
             settings.state_dir, settings.workers, memory, settings.hf_endpoint,
             f", runner {args.runner}" if args.runner != "local" else "")

    received: list[int] = []
    handled = (signal.SIGTERM, signal.SIGINT)
    in_main_thread = threading.current_thread() is threading.main_thread()
    # uvicorn handles the signals while it runs, then re-raises them once it has shut down; this handler turns that
    # re-raised signal into a normal return, so an orderly SIGTERM shutdown exits 0 instead of dying by the signal.
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in handled} \
        if in_main_thread else {}
    try:
        server.run(sockets=[sock])
    except SystemExit:  # uvicorn exits this way when the app's start-up (job recovery) failed
        log.error("the server did not start; see the errors above")
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        lock.close()
    if not server.started:
        log.error("the server did not start; see the errors above")
        return 1
    log.info("stopped%s", f" ({signal.Signals(received[-1]).name})" if received else "")
    return 0
