"""A paired worker's task I/O through URLs from its server: no storage credentials needed.

When the server's connection settings say ``task_urls``, each CSV or track task asks
``POST {server}/api/workers/tasks/{task_id}/urls`` (with the worker token) for its URLs:
a GET of its input and a PUT of its output part (CSV), or a GET per audio file (tracks).
It then reads its byte range with one ranged GET and writes the part with one PUT.
``PresignedTask`` stands in for ``Storage`` in ``handle_csv``, and fetches a track
task's files for ``handle_tracks``.

Presigned URLs (storage on S3) are absolute and go to storage without the token. A
server storing on a folder answers relative URLs of its own routes: they are joined to
the server's URL and sent with the token. The token never goes anywhere else, and the
URLs and the token are never logged.

Failures follow the retry rules: the network, a 5xx, an expired URL (403) or a revoked
token (401: the worker is stopping, another worker of the pool takes the task) retry the
task; the server refusing it for good (another pool's, unknown, not a CSV task, a range
not the task's, 416) dead-letters it with the reason; a missing input is
FileNotFoundError (permanent).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec

from libs.common.retry import PermanentError, TransientError

TIMEOUT_SECONDS = 60.0
DOWNLOAD_BLOCK = 1 << 20
#: Answers of the web's own routes that no retry changes (a malformed request, another
#: kind of task, a part over the limit, a range not the task's).
_WEB_PERMANENT = frozenset({400, 409, 413, 416})
_STORAGE_PERMANENT = frozenset({413, 416})


class TooBig(Exception):
    """An audio file over the worker's download limit."""


class _Urls(msgspec.Struct):
    task_id: str
    read_url: str
    write_url: str
    expires_in: int
    tracks: dict[str, str] = msgspec.field(default_factory=dict)


class TaskUrls:
    """The server and token to ask for URLs with, and one HTTP client for all tasks."""

    def __init__(
        self,
        server: str,
        token: str,
        client: httpx.Client | None = None,
        storage_client: httpx.Client | None = None,
    ) -> None:
        # httpx logs each request's URL at INFO, and a presigned URL is a credential until
        # it expires: keep httpx to warnings in any process that uses these.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.server = server.rstrip("/")
        self._token = token
        self._client = client or httpx.Client(timeout=TIMEOUT_SECONDS, follow_redirects=False)
        self._storage = storage_client or httpx.Client(timeout=TIMEOUT_SECONDS)

    def __repr__(self) -> str:  # never the token
        return f"TaskUrls({self.server!r})"

    def close(self) -> None:
        """Close the HTTP clients (connections kept alive between tasks)."""
        self._client.close()
        self._storage.close()

    def for_task(self, task_id: str) -> PresignedTask:
        return PresignedTask(self, task_id)

    def fetch(self, task_id: str) -> _Urls:
        response = self._send("POST", f"/api/workers/tasks/{task_id}/urls")
        if response.status_code == 200:
            return msgspec.json.decode(response.content, type=_Urls)
        reason = _detail(response)
        if response.status_code == 401 or response.status_code >= 500:
            raise TransientError(f"the server gave no URLs for {task_id}: {reason}")
        raise PermanentError(f"the server gave no URLs for {task_id}: {reason}")

    def _route(self, url: str) -> tuple[httpx.Client, str, dict[str, str]]:
        """The client, full URL and headers for ``url``: a relative URL is the server's
        own, called with the token; an absolute one (storage) never gets the token."""
        if url.startswith("/"):
            return self._client, self.server + url, {"Authorization": f"Bearer {self._token}"}
        return self._storage, url, {}

    def _send(
        self, method: str, url: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> httpx.Response:
        client, full, auth = self._route(url)

        def send() -> httpx.Response:
            return client.request(method, full, headers={**(headers or {}), **auth}, **kw)

        return _call(send, "the server" if auth else "storage")

    def get(self, url: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""  # nothing to read
        response = self._send("GET", url, {"Range": f"bytes={start}-{end - 1}"})
        if response.status_code == 206:
            return response.content
        if response.status_code == 200:  # the whole object: a server that ignores Range
            return response.content[start:end]
        raise _error("reading the input", url, response)

    def put(self, url: str, data: bytes) -> None:
        response = self._send("PUT", url, content=data)
        if response.status_code not in (200, 201, 204):
            raise _error("writing the output part", url, response)

    def download(self, url: str, dest: Path, max_bytes: int) -> None:
        """Stream the file at ``url`` into ``dest``; TooBig past ``max_bytes``."""
        client, full, auth = self._route(url)
        try:
            with client.stream("GET", full, headers=auth) as response:
                if response.status_code != 200:
                    response.read()
                    raise _error("reading an audio file", url, response)
                size = 0
                with open(dest, "wb") as out:
                    for block in response.iter_bytes(DOWNLOAD_BLOCK):
                        size += len(block)
                        if size > max_bytes:
                            raise TooBig(f"too big (over {max_bytes / 1e6:.3g} MB)")
                        out.write(block)
        except httpx.HTTPError as exc:
            where = "the server" if auth else "storage"
            raise TransientError(f"cannot reach {where}: {type(exc).__name__}: {exc}") from None


class PresignedTask:
    """``read_range`` and ``write`` of one CSV task, and ``track_file`` of a track task,
    through its URLs (asked for once, on first use). The key arguments are the task's
    own; the URLs name them."""

    def __init__(self, urls: TaskUrls, task_id: str) -> None:
        self._urls, self.task_id = urls, task_id
        self._fetched: _Urls | None = None
        self._lock = threading.Lock()

    def _get(self) -> _Urls:
        with self._lock:
            if self._fetched is None:
                self._fetched = self._urls.fetch(self.task_id)
            return self._fetched

    def read_range(self, key: str, start: int, end: int) -> bytes:
        data = self._urls.get(self._get().read_url, start, end)
        if len(data) != end - start:
            raise TransientError(f"{key}: expected {end - start} bytes at {start}, got {len(data)}")
        return data

    def write(self, key: str, data: bytes) -> None:
        self._urls.put(self._get().write_url, data)

    def track_file(self, track_id: int, dest: Path, max_bytes: int) -> Path:
        """Download the task's audio file of ``track_id`` as ``dest``. FileNotFoundError
        when it is gone (or the server named no URL for it), TooBig over ``max_bytes``."""
        url = self._get().tracks.get(str(track_id))
        if not url:
            raise FileNotFoundError(f"the server named no file for track {track_id}")
        self._urls.download(url, dest, max_bytes)
        return dest


def _call(request: Callable[[], httpx.Response], what: str) -> httpx.Response:
    try:
        return request()
    except httpx.HTTPError as exc:
        raise TransientError(f"cannot reach {what}: {type(exc).__name__}: {exc}") from None


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return f"{response.status_code} {detail or response.reason_phrase}"


def _error(doing: str, url: str, response: httpx.Response) -> Exception:
    web = url.startswith("/")
    status = response.status_code
    answered = f"the server answered {_detail(response)}" if web else "storage answered"
    if not web:
        answered += f" {status} {response.reason_phrase}"
    reason = f"{doing}: {answered}"
    if status == 404:
        return FileNotFoundError(reason)  # the input is gone: permanent
    if status in (_WEB_PERMANENT if web else _STORAGE_PERMANENT):
        return PermanentError(reason)
    return TransientError(reason)  # 401 (revoked), an expired URL (403), a 5xx: retry
