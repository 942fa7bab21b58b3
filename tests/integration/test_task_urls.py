"""Paired workers run CSV tasks through presigned URLs: no storage credentials needed.

The app stores on S3 (moto's server). The lent worker has no storage of its own: its
``Storage`` is a folder that does not exist, so any direct use would fail. It asks the
server for each task's URLs with its token, reads its byte range with a ranged GET and
writes its part with a PUT, straight to S3.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from sqlalchemy import select

from libs.common import jobs
from libs.common.models import Task
from libs.common.storage import Storage
from services.worker.task_urls import TaskUrls
from services.worker.worker import Options, Worker
from tests.servers import MotoServer
from tests.webapp import Conveyor, StartApp, detail

KEY = "k" * 32
ROWS = 250  # three tasks of CHUNK_ROWS=100


@pytest.fixture
def s3_app(moto: MotoServer, aws_env: dict[str, str], start_app: StartApp) -> Conveyor:
    bucket = f"t-{uuid.uuid4().hex[:20]}"
    boto3.session.Session(
        aws_access_key_id=moto.access_key, aws_secret_access_key=moto.secret_key,
        region_name=moto.region,
    ).client("s3", endpoint_url=moto.endpoint).create_bucket(Bucket=bucket)  # fmt: skip
    return start_app(STORAGE_URL=f"s3://{bucket}/conveyor", WORKER_TOKEN_KEY=KEY)


def paired(app: Conveyor, body: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    created = app.client.post("/api/pairings", json=body or {}).json()
    answer = app.client.post("/api/workers/pair", json={"code": created["code"]})
    assert answer.status_code == 200, answer.text
    return created["pool"], dict(answer.json())


@pytest.fixture
def lent(s3_app: Conveyor, tmp_path: Path) -> Iterator[tuple[Worker, str, dict[str, Any]]]:
    pool, answer = paired(s3_app)
    assert answer["task_urls"] is True and answer["storage_url"] is None
    settings = s3_app.components.settings.replace(pool=pool)
    urls = TaskUrls(str(s3_app.client.base_url), answer["token"], client=s3_app.client)
    options = Options(name="lent", lent=True, paired_id=answer["worker_id"], task_urls=urls)
    nowhere = Storage(f"file://{tmp_path}/no-such-storage")  # any direct use fails
    worker = Worker(settings, nowhere, s3_app.components.broker, options)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker, pool, answer
    finally:
        worker.request_stop()
        thread.join(15)
    assert not thread.is_alive()


def csv_bytes(rows: int) -> bytes:
    return b"name,n\n" + b"".join(f"row{i},{i}\n".encode() for i in range(rows))


def test_a_csv_job_runs_on_the_lent_worker_through_presigned_urls(
    s3_app: Conveyor,
    lent: tuple[Worker, str, dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    worker, pool, _ = lent
    submitted = s3_app.client.post(
        "/api/jobs/csv", files={"file": ("n.csv", csv_bytes(ROWS), "text/csv")},
        data={"pool": pool},
    )  # fmt: skip
    assert submitted.status_code == 202, submitted.text
    job = s3_app.wait_final(submitted.json()["id"])
    assert job["state"] == "completed", job
    assert job["progress"]["rows"]["done"] == ROWS and job["progress"]["tasks"]["done"] == 3
    output = s3_app.client.get(job["links"]["output"])
    assert output.content == csv_bytes(ROWS)  # every row, in order
    with s3_app.components.sessions() as session:
        tasks = session.scalars(select(Task).where(Task.job_id == job["id"])).all()
    assert [t.worker for t in tasks] == ["lent"] * 3
    assert worker.processed == 3
    # No presigned URL in the logs. (botocore's own DEBUG lines sign the server's requests;
    # logs.setup keeps botocore at WARNING in the services.)
    ours = [r for r in caplog.records if not r.name.startswith(("botocore", "urllib3"))]
    logged = " ".join(r.getMessage() + repr(r.__dict__) for r in ours)
    assert len(ours) > 10 and "Signature=" not in logged


def task_of(app: Conveyor, job_id: str) -> str:
    """The id of the job's (one) task, once the dispatcher has cut it."""
    app.wait_for(job_id, lambda j: j["progress"]["tasks"]["total"] == 1, "cut into a task")
    with app.components.sessions() as session:
        return str(session.scalars(select(Task.id).where(Task.job_id == job_id)).one())


