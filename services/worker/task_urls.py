"""CSV tasks of a paired worker through presigned URLs: no storage credentials needed.

When the server's connection settings say ``task_urls``, each CSV task asks
``POST {server}/api/workers/tasks/{task_id}/urls`` (with the worker token) for a GET URL
of its input and a PUT URL of its output part, then reads its byte range with one ranged
GET and writes the part with one PUT. ``PresignedTask`` stands in for ``Storage`` in
``handle_csv``. The URLs and the token are never logged.

Failures follow the retry rules: the network, a 5xx or an expired URL retry the task
(fresh URLs next time); the server refusing the task for good (another pool's, unknown,
not a CSV task) dead-letters it with the reason. A revoked token retries too: the
worker is stopping, and another worker of the pool takes the task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import httpx
import msgspec

from libs.common.retry import PermanentError, TransientError

TIMEOUT_SECONDS = 60.0


class _Urls(msgspec.Struct):
    task_id: str
    read_url: str
    write_url: str
    expires_in: int


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

    def for_task(self, task_id: str) -> PresignedTask:
        return PresignedTask(self, task_id)

    def fetch(self, task_id: str) -> _Urls:
        url = f"{self.server}/api/workers/tasks/{task_id}/urls"
        headers = {"Authorization": f"Bearer {self._token}"}
        response = _call(lambda: self._client.post(url, headers=headers), "the server")
        if response.status_code == 200:
            return msgspec.json.decode(response.content, type=_Urls)
        reason = _detail(response)
        if response.status_code == 401 or response.status_code >= 500:
            raise TransientError(f"the server gave no URLs for {task_id}: {reason}")
        raise PermanentError(f"the server gave no URLs for {task_id}: {reason}")

    def get(self, url: str, start: int, end: int) -> bytes:
        headers = {"Range": f"bytes={start}-{end - 1}"} if end > start else {}
        response = _call(lambda: self._storage.get(url, headers=headers), "storage")
        if response.status_code == 206:
            return response.content
        if response.status_code == 200:  # the whole object: a server that ignores Range
            return response.content[start:end]
        raise _storage_error("reading the input", response)

    def put(self, url: str, data: bytes) -> None:
        response = _call(lambda: self._storage.put(url, content=data), "storage")
        if response.status_code not in (200, 201, 204):
            raise _storage_error("writing the output part", response)


class PresignedTask:
    """``read_range`` and ``write`` of one CSV task, through its presigned URLs (asked for
    once, on first use). The key arguments are the task's own; the URLs name them."""

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


def _storage_error(doing: str, response: httpx.Response) -> Exception:
    reason = f"{doing}: storage answered {response.status_code} {response.reason_phrase}"
    if response.status_code == 404:
        return FileNotFoundError(reason)  # the input is gone: permanent
    return TransientError(reason)  # an expired URL (403), a 5xx: fresh URLs next attempt
