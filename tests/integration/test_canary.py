"""Canary jobs on the embedded default: N tasks that each hold a worker, then complete."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from litestar.testing import TestClient

from libs.common import settings
from libs.common.runtime import build
from services.web.app import create_app


@pytest.fixture
def client(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = settings.load(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite",
            "STORAGE_URL": str(tmp_path / "storage"),
            "QUEUE_PREFIX": f"t{uuid.uuid4().hex[:10]}",
            "WORKER_CONCURRENCY": "2",
        }
    )
    with TestClient(create_app(build(config))) as test_client:
        yield test_client


def test_a_canary_job_runs_each_task_once_and_completes(client: TestClient) -> None:
    created = client.post("/api/jobs/canary", json={"tasks": 4, "seconds": 0.2})
    assert created.status_code == 202, created.text
    assert created.headers["location"] == f"/api/jobs/{created.json()['id']}"
    deadline = time.monotonic() + 30
    job = created.json()
    while job["state"] not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
    assert job["state"] == "completed", job
    assert job["kind"] == "canary"
    assert job["progress"]["tasks"] == {"total": 4, "done": 4, "failed": 0}
    assert job["progress"]["rows"]["done"] == 4
    assert client.get(f"/api/jobs/{job['id']}/output").status_code == 409  # nothing to download


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"tasks": 0}, "tasks"),
        ({"tasks": 10_001}, "tasks"),
        ({"seconds": -1}, "seconds"),
        ({"tasks": "many"}, "tasks"),
        ({"tasks": 1, "sleep": 3}, "sleep"),
    ],
)
def test_a_bad_canary_request_is_refused_with_the_reason(
    client: TestClient, body: dict[str, object], reason: str
) -> None:
    response = client.post("/api/jobs/canary", json=body)
    assert response.status_code == 400
    assert reason in response.text
