"""Task I/O through the web, the pure parts: the server's range and track checks
(services/web/task_io.py), and how the worker's client treats the web's relative URLs
(services/worker/task_urls.py) and a lent worker's audio files (services/worker/tracks.py).
The live paths are in tests/integration/test_task_io_web.py."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from litestar.exceptions import HTTPException

from libs.common import messages
from libs.common.models import Task
from libs.common.retry import PermanentError, TransientError
from libs.common.settings import load
from services.web import task_io
from services.worker.task_urls import TaskUrls
from services.worker.tracks import AudioConfig, handle_tracks

TASK = Task(id="j-00000001", job_id="j", seq=1, start=100, end=200, first_row=5, rows=3)


def status_of(header: str | None) -> int:
    with pytest.raises(HTTPException) as caught:
        task_io.byte_range(header, TASK)
    return caught.value.status_code


def test_a_range_is_one_closed_range_within_the_tasks_bytes() -> None:
    assert task_io.byte_range("bytes=100-199", TASK) == (100, 200)
    assert task_io.byte_range(" bytes=150-150 ", TASK) == (150, 151)
    for outside in ("bytes=99-150", "bytes=150-200", "bytes=0-0", "bytes=200-300"):
        assert status_of(outside) == 416, outside
    for bad in (None, "", "bytes=100-", "bytes=-50", "bytes=150-120", "bytes=100-110,120-130",
                "bits=100-110", "bytes=1e2-150", "bytes=" + "9" * 20 + "-1"):  # fmt: skip
        assert status_of(bad) == 400, bad


def test_the_output_limit_follows_the_chunk_size() -> None:
    assert task_io.output_limit(load({})) == 64 << 20
    assert task_io.output_limit(load({"CHUNK_MAX_BYTES": str(32 << 20)})) == 128 << 20


def test_only_the_tasks_own_files_have_urls() -> None:
    items = [
        {"id": 7, "row": 1, "artist": "", "title": "a", "location": "file:///m/a.wav"},
        {"id": 8, "row": 2, "artist": "X", "title": "Y", "location": ""},
    ]
    task = Task(id="j-00000002", job_id="j", seq=2, start=0, end=0, first_row=1, rows=3,
                items=items)  # fmt: skip
    assert task_io.track_urls(task) == {"7": "/api/workers/tasks/j-00000002/tracks/7"}
    assert task_io.track_location(task, 7) == "file:///m/a.wav"
    for other in (8, 9):  # found by search, or not this task's
        with pytest.raises(HTTPException) as caught:
            task_io.track_location(task, other)
        assert caught.value.status_code == 404


# ------------------------------------------------------------------------ the worker


def web(status: int, tracks: dict[str, str] | None = None, body: bytes = b"2345") -> TaskUrls:
    """A worker client whose server answers relative URLs, then ``status`` on them."""

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.host == "app"  # relative URLs are joined to the server
        assert request.headers["authorization"] == "Bearer cvw_token"
        if request.url.path.endswith("/urls"):
            return httpx.Response(200, json={
                "task_id": "t-1", "read_url": "/api/in", "write_url": "/api/out",
                "expires_in": 900, "tracks": {"7": "/api/track"} if tracks is None else tracks,
            })  # fmt: skip
        return httpx.Response(status, content=body if status < 300 else b'{"detail": "no"}')

    http = httpx.Client(transport=httpx.MockTransport(handle))
    return TaskUrls("http://app/", "cvw_token", client=http, storage_client=http)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, TransientError),  # revoked: another worker of the pool takes the task
        (403, TransientError),
        (503, TransientError),
        (404, FileNotFoundError),  # the upload is gone
        (400, PermanentError),
        (409, PermanentError),
        (416, PermanentError),  # not the task's bytes: no retry changes that
    ],
)
def test_the_webs_answers_retry_or_dead_letter(status: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        web(status).for_task("t-1").read_range("k", 2, 6)


def test_reads_and_writes_through_the_web_with_the_token() -> None:
    task = web(206).for_task("t-1")
    assert task.read_range("k", 2, 6) == b"2345"
    assert task.read_range("k", 6, 6) == b""  # nothing to ask for
    with pytest.raises(PermanentError):
        web(413).for_task("t-1").write("k", b"x")


def run_track(urls: TaskUrls, tmp_path: Path) -> messages.TaskResult:
    ref = messages.TrackRef(7, 1, "", "a.wav", "file:///owner/only/a.wav")
    config = AudioConfig(
        ffmpeg="ffmpeg", scratch=tmp_path / "work", local_files=False, max_bytes=1000
    )
    stages: list[str] = []
    result = handle_tracks(
        messages.TrackTask("t-1", 0, [ref]), config, worker="w",
        progress=lambda _t, _i, stage: stages.append(stage), urls=urls,
    )  # fmt: skip
    assert stages == ["downloading"]
    assert not list((tmp_path / "work").rglob("*.wav")), "scratch removed"
    return result


@pytest.mark.parametrize(
    ("status", "tracks", "body", "reason"),
    [
        (404, None, b"", "the file is gone"),
        (200, {}, b"RIFF", "the file is gone"),  # the server named none
        (200, None, b"x" * 2000, "too big"),  # over max_bytes
    ],
    ids=["gone", "no-url", "too-big"],
)
def test_a_lent_workers_file_fails_alone(
    status: int, tracks: dict[str, str] | None, body: bytes, reason: str, tmp_path: Path
) -> None:
    result = run_track(web(status, tracks, body), tmp_path)
    assert (result.rows_in, result.rows_failed) == (1, 1)
    assert result.tracks[0].error is not None and result.tracks[0].error.startswith(reason)


def test_a_lent_workers_file_trouble_on_the_way_retries_the_task(tmp_path: Path) -> None:
    with pytest.raises(TransientError):
        run_track(web(503), tmp_path)
