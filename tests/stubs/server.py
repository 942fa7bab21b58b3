"""What every local stand-in server shares: a threaded HTTP server on 127.0.0.1 and its life.

A stand-in is a context manager: entering starts serving on a free port, leaving shuts the
server down and waits for its thread. ``closing`` is set first, so a handler that stalls on
purpose (a timeout test) can give up early.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: Any = None  # the stand-in, for handlers that need its configuration

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (a timeout, a client that heard enough) is expected."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LocalServer:
    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._closing = threading.Event()
        self._server = QuietServer(("127.0.0.1", 0), handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
