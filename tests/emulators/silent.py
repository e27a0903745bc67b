"""A TCP endpoint that accepts connections and never answers: what a hung Hub, proxy or load balancer looks like.

    with SilentServer() as silent:
        ... point a client at silent.url with a short read timeout ...

The socket is real (the client connects fine, so only a read timeout can end the wait), and every accepted
connection is held open, unread and unanswered, until the server stops.
"""

from __future__ import annotations

import socket
import threading


class SilentServer:
    def __init__(self) -> None:
        self.url = ""
        self.accepted = 0
        self._socket: socket.socket | None = None
        self._held: list[socket.socket] = []
        self._thread: threading.Thread | None = None

    def start(self) -> SilentServer:
        self._socket = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed by stop()
                return
            self.accepted += 1
            self._held.append(connection)

    def stop(self) -> None:
        if self._socket is not None:
            self._socket.close()
        for connection in self._held:
            connection.close()
        self._held = []

    def __enter__(self) -> SilentServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
