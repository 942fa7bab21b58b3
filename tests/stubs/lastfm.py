"""A Last.fm stand-in: a real HTTP server on 127.0.0.1 speaking the ``/2.0/`` XML API.

Enough of the API for ``libs.common.lastfm`` and the real pylast client to run
unchanged against it: ``user.getTopTracks``, ``user.getLovedTracks`` and
``user.getRecentTracks``, each paged like Last.fm does (``page``/``limit`` in,
``page``/``perPage``/``totalPages``/``total`` out, page size capped at
``max_page_size`` as the real API caps it), errors as
``<lfm status="failed"><error code="6">User not found</error></lfm>``.

    with LastfmStub(users={"alice": {"top": [("Queen", "Bohemian Rhapsody")]}}) as stub:
        fetch_tracks(api_key=stub.api_key, username="alice", source="top", limit=10,
                     api_url=stub.url)
        stub.calls("user.getTopTracks")  # the logged requests, params included

Faults for the next N API requests: ``inject_error(29, times=2)`` (a Last.fm error
code), ``inject_http_status(503)``, ``inject_stall(seconds)`` (answer late).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape, quoteattr

from tests.stubs.server import LocalServer

Song = tuple[str, str]  # (artist, title)

_ROOTS = {
    "gettoptracks": "toptracks",
    "getlovedtracks": "lovedtracks",
    "getrecenttracks": "recenttracks",
}
_SOURCES = {"gettoptracks": "top", "getlovedtracks": "loved", "getrecenttracks": "recent"}
_XML = '<?xml version="1.0" encoding="UTF-8"?>\n'
_HTTP_STATUS = {6: 404, 10: 403, 29: 429}  # pylast reads the body whatever the 4xx status
_MESSAGES = {
    3: "Invalid Method - No method with that name in this package",
    6: "User not found",
    10: "Invalid API key - You must be granted a valid key by last.fm",
    29: "Rate Limit Exceeded - Your IP has made too many requests in a short period",
}


@dataclass(frozen=True)
class LoggedRequest:
    http_method: str
    params: dict[str, str]


def _track_xml(source: str, artist: str, title: str, rank: int, now_playing: bool) -> str:
    name, who = escape(title), escape(artist)
    url = escape(f"https://www.last.fm/music/{artist}/_/{title}".replace(" ", "+"))
    if source == "recent":
        head = '<track nowplaying="true">' if now_playing else "<track>"
        date = (
            "" if now_playing else f'<date uts="{1_700_000_000 - rank}">14 Nov 2023, 22:13</date>'
        )
        return (
            f'{head}<artist mbid="">{who}</artist><name>{name}</name><streamable>0</streamable>'
            f'<mbid></mbid><album mbid="">An Album</album><url>{url}</url>{date}</track>'
        )
    extra = (
        f"<playcount>{1000 - rank}</playcount>"
        if source == "top"
        else f'<date uts="{1_600_000_000 - rank}">13 Sep 2020, 12:26</date>'
    )
    opening = f'<track rank="{rank}">' if source == "top" else "<track>"
    return (
        f"{opening}<name>{name}</name>{extra}<mbid></mbid><url>{url}</url>"
        f"<artist><name>{who}</name><mbid></mbid><url>https://www.last.fm/music/x</url></artist>"
        f'<image size="small"></image><streamable fulltrack="0">0</streamable></track>'
    )


class LastfmStub(LocalServer):
    def __init__(
        self,
        *,
        users: Mapping[str, Mapping[str, Sequence[Song]]] | None = None,
        now_playing: Mapping[str, Song] | None = None,
        api_key: str = "stub-api-key",
        max_page_size: int = 1000,
    ) -> None:
        self.users = {name.lower(): dict(sources) for name, sources in (users or {}).items()}
        self.now_playing = {name.lower(): song for name, song in (now_playing or {}).items()}
        self.api_key = api_key
        self.max_page_size = max_page_size
        self.requests: list[LoggedRequest] = []
        self._faults: deque[tuple[str, float]] = deque()
        self._lock = threading.Lock()
        super().__init__(self._handler_class())

    @property
    def url(self) -> str:
        return f"{self.base_url}/2.0/"

    # ----------------------------------------------------------------- configuration
    def inject_error(self, code: int, times: int = 1) -> None:
        self._add_faults("error", code, times)

    def inject_http_status(self, status: int, times: int = 1) -> None:
        self._add_faults("http", status, times)

    def inject_stall(self, seconds: float, times: int = 1) -> None:
        self._add_faults("stall", seconds, times)

    def _add_faults(self, kind: str, value: float, times: int) -> None:
        with self._lock:
            self._faults.extend([(kind, value)] * times)

    def calls(self, api_method: str | None = None) -> list[LoggedRequest]:
        with self._lock:
            logged = list(self.requests)
        if api_method is None:
            return logged
        return [r for r in logged if r.params.get("method", "").lower() == api_method.lower()]

    # ----------------------------------------------------------------- answering
    def answer(self, params: dict[str, str]) -> tuple[int, str, float]:
        """(HTTP status, body, seconds to stall first) for one API request."""
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            kind, value = fault
            if kind == "http":
                return int(value), "<html><body>Service Unavailable</body></html>", 0
            if kind == "error":
                return self._error(int(value))
            stall = value
        else:
            stall = 0
        status, body, _ = self._page(params)
        return status, body, stall

    def _error(self, code: int, message: str | None = None) -> tuple[int, str, float]:
        text = escape(message or _MESSAGES.get(code, "Error"))
        body = f'{_XML}<lfm status="failed">\n<error code="{code}">{text}</error>\n</lfm>\n'
        return _HTTP_STATUS.get(code, 400), body, 0

    def _page(self, params: dict[str, str]) -> tuple[int, str, float]:
        if params.get("api_key") != self.api_key:
            return self._error(10)
        package, _, name = params.get("method", "").lower().partition(".")
        if package != "user" or name not in _ROOTS:
            return self._error(3)
        user = params.get("user", "")
        if user.lower() not in self.users:
            return self._error(6)
        try:
            page = int(params.get("page", "1"))
            limit = int(params.get("limit", "50"))
        except ValueError:
            return self._error(6, "Invalid parameters - page and limit must be numbers")
        source = _SOURCES[name]
        songs = list(self.users[user.lower()].get(source, ()))
        per_page = max(1, min(limit, self.max_page_size))
        total_pages = -(-len(songs) // per_page)
        first = (page - 1) * per_page
        tracks = [
            _track_xml(source, artist, title, rank, now_playing=False)
            for rank, (artist, title) in enumerate(songs[first : first + per_page], first + 1)
        ]
        playing = self.now_playing.get(user.lower())
        if source == "recent" and playing is not None and page == 1:
            tracks.insert(0, _track_xml(source, *playing, rank=0, now_playing=True))
        root = _ROOTS[name]
        attributes = (
            f"user={quoteattr(user)} page={quoteattr(str(page))} perPage={quoteattr(str(per_page))}"
            f' totalPages="{total_pages}" total="{len(songs)}"'
        )
        body = "\n".join(tracks)
        xml = f'{_XML}<lfm status="ok">\n<{root} {attributes}>\n{body}\n</{root}>\n</lfm>\n'
        return 200, xml, 0

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._api(dict(parse_qsl(urlsplit(self.path).query)))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = self.rfile.read(length).decode("utf-8")
                params = dict(parse_qsl(urlsplit(self.path).query))
                params.update(parse_qsl(form, keep_blank_values=True))
                self._api(params)

            def _api(self, params: dict[str, str]) -> None:
                if urlsplit(self.path).path.rstrip("/") != "/2.0":
                    self._send(404, "<html><body>Not Found</body></html>", "text/html")
                    return
                with stub._lock:
                    stub.requests.append(LoggedRequest(self.command, params))
                status, body, stall = stub.answer(params)
                if stall and stub._closing.wait(stall):
                    return
                self._send(status, body, "text/xml; charset=utf-8")

            def _send(self, status: int, body: str, content_type: str) -> None:
                data = body.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output quiet

        return Handler
