"""`hub-export-bot serve`: options, environment, state-dir lock, and uvicorn.

Kept free of heavy imports at module level: the worker's `spawn` children re-import the main module, and when the
server runs as `python -m bot.server.serve` that is this one.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Mapping

from bot.errors import UsageError

log = logging.getLogger("bot.server")

DEFAULT_STATE_DIR = Path("hub-export-bot-state")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default 8000)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help=f"where the job database and work files live (default ./{DEFAULT_STATE_DIR})")
    parser.add_argument("--workers", type=int, default=1,
                        help="exports run at the same time (default 1: exports are CPU- and memory-heavy)")
    parser.add_argument("--allow", action="extend", nargs="+", default=[], metavar="PATTERN",
                        help="only serve repos matching these fnmatch patterns over 'owner/name', e.g. 'acme/*' "
                             "(repeatable; default: every repo whose webhook knows the secret)")
    parser.add_argument("--job-timeout", type=float, default=3600.0, metavar="SECONDS",
                        help="stop an export running longer than this and fail its job (default 3600)")
    parser.add_argument("--shutdown-grace", type=float, default=8.0, metavar="SECONDS",
                        help="on SIGTERM, how long a running export may take to finish before it is stopped and "
                             "re-queued (default 8)")
    parser.add_argument("--max-attempts", type=int, default=3,
                        help="a job whose export process dies this many times is failed (default 3)")
    parser.add_argument("--show-private", action="store_true",
                        help="show private repos' names and messages on / and /jobs (hidden by default: those "
                             "pages need no secret)")
    parser.add_argument("--runner", help=argparse.SUPPRESS)  # module:function replacing publish (tests, benchmarks)


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
    from bot.server.app import ServerSettings

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
    if any("/" not in p and "*" not in p for p in args.allow):
        bad = next(p for p in args.allow if "/" not in p and "*" not in p)
        raise UsageError(f"--allow {bad!r} would match no repo id; use a pattern over 'owner/name' such as {bad}/*")
    return ServerSettings(secret=secret, state_dir=Path(args.state_dir).resolve(),
                          hf_endpoint=(environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
                          hf_token=environ.get("HF_TOKEN") or None, allow=tuple(args.allow), workers=args.workers,
                          job_timeout=args.job_timeout, shutdown_grace=args.shutdown_grace,
                          max_attempts=args.max_attempts, show_private=args.show_private)


def _lock_state_dir(state_dir: Path):
    """One server per state dir: a second one would 'recover' the first one's running jobs and run them twice."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        handle = open(state_dir / "server.lock", "a+")
    except OSError as exc:
        raise UsageError(f"cannot use --state-dir {state_dir}: {exc.strerror}; choose a writable directory") from None
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the docs say one server per state dir
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UsageError(f"another hub-export-bot server is using {state_dir}; stop it or choose another "
                         "--state-dir") from None
    return handle  # held (and locked) until the process exits, however it exits


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


def _configure_logging(debug: bool) -> None:
    """A server's log needs timestamps; our INFO lines (deliveries, jobs) are shown, libraries stay at WARNING."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING)
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("bot").setLevel(logging.DEBUG if debug else logging.INFO)
    if debug:
        logging.getLogger("uvicorn").setLevel(logging.INFO)


def run_server(args: argparse.Namespace) -> int:
    """Run until SIGTERM or SIGINT; exit 0 after an orderly shutdown. Raises UsageError for bad options."""
    import uvicorn

    from bot.server.app import create_app

    settings = settings_from(args, os.environ)
    _configure_logging(getattr(args, "debug", False))
    runner = load_runner(args.runner) if args.runner else None
    lock = _lock_state_dir(settings.state_dir)
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    app = create_app(settings, runner)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=getattr(args, "debug", False),
                                           lifespan="on", timeout_graceful_shutdown=5))
    if not settings.hf_token:
        log.warning("HF_TOKEN is not set: only public repos can be read and no PR can be opened")
    if not settings.allow:
        log.warning("no --allow: every model repo whose webhook knows the secret is served")
    shown_host = f"[{host}]" if ":" in host else host
    log.info("listening on http://%s:%d (state dir %s, %d worker(s), endpoint %s%s)", shown_host, port,
             settings.state_dir, settings.workers, settings.hf_endpoint,
             f", runner {args.runner}" if args.runner else "")

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
