"""The real entry points as processes on SQS + S3 (moto) + PostgreSQL.

The same services as on RabbitMQ; only the settings differ. Queues stay shallow (moto's
receive slows down as a queue deepens), and the visibility timeout is short, so a task
whose worker was killed comes back within seconds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.e2e.harness import Services, expected_output, make_csv, wait_for
from tests.integration.test_broker_contract import sqs_url
from tests.servers import MotoServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

VISIBILITY = 5


@pytest.fixture
def services(tmp_path: Path, moto: MotoServer, pg_url: str) -> Iterator[Services]:
    bucket = f"conveyor-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3", endpoint_url=moto.endpoint, region_name=moto.region,
        aws_access_key_id=moto.access_key, aws_secret_access_key=moto.secret_key,
    ).create_bucket(Bucket=bucket)  # fmt: skip
    svc = Services.configure(
        tmp_path,
        BROKER_URL=sqs_url(moto),
        DATABASE_URL=pg_url,
        STORAGE_URL=f"s3://{bucket}/conveyor",
        SQS_VISIBILITY_TIMEOUT=str(VISIBILITY),
        SQS_WAIT_SECONDS="1",
        CHUNK_ROWS="2500",
        **moto.env,
    )
    try:
        yield svc
    finally:
        svc.stop_all()


def tasks_done_in_logs(svc: Services, *names: str) -> int:
    """Sum of the "N done" a worker prints when it stops: how often tasks actually ran."""
    total = 0
    for name in names:
        for line in (svc.tmp / f"{name}.log").read_text().splitlines():
            if "worker stopped:" in line:
                total += int(line.split("worker stopped:")[1].split("done")[0])
    return total


def test_csv_job_with_a_worker_killed_mid_job(services: Services, tmp_path: Path) -> None:
    services.start_pipeline()
    make_csv(tmp_path / "in.csv", 50_000, bad_every=1000)
    job_id = services.submit(tmp_path / "in.csv")
    wait_for(lambda: services.job(job_id)["progress"]["tasks"]["done"] >= 3, 120, "3 tasks")
    services.procs["worker1"].kill()
    job = services.wait_state(job_id, {"completed", "failed"}, timeout=240)
    assert job["state"] == "completed", job
    assert job["progress"]["tasks"] == {"total": 20, "done": 20, "failed": 0}
    assert job["progress"]["rows"]["failed"] == 50
    assert services.output_rows(job_id) == expected_output(50_000, bad_every=1000)
    assert services.errors(job_id)["total"] == 50


def test_a_task_longer_than_the_visibility_timeout_runs_once(services: Services) -> None:
    services.start_pipeline()
    created = services.client.post("/api/jobs/canary", json={"tasks": 1, "seconds": 20})
    assert created.status_code == 202, created.text
    job = services.wait_state(created.json()["id"], {"completed", "failed"}, timeout=120)
    assert job["state"] == "completed", job
    codes = services.stop_all()
    assert codes == dict.fromkeys(codes, 0), services.logs()
    assert tasks_done_in_logs(services, "worker1", "worker2") == 1, services.logs()


def test_a_long_task_whose_worker_dies_is_run_by_another_after_the_timeout(
    services: Services,
) -> None:
    services.start_pipeline(workers=1)
    created = services.client.post("/api/jobs/canary", json={"tasks": 1, "seconds": 8})
    job_id = created.json()["id"]
    wait_for(lambda: "canary_start" in (services.tmp / "worker1.log").read_text(), 60, "task start")
    services.start("worker2", "services.worker", "--name", "w2")  # waits, the task is hidden
    log2 = services.tmp / "worker2.log"
    wait_for(lambda: "taking tasks" in log2.read_text(), 60, "worker 2 started")
    services.procs["worker1"].kill()
    killed_at = time.monotonic()
    wait_for(lambda: "canary_start" in log2.read_text(), 60, "the task back, on worker 2")
    back = time.monotonic() - killed_at
    print(f"\nSQS: a killed worker's task came back after {back:.1f} s (visibility {VISIBILITY} s)")
    job = services.wait_state(job_id, {"completed", "failed"}, timeout=120)
    assert job["state"] == "completed", job
    assert time.monotonic() - killed_at >= VISIBILITY, "it came back only after the timeout"
    codes = services.stop_all()
    assert codes["worker2"] == 0
    assert tasks_done_in_logs(services, "worker2") == 1, services.logs()
