"""HTTP limits and the uvicorn configuration that enforces them.

A webhook receiver faces the internet, and its real clients are few and polite: the Hub sends one small JSON body per
push and waits for the answer. So every connection gets a deadline for its request headers, a request body gets a
deadline and a size cap (body.py), and the number of connections is capped, so that idle or trickling sockets are
closed instead of holding the server's file descriptors and slots. uvicorn provides the connection cap
(`limit_concurrency`: a request over it is answered 503), the keep-alive timeout and the header-size cap
(`h11_max_incomplete_event_size`). What it lacks is added here, in one protocol subclass:

- a deadline for the headers of each request (uvicorn has none before a first response);
- a cap on connections that have not sent a request yet: beyond half of --max-connections, the one idle for longest
  is closed. uvicorn counts idle connections against its limit, so sockets opened and left silent, reopened as soon
  as they are closed, would otherwise keep every real delivery answered 503; a real client sends its request right
  after connecting, so evicting the oldest silent connection almost never hits one.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from bot.server.limits import HttpLimits

log = logging.getLogger(__name__)


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request's headers and a cap on connections waiting for one.

    uvicorn arms no timer until a first response is sent, and its keep-alive timer is cancelled by any byte received,
    so a client that connects and says nothing, or sends a header byte every few seconds, keeps its connection (and
    a slot of the connection limit) forever. Here the deadline starts when the connection opens and again when a
    response completes, is not moved by partial data, and ends only when a complete request head has arrived. While
    it runs, the connection is among the waiting ones, of which the oldest is closed when there are too many.
    """

    header_timeout: float = HttpLimits.header_timeout
    max_waiting: int = HttpLimits.max_connections // 2
    _waiting: OrderedDict  # connections waiting for a request head, oldest first (one per server: set by the factory)
    _header_deadline = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request head was parsed: the app (and the body deadline) takes over
            self._cancel_header_deadline()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        self._arm_header_deadline()
        super().on_response_complete()  # may start a pipelined request, which is already complete
        if self.cycle is not cycle or self.transport.is_closing():
            self._cancel_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._header_deadline_passed)
        self._waiting[self] = None
        while len(self._waiting) > self.max_waiting:
            oldest, _ = self._waiting.popitem(last=False)
            oldest._evict()

    def _cancel_header_deadline(self) -> None:
        self._waiting.pop(self, None)
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _evict(self) -> None:
        self._cancel_header_deadline()
        if not self.transport.is_closing():
            peer = self.client[0] if self.client else "?"
            log.info("closed the longest idle connection, from %s: more than %d connections were waiting to send a "
                     "request (half of --max-connections)", peer, self.max_waiting)
            self.transport.close()

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        self._waiting.pop(self, None)
        if not self.transport.is_closing():
            peer = self.client[0] if self.client else "?"
            log.info("closed a connection from %s: no complete request within %g s (--header-timeout)", peer,
                     self.header_timeout)
            self.transport.close()


def guarded_protocol(limits: HttpLimits) -> type[H11Protocol]:
    """HeaderDeadlineProtocol set up for one server (uvicorn instantiates the class it is given)."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,),
                {"header_timeout": limits.header_timeout, "max_waiting": max(1, limits.max_connections // 2),
                 "_waiting": OrderedDict()})


def uvicorn_config(app, limits: HttpLimits, *, access_log: bool = False) -> uvicorn.Config:
    """The server's uvicorn settings. h11 is chosen explicitly: its header-size cap applies only to it, and the
    header deadline is added to it (with httptools installed, "auto" would pick that instead)."""
    return uvicorn.Config(app, http=guarded_protocol(limits), log_config=None,
                          access_log=access_log, lifespan="on", timeout_graceful_shutdown=5,
                          timeout_keep_alive=limits.keep_alive_timeout, limit_concurrency=limits.max_connections,
                          h11_max_incomplete_event_size=limits.max_header_bytes)
