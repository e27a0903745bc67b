"""Every bound the server puts on strangers and on itself, with its default and the reason for it.

Kept in one small module that imports nothing heavy, so that the CLI can show the defaults without loading the
server, and so that the README's list of limits has one source.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HttpLimits:
    """Defaults, and why: a Hub delivery is a few kB sent at once over a fast link.

    - max_body_bytes 1 MiB: a hundred times the largest Hub payload, far below memory worth worrying about;
    - body_timeout 10 s: the whole body, from the end of the headers; the Hub sends it in milliseconds;
    - header_timeout 10 s: from the connection (or the previous response) to the end of the request headers;
    - keep_alive_timeout 5 s: an idle kept-alive connection is closed after this (uvicorn's default);
    - max_connections 100: open connections at once; requests beyond are answered 503. The Hub opens one or two,
      a maintainer's browser a few;
    - max_header_bytes 8 KiB: the request line and headers together, like common proxies' defaults.
    """

    max_body_bytes: int = 1 << 20
    body_timeout: float = 10.0
    header_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 100
    max_header_bytes: int = 8 << 10


@dataclass(frozen=True)
class QueueLimits:
    """How much work the queue takes on; deliveries beyond it are refused, not queued.

    One worker exports a model in about a minute (much longer for big ones), so 100 waiting jobs are already hours of
    work: more would only be stale by the time they ran. Per owner, 10 pending jobs keep one organisation's bulk upload
    from starving everyone else. Per repo, 2 is one export running and the newest push waiting (a newer push
    supersedes the waiting one, so a repo never needs more).
    """

    max_queued: int = 100
    max_pending_per_owner: int = 10
    max_pending_per_repo: int = 2
