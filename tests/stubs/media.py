"""A YouTube stand-in: a real HTTP server on 127.0.0.1 that answers searches with audio.

``download(..., search_prefix=server.search_prefix)`` makes yt-dlp fetch
``/search?q=<artist title>``; the query (case and whitespace ignored) maps to a local
audio file, answered in one of three ways yt-dlp's generic extractor understands:

- directly, as the audio file (``Content-Type`` from the suffix, ``Content-Length``,
  ``Range`` requests answered with 206) — a direct media link;
- ``redirect=True``: a 302 to ``/files/<name>``, which serves the file;
- ``add(..., duration=s)``: an HTML "watch page" whose JSON-LD ``AudioObject`` names the
  file (``contentUrl``) and its ``duration``, so yt-dlp knows the duration before
  downloading, as it does on YouTube.

Unknown queries get a 404. Faults: ``fail(query, status=500, times=2, after=0)`` (the
first ``after`` requests for that query's search or file succeed, the next ``times`` get
``status``), ``claim_size(query, n)`` (a ``Content-Length`` of ``n``, far more than is
sent), ``hide_length(query)`` (no ``Content-Length``: the body ends when the connection
closes), ``stall(query, seconds)`` (answer late). ``requests`` logs every request.
"""

from __future__ import annotations

import json
import mimetypes
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.stubs.server import LocalServer, QuietServer

_TYPES = {
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".wav": "audio/wav",
    ".m4a": "audio/mp4",
    ".webm": "audio/webm",
    ".flac": "audio/flac",
}
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def normalise_query(query: str) -> str:
    return " ".join(query.casefold().split())


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    query: str | None  # the decoded ``q`` of a search
    range: str | None  # the Range header, if any


@dataclass
class _Track:
    path: Path
    duration: float | None = None
    requests: int = 0
    # (first request, how many, HTTP status or None to answer normally, seconds to stall)
    faults: list[tuple[int, int, int | None, float]] = field(default_factory=list)
    claimed_size: int | None = None
    hide_length: bool = False


class MediaServer(LocalServer):
    def __init__(self, tracks: Mapping[str, Path] | None = None, *, redirect: bool = False) -> None:
        self.redirect = redirect
        self.requests: list[LoggedRequest] = []
        self._tracks: dict[str, _Track] = {}
        self._lock = threading.Lock()
        for query, path in (tracks or {}).items():
            self.add(query, path)
        super().__init__(_Handler)

    @property
    def search_prefix(self) -> str:
        return f"{self.base_url}/search?q="

    # ----------------------------------------------------------------- configuration
    def add(self, query: str, path: Path, *, duration: float | None = None) -> None:
        with self._lock:
            self._tracks[normalise_query(query)] = _Track(Path(path), duration)

    def fail(self, query: str, *, status: int = 500, times: int = 1, after: int = 0) -> None:
        with self._lock:
            track = self._tracks[normalise_query(query)]
            track.faults.append((track.requests + after, times, status, 0.0))

    def stall(self, query: str, seconds: float, *, times: int = 1, after: int = 0) -> None:
        """Wait ``seconds`` before answering (normally), to make clients time out."""
        with self._lock:
            track = self._tracks[normalise_query(query)]
            track.faults.append((track.requests + after, times, None, seconds))

    def claim_size(self, query: str, size: int) -> None:
        with self._lock:
            self._tracks[normalise_query(query)].claimed_size = size

    def hide_length(self, query: str) -> None:
        with self._lock:
            self._tracks[normalise_query(query)].hide_length = True

    def logged(self, query: str) -> list[LoggedRequest]:
        """Requests for ``query``'s search and for its file."""
        with self._lock:
            track = self._tracks.get(normalise_query(query))
            return [
                r
                for r in self.requests
                if (r.query is not None and normalise_query(r.query) == normalise_query(query))
                or (track is not None and r.path == self._file_path(track))
            ]

    # ----------------------------------------------------------------- answering
    @staticmethod
    def _file_path(track: _Track) -> str:
        return f"/files/{quote(track.path.name)}"

    def _lookup(self, path: str, query: str | None) -> _Track | None:
        if query is not None:
            return self._tracks.get(normalise_query(query))
        name = unquote(path.removeprefix("/files/"))
        return next((t for t in self._tracks.values() if t.path.name == name), None)

    def _fault(self, track: _Track) -> tuple[int | None, float]:
        """Counts the request; the HTTP status it must fail with, if any, and a stall."""
        number = track.requests
        track.requests += 1
        for first, times, status, stall in track.faults:
            if first <= number < first + times:
                return status, stall
        return None, 0.0

    def _watch_page(self, track: _Track) -> bytes:
        data = {
            "@context": "https://schema.org",
            "@type": "AudioObject",
            "name": track.path.stem,
            "contentUrl": f"{self.base_url}{self._file_path(track)}",
            "encodingFormat": _TYPES.get(track.path.suffix, "application/octet-stream"),
            "duration": f"PT{track.duration:g}S",
        }
        return (
            f"<!DOCTYPE html><html><head><title>{track.path.stem}</title>"
            f'<script type="application/ld+json">{json.dumps(data)}</script>'
            "</head><body>a watch page</body></html>"
        ).encode()


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte asked for by a ``Range`` header; None for the whole file."""
    wanted = _RANGE.match(header or "")
    if not wanted or not (wanted[1] or wanted[2]):
        return None
    if wanted[1]:
        return int(wanted[1]), min(int(wanted[2] or size - 1), size - 1)
    return max(0, size - int(wanted[2])), size - 1  # "bytes=-N": the last N bytes


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: QuietServer

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        media: MediaServer = self.server.owner
        url = urlsplit(self.path)
        query = parse_qs(url.query).get("q", [None])[0] if url.path == "/search" else None
        with media._lock:
            media.requests.append(
                LoggedRequest(self.command, url.path, query, self.headers.get("Range"))
            )
            known = url.path == "/search" or url.path.startswith("/files/")
            track = media._lookup(url.path, query) if known else None
            status, stall = media._fault(track) if track is not None else (404, 0.0)
        if stall and media._closing.wait(stall):
            return
        if track is None or status is not None:
            self._send_bytes(status or 404, b"no such thing here\n", "text/plain", body)
        elif query is not None and track.duration is not None:
            self._send_bytes(200, media._watch_page(track), "text/html", body)
        elif query is not None and media.redirect:
            self.send_response(302)
            self.send_header("Location", media._file_path(track))
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send_file(track, body)

    def _send_file(self, track: _Track, body: bool) -> None:
        data = track.path.read_bytes()
        content_type = _TYPES.get(track.path.suffix) or (
            mimetypes.guess_type(track.path.name)[0] or "application/octet-stream"
        )
        wanted = _byte_range(self.headers.get("Range"), len(data))
        start, end = wanted or (0, len(data) - 1)
        if start > end:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200 if wanted is None else 206)
        self.send_header("Content-Type", content_type)
        self.send_header("Accept-Ranges", "bytes")
        if wanted is not None:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        if track.hide_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(track.claimed_size or end - start + 1))
            self.close_connection = track.claimed_size is not None
        self.end_headers()
        if body:
            self.wfile.write(data[start : end + 1])

    def _send_bytes(self, status: int, data: bytes, content_type: str, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output quiet
