"""The server's log: timestamps, our INFO lines, and a cap on lines a stranger can cause.

Every refused request can be made to log (a wrong secret, a malformed body, a connection over the limit, an idle
socket closed), and a flood of them once wrote tens of megabytes in seconds. So the loggers on the request path keep at
most `burst` lines of each kind per `window` seconds; the last one allowed says that more are being dropped, and the
first one after the window says how many were.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

# Loggers whose lines a client can trigger at will: uvicorn's (bad requests, the connection limit, app errors), the
# transport's (idle connections closed) and the app's refusals. Accepted deliveries and jobs are bounded by the queue
# limits and are logged in full.
REFUSALS_LOGGER = "bot.server.refused"
REQUEST_PATH_LOGGERS = ("uvicorn.error", "bot.server.transport", REFUSALS_LOGGER)


@dataclass
class _Kind:
    window_start: float
    count: int = 0
    dropped: int = 0


class RateLimitFilter(logging.Filter):
    """At most `burst` records per (logger, level, message template) per `window` seconds."""

    MAX_KINDS = 1000  # templates are few; a flood of distinct preformatted messages only resets the table

    def __init__(self, burst: int = 10, window: float = 60.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.burst, self.window, self._clock = burst, window, clock
        self._kinds: dict[tuple, _Kind] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        with self._lock:
            kind = self._kinds.get(key)
            if kind is None or now - kind.window_start >= self.window:
                if len(self._kinds) >= self.MAX_KINDS:
                    self._kinds.clear()
                dropped = kind.dropped if kind else 0
                kind = self._kinds[key] = _Kind(now)
                if dropped:
                    self._append(record, f"[{dropped} more like this were dropped in the last {self.window:g} s]")
            if kind.count >= self.burst:
                kind.dropped += 1
                return False
            kind.count += 1
            if kind.count == self.burst:
                self._append(record, f"[more like this are dropped for up to {self.window:g} s]")
            return True

    @staticmethod
    def _append(record: logging.LogRecord, note: str) -> None:
        record.msg, record.args = f"{record.getMessage()} {note}", None


def configure_logging(debug: bool) -> None:
    """A server's log needs timestamps; our INFO lines (deliveries, jobs) are shown, libraries stay at WARNING."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING)
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("bot").setLevel(logging.DEBUG if debug else logging.INFO)
    if debug:
        logging.getLogger("uvicorn").setLevel(logging.INFO)
    limiter = RateLimitFilter()
    for name in REQUEST_PATH_LOGGERS:
        logging.getLogger(name).addFilter(limiter)
