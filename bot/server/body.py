"""Reading a delivery's body within bounds: size known before reading, a deadline while reading.

Without this, a request declaring a 100 MiB body and sending nothing holds its handler forever, and a client that
disconnects halfway turns into an "Exception in ASGI application" traceback in the log (a few kB per connection).
Here: a declared Content-Length over the cap is refused before a byte is read (413), a request that declares no length
at all is refused (411), a body that has not fully arrived by the deadline is cut (408), and a client that goes away
is one short line. A chunked body (no Content-Length) is capped while it streams. Every refusal closes the
connection: its unread body must not be parsed as the next request.

Not FastAPI's `max_body_size`: it rewrites any response to a request declaring too much, so a wrong secret would be
answered 413 instead of 403, in another format and with the connection kept open.
"""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request

CLOSE = {"Connection": "close"}


class BodyRefused(Exception):
    """The body was not read; `status_code` and `detail` are the answer (if the client is still there to get it)."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def declared_length(request: Request, max_bytes: int) -> int | None:
    """The Content-Length, checked against `max_bytes` before any of the body is read; None for a chunked body."""
    value = request.headers.get("content-length")
    if value is None:
        if "chunked" in request.headers.get("transfer-encoding", "").lower():
            return None
        raise BodyRefused(411, "a Content-Length header is required")
    length = int(value)  # uvicorn (h11) has already refused a malformed Content-Length with a 400
    if length > max_bytes:
        raise BodyRefused(413, f"body of {length} bytes is larger than {max_bytes} bytes (--max-body-size)")
    return length


async def read_body(request: Request, max_bytes: int, timeout: float) -> bytes:
    """The whole body, or BodyRefused (411, 413, 408; 400 when the client disconnected)."""
    declared_length(request, max_bytes)

    async def collect() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise BodyRefused(413, f"body larger than {max_bytes} bytes (--max-body-size)")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        raise BodyRefused(408, f"the body did not arrive within {timeout:g} s (--body-timeout)") from None
    except ClientDisconnect:
        raise BodyRefused(400, "the client disconnected before sending the whole body") from None
