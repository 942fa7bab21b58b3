"""How a paired worker's presigned-URL storage fails: retry, or dead-letter with a reason
(services/worker/task_urls.py; the real path runs against moto in
tests/integration/test_task_urls.py). A stand-in transport answers here."""

from __future__ import annotations

import httpx
import pytest

from libs.common.retry import PermanentError, TransientError
from services.worker.task_urls import TaskUrls

URLS = {"task_id": "t-1", "read_url": "http://s3/in", "write_url": "http://s3/out",
        "expires_in": 900}  # fmt: skip


def client(server: int, storage: int = 206, fail: bool = False) -> TaskUrls:
    def handle(request: httpx.Request) -> httpx.Response:
        if fail:
            raise httpx.ConnectError("refused", request=request)
        if request.url.host == "app":
            assert request.headers["authorization"] == "Bearer cvw_token"
            body = URLS if server == 200 else {"detail": "no"}
            return httpx.Response(server, json=body)
        if request.method == "GET":
            assert request.headers["range"] == "bytes=2-5"
            return httpx.Response(storage, content=b"2345" if storage == 206 else b"01234567")
        return httpx.Response(storage if storage != 206 else 200)

    transport = httpx.MockTransport(handle)
    http = httpx.Client(transport=transport)
    return TaskUrls("http://app", "cvw_token", client=http, storage_client=http)


def test_reads_its_range_and_writes_its_part() -> None:
    task = client(200).for_task("t-1")
    assert task.read_range("k", 2, 6) == b"2345"
    task.write("k", b"out")
    assert client(200, storage=200).for_task("t-1").read_range("k", 2, 6) == b"2345"


@pytest.mark.parametrize(
    ("server", "storage", "fail", "error"),
    [
        (401, 206, False, TransientError),  # revoked: the worker is stopping; others retry
        (503, 206, False, TransientError),
        (403, 206, False, PermanentError),  # another pool's task
        (404, 206, False, PermanentError),
        (409, 206, False, PermanentError),
        (200, 403, False, TransientError),  # an expired URL: fresh ones next attempt
        (200, 404, False, FileNotFoundError),  # the input is gone
        (200, 500, False, TransientError),
        (200, 206, True, TransientError),  # unreachable
    ],
)
def test_failures_retry_or_dead_letter(
    server: int, storage: int, fail: bool, error: type[Exception]
) -> None:
    with pytest.raises(error):
        client(server, storage, fail).for_task("t-1").read_range("k", 2, 6)


def test_the_token_is_not_in_its_repr() -> None:
    assert "cvw_token" not in repr(client(200))
