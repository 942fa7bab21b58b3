"""Lent workers on a server whose storage is a folder: task I/O through the web itself.

The app is the embedded all-in-one (SQLite, a storage folder). Its own worker serves the
shared pool, so a paired pool's tasks wait in their queue for the tests to work on them.
Nothing to presign: ``POST .../urls`` answers relative URLs of the web's own routes,
which a lent worker calls with its token. A live uvicorn on 127.0.0.1 serves the same app
for the worker's real HTTP client.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from libs.common import jobs, messages
from libs.common.audio.decode import find_ffmpeg
from libs.common.models import Job, Task
from libs.common.storage import Storage
from services.web.task_io import output_limit
from services.worker.csv_map import handle_csv
from services.worker.task_urls import TaskUrls
from services.worker.tracks import AudioConfig, handle_tracks
from services.worker.worker import Options, Worker
from tests import audiogen
from tests.integration.test_task_urls import KEY, ask, csv_bytes, paired, task_of
from tests.servers import free_port
from tests.webapp import Conveyor, StartApp, poll

ROWS = 250  # three tasks of CHUNK_ROWS=100
TASKS = "/api/workers/tasks"


@pytest.fixture
def app(start_app: StartApp) -> Conveyor:
    return start_app(WORKER_TOKEN_KEY=KEY, TRACKS_PER_TASK="1")


@pytest.fixture
def live(app: Conveyor) -> Iterator[str]:
    """The same app, also on a real socket (no lifespan: the test client runs it)."""
    port = free_port()
    config = uvicorn.Config(
        app.client.app, host="127.0.0.1", port=port, lifespan="off", log_config=None,
        log_level="warning", access_log=False, ws="none",
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    poll(lambda: server.started or not thread.is_alive(), bool, "uvicorn started")
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
    assert not thread.is_alive()


def submit(app: Conveyor, pool: str, content: bytes) -> str:
    response = app.client.post(
        "/api/jobs/csv", files={"file": ("n.csv", content, "text/csv")}, data={"pool": pool}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def tasks_of(app: Conveyor, job_id: str, total: int) -> list[Task]:
    app.wait_for(job_id, lambda j: j["progress"]["tasks"]["total"] == total, "cut")
    with app.components.sessions() as session:
        return list(session.scalars(select(Task).where(Task.job_id == job_id).order_by(Task.seq)))


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def read(app: Conveyor, task_id: str, token: str | None, range_: str | None) -> httpx.Response:
    headers = bearer(token) | ({"Range": range_} if range_ is not None else {})
    return app.client.get(f"{TASKS}/{task_id}/input", headers=headers)


def write(app: Conveyor, task_id: str, token: str | None, body: Any) -> httpx.Response:
    return app.client.put(f"{TASKS}/{task_id}/output", headers=bearer(token), content=body)


def part(app: Conveyor, job_id: str, seq: int) -> Path:
    return app.storage_dir / jobs.part_key(job_id, seq)


# ------------------------------------------------------------------------------ CSV


def test_folder_storage_answers_relative_urls_of_the_web(app: Conveyor) -> None:
    pool, answer = paired(app)
    task_id = task_of(app, submit(app, pool, csv_bytes(5)))
    urls = ask(app, task_id, answer["token"])
    assert urls.status_code == 200, urls.text
    assert urls.json() == {
        "task_id": task_id, "read_url": f"{TASKS}/{task_id}/input",
        "write_url": f"{TASKS}/{task_id}/output", "expires_in": 900, "tracks": {},
    }  # fmt: skip


def test_the_input_is_served_only_within_the_tasks_bytes(app: Conveyor) -> None:
    pool, answer = paired(app)
    token, upload = answer["token"], csv_bytes(ROWS)
    job_id = submit(app, pool, upload)
    second = tasks_of(app, job_id, 3)[1]
    start, last = second.start, second.end - 1
    whole = read(app, second.id, token, f"bytes={start}-{last}")
    assert whole.status_code == 206, whole.text
    assert whole.content == upload[start : last + 1]
    assert whole.headers["content-range"] == f"bytes {start}-{last}/{len(upload)}"
    some = read(app, second.id, token, f"bytes={start + 3}-{start + 9}")
    assert (some.status_code, some.content) == (206, upload[start + 3 : start + 10])
    for outside in (f"bytes={start - 1}-{last}", f"bytes={start}-{last + 1}", "bytes=0-5"):
        assert read(app, second.id, token, outside).status_code == 416, outside
    two = f"bytes={start}-{start + 1},{start + 4}-{start + 5}"
    bad_ranges = (None, "", "bytes=5", f"bytes={start}-", f"bytes={last}-{start}", two, "items=0-1")
    for bad in bad_ranges:
        assert read(app, second.id, token, bad).status_code == 400, bad


def test_the_output_put_lands_as_the_part_and_the_limit_holds(app: Conveyor) -> None:
    pool, answer = paired(app)
    token = answer["token"]
    job_id = submit(app, pool, csv_bytes(5))
    task = tasks_of(app, job_id, 1)[0]
    assert write(app, task.id, token, b"a,1\nb,2\n").status_code == 204
    assert part(app, job_id, task.seq).read_bytes() == b"a,1\nb,2\n"

    limit = output_limit(app.components.settings)
    assert limit == 64 << 20  # CHUNK_MAX_BYTES is 8 MiB
    over = write(app, task.id, token, bytes(limit + 1))  # announced by Content-Length
    assert over.status_code == 413

    def streamed() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        block = bytes(1 << 20)
        for _ in range(limit // len(block) + 1):
            yield block

    assert write(app, task.id, token, streamed()).status_code == 413
    assert part(app, job_id, task.seq).read_bytes() == b"a,1\nb,2\n", "nothing half-written"


ROUTES = ("urls", "input", "output")


def call(app: Conveyor, route: str, task_id: str, token: str | None) -> int:
    if route == "urls":
        return int(ask(app, task_id, token).status_code)
    if route == "input":
        return read(app, task_id, token, "bytes=7-8").status_code
    return write(app, task_id, token, b"x\n").status_code


def test_every_route_refuses_what_is_not_the_workers(app: Conveyor) -> None:
    pool, answer = paired(app)
    _, other = paired(app)
    job_id = submit(app, pool, csv_bytes(5))
    csv_task = tasks_of(app, job_id, 1)[0].id
    canary = app.client.post("/api/jobs/canary", json={"tasks": 1, "seconds": 0, "pool": pool})
    canary_task = task_of(app, canary.json()["id"])
    token = answer["token"]
    for route in ROUTES:
        assert call(app, route, csv_task, None) == 401, route
        assert call(app, route, csv_task, "cvw_nope") == 401, route
        assert call(app, route, csv_task, other["token"]) == 403, route
        assert call(app, route, "nope-00000001", token) == 404, route
        assert call(app, route, canary_task, token) == 409, route
    assert call(app, "input", csv_task, token) == 206
    assert app.client.get(f"{TASKS}/{csv_task}/tracks/1", headers=bearer(token)).status_code == 409
    assert app.client.delete(f"/api/workers/{answer['worker_id']}").status_code == 200
    for route in ROUTES:
        assert call(app, route, csv_task, token) == 401, route  # revoked
    assert not part(app, job_id, 0).exists()


def test_a_real_worker_client_runs_a_chunk_through_the_live_web(
    app: Conveyor, live: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pool, answer = paired(app)
    upload = csv_bytes(ROWS)
    job_id = submit(app, pool, upload)
    second = tasks_of(app, job_id, 3)[1]
    with app.components.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        body = jobs.task_envelope(job, second).body
    assert isinstance(body, messages.CsvTask)
    urls = TaskUrls(live, answer["token"])
    try:
        result = handle_csv(body, urls.for_task(second.id), worker="lent", max_errors=10)
    finally:
        urls.close()
    assert (result.rows_in, result.rows_out, result.rows_failed) == (100, 100, 0)
    assert part(app, job_id, second.seq).read_bytes() == upload[second.start : second.end]
    logged = " ".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert answer["token"] not in logged and answer["token"][4:] not in logged


def test_a_lent_worker_with_no_storage_completes_a_csv_job(
    app: Conveyor, live: str, tmp_path: Path
) -> None:
    pool, answer = paired(app)
    settings = app.components.settings.replace(pool=pool)
    urls = TaskUrls(live, answer["token"])
    options = Options(name="lent", lent=True, paired_id=answer["worker_id"], task_urls=urls)
    nowhere = Storage(f"file://{tmp_path}/no-such-storage")  # any direct use fails
    worker = Worker(settings, nowhere, app.components.broker, options)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        job = app.wait_final(submit(app, pool, csv_bytes(ROWS)))
    finally:
        worker.request_stop()
        thread.join(15)
        urls.close()
    assert not thread.is_alive()
    assert job["state"] == "completed", job
    assert app.client.get(job["links"]["output"]).content == csv_bytes(ROWS)
    assert worker.processed == 3


# ------------------------------------------------------ where the token goes, and not

DATA = b"0123456789"


class Recorder(BaseHTTPRequestHandler):
    """The server and storage at once: answers a task's URLs (absolute ones, on the
    ``/store`` paths, or relative ones, on ``/web``) and serves them, recording each
    request's method, path and Authorization header."""

    server: RecordingServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _answer(self, status: int, body: bytes = b"", kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self) -> None:
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))

    def do_POST(self) -> None:
        self._record()
        base = (
            f"http://127.0.0.1:{self.server.server_port}/store" if self.server.absolute else "/web"
        )
        urls = {"task_id": "t-1", "read_url": f"{base}/in", "write_url": f"{base}/out",
                "expires_in": 900, "tracks": {"7": f"{base}/track"}}  # fmt: skip
        self._answer(200, json.dumps(urls).encode(), "application/json")

    def do_GET(self) -> None:
        self._record()
        if self.path.endswith("/track"):
            self._answer(200, b"RIFF" * 10)
            return
        first, last = self.headers["Range"].removeprefix("bytes=").split("-")
        self._answer(206, DATA[int(first) : int(last) + 1])

    def do_PUT(self) -> None:
        self._record()
        self.server.written = self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(204)


