"""A metering HTTP proxy: forwards to one upstream (moto) and logs every request it carries.

    python -m bench.meter --upstream 127.0.0.1:PORT --log FILE NAME=PORT[:sqs] ...

Listens on 127.0.0.1:PORT for each ``NAME=PORT`` (one listener per client process, so
the log says which process asked) and forwards each request as it came (same method,
path, headers and body; moto does not check signatures) over a kept-alive connection.
Bodies are buffered whole in each direction (at most the size of one S3 part or ranged
GET). It writes one JSON line per request to FILE when the response is sent:

    {"who", "t0", "t1", "method", "path", "range", "status", "in", "out", "aborted", "op",
     "queue"}

``t0`` / ``t1``: wall clock (``time.time()``) when the request's headers were read / the
response sent; ``in`` / ``out``: body bytes from the client / written to it. ``aborted``:
the client closed the connection before taking the whole response body (``out`` is then
what was written to the socket, which includes what sat unread in its buffers).
``range`` is the request's Range header. On an ``:sqs`` listener, ``op`` is the SQS
action (from ``X-Amz-Target`` or the form's ``Action``) and ``queue`` the last segment of
its ``QueueUrl``. SIGTERM or SIGINT: stop, flush the log, exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any
from urllib.parse import parse_qs

# Not forwarded: they describe one connection, or the framing we redo (Content-Length).
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
     "upgrade", "content-length", "expect"}
)  # fmt: skip
UPSTREAM_TIMEOUT = 120.0
WRITE_BLOCK = 256 << 10
RETRYABLE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class Recorder:
    def __init__(self, path: str) -> None:
        self._file: IO[str] = open(path, "a", buffering=1 << 16)  # noqa: SIM115
        self._lock = threading.Lock()

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


def sqs_call(headers: Any, body: bytes) -> tuple[str | None, str | None]:
    """(action, queue name) of an SQS request, JSON or query protocol."""
    target = headers.get("X-Amz-Target")
    url = None
    if target:
        action = target.rsplit(".", 1)[-1]
        with contextlib.suppress(ValueError, AttributeError):
            url = json.loads(body or b"{}").get("QueueUrl")
    else:
        form = parse_qs(body.decode("utf-8", "replace"))
        action = form.get("Action", [None])[0]
        url = form.get("QueueUrl", [None])[0]
    return action, url.rstrip("/").rsplit("/", 1)[-1] if url else None


class MeteringHandler(BaseHTTPRequestHandler):
    """Forwards one client connection's requests; ``make_handler`` sets the class fields."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect
    listener = ""
    is_sqs = False
    upstream_addr: tuple[str, int] = ("127.0.0.1", 0)
    recorder: Recorder
    upstream_conn: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_upstream(self, body: bytes) -> http.client.HTTPResponse:
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]
        for attempt in range(2):
            conn = self.upstream_conn or http.client.HTTPConnection(
                *self.upstream_addr, timeout=UPSTREAM_TIMEOUT
            )
            self.upstream_conn = None
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in headers:
                    conn.putheader(key, value)
                if body or self.command in ("POST", "PUT", "PATCH"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body or None)
                response = conn.getresponse()
            except RETRYABLE:  # a kept-alive connection the server had closed
                conn.close()
                if attempt:
                    raise
                continue
            self.upstream_conn = None if response.will_close else conn
            return response
        raise AssertionError("unreachable")

    def _forward(self) -> None:
        t0 = time.time()
        body = self._read_body()
        try:
            response = self._send_upstream(body)
            data = response.read()
        except OSError as exc:  # the client sees a 502 (and may retry); the log says so
            self._record(t0, body, 502, 0)
            self.send_error(502, f"upstream: {type(exc).__name__}")
            return
        self.send_response_only(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        length = response.getheader("Content-Length")
        if self.command == "HEAD" and length is not None:
            self.send_header("Content-Length", length)
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        sent = 0
        try:
            with memoryview(data) as view:
                while self.command != "HEAD" and sent < len(data):
                    self.wfile.write(view[sent : sent + WRITE_BLOCK])
                    sent = min(len(data), sent + WRITE_BLOCK)
            self.wfile.flush()
        except OSError:  # the client stopped reading (e.g. a seek elsewhere) and closed
            self.close_connection = True
            self._record(t0, body, response.status, sent, aborted=True)
            return
        self._record(t0, body, response.status, sent)

    def _record(
        self, t0: float, body: bytes, status: int, out: int, *, aborted: bool = False
    ) -> None:
        op, queue = sqs_call(self.headers, body) if self.is_sqs else (None, None)
        self.recorder.write(
            {"who": self.listener, "t0": t0, "t1": time.time(), "method": self.command,
             "path": self.path, "range": self.headers.get("Range"), "status": status,
             "in": len(body), "out": out, "aborted": aborted, "op": op, "queue": queue}
        )  # fmt: skip

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    def finish(self) -> None:
        if self.upstream_conn is not None:
            self.upstream_conn.close()
        super().finish()


class MeteringServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client closed a kept-alive connection (e.g. at exit): not news
        super().handle_error(request, client_address)


def make_handler(
    name: str, sqs: bool, upstream: tuple[str, int], recorder: Recorder
) -> type[MeteringHandler]:
    fields = {"listener": name, "is_sqs": sqs, "upstream_addr": upstream, "recorder": recorder}
    return type(f"MeteringHandler_{name}", (MeteringHandler,), fields)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.meter", description=__doc__)
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the server")
    parser.add_argument("--log", required=True, help="JSON-lines file, appended to")
    parser.add_argument("listeners", nargs="+", metavar="NAME=PORT[:sqs]")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    recorder = Recorder(args.log)
    servers = []
    for spec in args.listeners:
        name, _, rest = spec.partition("=")
        listen_port, _, kind = rest.partition(":")
        handler = make_handler(name, kind == "sqs", (host, int(port)), recorder)
        server = MeteringServer(("127.0.0.1", int(listen_port)), handler)
        servers.append(server)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    stop.wait()
    for server in servers:
        server.shutdown()
        server.server_close()
    recorder.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