def ask(app: Conveyor, task_id: str, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return app.client.post(f"/api/workers/tasks/{task_id}/urls", headers=headers)


def submit_csv(app: Conveyor, pool: str) -> str:
    response = app.client.post(
        "/api/jobs/csv", files={"file": ("n.csv", csv_bytes(5), "text/csv")},
        data={"pool": pool},
    )  # fmt: skip
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_task_urls_are_only_for_the_workers_own_csv_tasks(s3_app: Conveyor) -> None:
    pool, answer = paired(s3_app)
    _, other = paired(s3_app)
    csv_task = task_of(s3_app, submit_csv(s3_app, pool))
    ok = ask(s3_app, csv_task, answer["token"])
    assert ok.status_code == 200, ok.text
    assert "X-Amz-Signature" in ok.json()["read_url"] and ok.json()["expires_in"] == 900
    assert ask(s3_app, csv_task, other["token"]).status_code == 403  # another pool's task
    assert ask(s3_app, csv_task, None).status_code == 401
    assert ask(s3_app, csv_task, "cvw_nope").status_code == 401
    assert ask(s3_app, "nope-00000001", answer["token"]).status_code == 404
    canary = s3_app.client.post(
        "/api/jobs/canary", json={"tasks": 1, "seconds": 0, "pool": pool}
    ).json()
    refused = ask(s3_app, task_of(s3_app, canary["id"]), answer["token"])
    assert refused.status_code == 409 and "only CSV" in detail(refused)
    assert s3_app.client.delete(f"/api/workers/{answer['worker_id']}").status_code == 200
    assert ask(s3_app, csv_task, answer["token"]).status_code == 401  # revoked


def test_on_s3_track_files_are_presigned_and_the_web_routes_proxy(s3_app: Conveyor) -> None:
    """Folder storage's routes (tests/integration/test_task_io_web.py) work on S3 too."""
    storage_url = s3_app.components.settings.storage_url
    bucket = storage_url.removeprefix("s3://").split("/")[0]
    s3_app.components.storage.write("music/a.wav", b"RIFF-a" * 100)
    pool, answer = paired(s3_app)
    auth = {"Authorization": f"Bearer {answer['token']}"}
    audio = s3_app.client.post(
        "/api/jobs/audio", json={"prefix": f"{storage_url}/music/", "pool": pool}
    )
    assert audio.status_code == 202, audio.text
    track_task = task_of(s3_app, audio.json()["id"])
    urls = ask(s3_app, track_task, answer["token"]).json()
    ((track_id, url),) = urls["tracks"].items()
    assert url.startswith("http") and bucket in url
    assert "X-Amz-Signature" in url and (urls["read_url"], urls["write_url"]) == ("", "")
    fetched = httpx.get(url)  # no token: the signature is the credential
    assert (fetched.status_code, fetched.content) == (200, b"RIFF-a" * 100)
    proxied = s3_app.client.get(f"/api/workers/tasks/{track_task}/tracks/{track_id}", headers=auth)
    assert (proxied.status_code, proxied.content) == (200, b"RIFF-a" * 100)

    csv_task = task_of(s3_app, submit_csv(s3_app, pool))
    with s3_app.components.sessions() as session:
        task = session.get(Task, csv_task)
        assert task is not None
    ranged = {**auth, "Range": f"bytes={task.start}-{task.end - 1}"}
    got = s3_app.client.get(f"/api/workers/tasks/{csv_task}/input", headers=ranged)
    assert (got.status_code, got.content) == (206, csv_bytes(5)[task.start : task.end])
    put = s3_app.client.put(f"/api/workers/tasks/{csv_task}/output", headers=auth, content=b"x\n")
    assert put.status_code == 204
    assert s3_app.components.storage.read_range(jobs.part_key(task.job_id, 0), 0, 2) == b"x\n"