class RecordingServer(ThreadingHTTPServer):
    absolute = True
    written = b""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Recorder)
        self.seen: list[tuple[str, str, str | None]] = []


@pytest.fixture
def recorder() -> Iterator[RecordingServer]:
    server = RecordingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("absolute", [True, False], ids=["presigned", "relative"])
def test_the_token_goes_to_the_server_and_never_to_an_absolute_url(
    recorder: RecordingServer, tmp_path: Path, absolute: bool
) -> None:
    recorder.absolute = absolute
    urls = TaskUrls(f"http://127.0.0.1:{recorder.server_port}", "cvw_secret")
    try:
        task = urls.for_task("t-1")
        assert task.read_range("k", 2, 6) == b"2345"
        task.write("k", b"out")
        assert task.track_file(7, tmp_path / "t.wav", 100).read_bytes() == b"RIFF" * 10
    finally:
        urls.close()
    assert recorder.written == b"out"
    bearer_ = "Bearer cvw_secret"
    assert recorder.seen[0] == ("POST", "/api/workers/tasks/t-1/urls", bearer_)
    data = recorder.seen[1:]
    assert [(method, path.rsplit("/", 1)[-1]) for method, path, _ in data] == [
        ("GET", "in"), ("PUT", "out"), ("GET", "track"),
    ]  # fmt: skip
    assert [auth for _, _, auth in data] == [None if absolute else bearer_] * 3


# ---------------------------------------------------------------------------- audio


def audio_job(app: Conveyor, pool: str, music: Path, tasks: int) -> list[Task]:
    response = app.client.post(
        "/api/jobs/audio", json={"prefix": music.as_uri(), "limit": 10, "pool": pool}
    )
    assert response.status_code == 202, response.text
    return tasks_of(app, response.json()["id"], tasks)


def test_a_track_file_is_served_for_its_own_task_only(app: Conveyor, tmp_path: Path) -> None:
    music = tmp_path / "music"
    music.mkdir()
    (music / "a.wav").write_bytes(b"RIFF-a" * 1000)
    (music / "b.mp3").write_bytes(b"ID3-b" * 1000)
    pool, answer = paired(app)
    _, other = paired(app)
    token = answer["token"]
    first, second = audio_job(app, pool, music, 2)  # TRACKS_PER_TASK=1
    assert first.items is not None and second.items is not None
    mine, theirs = first.items[0]["id"], second.items[0]["id"]
    urls = ask(app, first.id, token)
    assert urls.status_code == 200, urls.text
    assert urls.json()["tracks"] == {str(mine): f"{TASKS}/{first.id}/tracks/{mine}"}
    got = app.client.get(f"{TASKS}/{first.id}/tracks/{mine}", headers=bearer(token))
    assert (got.status_code, got.content) == (200, b"RIFF-a" * 1000)

    def status(task_id: str, track: int, who: str | None = token) -> int:
        return app.client.get(f"{TASKS}/{task_id}/tracks/{track}", headers=bearer(who)).status_code

    assert status(first.id, theirs) == 404  # another task's file
    assert status(first.id, 999_999) == 404
    assert status(first.id, mine, None) == 401
    assert status(first.id, mine, other["token"]) == 403
    (music / "a.wav").unlink()
    assert status(first.id, mine) == 404  # gone


needs_ffmpeg = pytest.mark.skipif(find_ffmpeg(None) is None, reason="no ffmpeg")


@needs_ffmpeg
def test_a_lent_worker_vectorizes_a_file_through_the_live_web(
    app: Conveyor, live: str, tmp_path: Path
) -> None:
    music = tmp_path / "music"
    music.mkdir()
    audiogen.write(music / "a440.wav", audiogen.tone(440.0, 4.0))
    pool, answer = paired(app)
    (task,) = audio_job(app, pool, music, 1)
    refs = [messages.TrackRef(**item) for item in task.items or ()]
    config = AudioConfig(ffmpeg=find_ffmpeg(None), scratch=tmp_path / "work", local_files=False)
    stages: list[str] = []
    urls = TaskUrls(live, answer["token"])
    try:
        result = handle_tracks(
            messages.TrackTask(task.id, task.seq, refs), config, worker="lent",
            progress=lambda _t, _i, stage: stages.append(stage), urls=urls,
        )  # fmt: skip
    finally:
        urls.close()
    assert (result.rows_out, result.rows_failed) == (1, 0), result.errors
    assert result.tracks[0].vector and stages == ["downloading", "analysing"]
    assert not list((tmp_path / "work").rglob("*.wav")), "the download is removed"
