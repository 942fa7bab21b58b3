"""The real entry points as processes on RabbitMQ + PostgreSQL + local storage.

Each test checks the output row by row: nothing lost, nothing doubled, input order kept.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from libs.common import topology
from libs.common.broker import Broker, delivery_count
from tests.e2e.harness import ROOT, Services, expected_output, make_csv, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture
def services(tmp_path: Path, rabbitmq, pg_url: str) -> Iterator[Services]:  # type: ignore[no-untyped-def]
    svc = Services.configure(
        tmp_path, BROKER_URL=rabbitmq.url, DATABASE_URL=pg_url, CHUNK_ROWS="1000"
    )
    try:
        yield svc
    finally:
        svc.stop_all()


def test_100k_rows_with_two_workers(services: Services, tmp_path: Path) -> None:
    services.start_pipeline()
    make_csv(tmp_path / "in.csv", 100_000, bad_every=1000)
    job_id = services.submit(tmp_path / "in.csv")
    job = services.wait_state(job_id, {"completed", "failed"})
    assert job["state"] == "completed", job
    rows = job["progress"]["rows"]
    assert rows == {"total": 100_000, "done": 99_900, "failed": 100, "filtered": 0}
    assert job["progress"]["tasks"] == {"total": 100, "done": 100, "failed": 0}
    assert services.output_rows(job_id) == expected_output(100_000, bad_every=1000)
    errors = services.errors(job_id)
    assert errors["total"] == 100
    assert [e["row"] for e in errors["items"]] == list(range(1, 100_000, 1000))
    assert {e["column"] for e in errors["items"]} == {"age"}
    codes = services.stop_all()
    assert codes == dict.fromkeys(codes, 0), services.logs()


@pytest.mark.parametrize("victim", ["worker1", "dispatcher"])
def test_a_process_killed_mid_job_loses_and_doubles_nothing(
    services: Services, tmp_path: Path, victim: str
) -> None:
    """SIGKILL, no goodbye: a worker's unacked task is redelivered to the other worker; a
    restarted dispatcher resumes from its cursor and the events still queued."""
    services.env["CHUNK_ROWS"] = "250"
    services.start_pipeline()
    make_csv(tmp_path / "in.csv", 100_000)
    job_id = services.submit(tmp_path / "in.csv")
    wait_for(lambda: services.job(job_id)["progress"]["tasks"]["done"] >= 40, 120, "40 tasks")
    services.procs[victim].kill()
    services.procs[victim].wait(10)
    if victim == "dispatcher":
        services.start("dispatcher2", "services.dispatcher")
    job = services.wait_state(job_id, {"completed", "failed"})
    assert job["state"] == "completed", job
    assert job["progress"]["tasks"] == {"total": 400, "done": 400, "failed": 0}
    assert services.output_rows(job_id) == expected_output(100_000)


def test_sigterm_lets_a_worker_finish_and_exit_zero(services: Services, tmp_path: Path) -> None:
    services.env["CHUNK_ROWS"] = "250"
    services.start_pipeline()
    make_csv(tmp_path / "in.csv", 50_000)
    job_id = services.submit(tmp_path / "in.csv")
    wait_for(lambda: services.job(job_id)["progress"]["tasks"]["done"] >= 20, 120, "20 tasks")
    worker = services.procs["worker1"]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    log = (tmp_path / "worker1.log").read_text()
    assert "worker stopped" in log
    job = services.wait_state(job_id, {"completed", "failed"})
    assert job["state"] == "completed", job
    assert services.output_rows(job_id) == expected_output(50_000)


def test_poison_task_is_dead_lettered_shown_and_retried(
    services: Services, tmp_path: Path, rabbitmq
) -> None:  # type: ignore[no-untyped-def]
    """A task whose consumer dies on it every time: dead-lettered by delivery count."""
    services.env["DELIVERY_LIMIT"] = "2"
    services.start_web()
    services.start("dispatcher", "services.dispatcher")
    make_csv(tmp_path / "in.csv", 10)
    job_id = services.submit(tmp_path / "in.csv")
    queue = topology.task_queue(services.env["QUEUE_PREFIX"], "shared", 2)
    deliveries = []
    for _ in range(3):  # play a worker that dies on the message: limit 2 = 3 deliveries
        with Connection(rabbitmq.url, heartbeat=0) as conn:
            message = conn.SimpleQueue(queue).get(block=True, timeout=30)
            deliveries.append(delivery_count(message))
        # closed without an ack, as a SIGKILLed worker's connection would be
    assert deliveries == [1, 2, 3]
    job = services.wait_state(job_id, {"failed"}, timeout=60)
    assert "dead-lettered" in job["error"] and "delivery limit" in job["error"]
    assert job["progress"]["tasks"]["failed"] == 1
    errors = services.errors(job_id)["items"]
    assert errors[0]["row"] == 1 and "were not processed" in errors[0]["reason"]
    assert services.client.get(f"/api/jobs/{job_id}/output").status_code == 409

    services.start("worker1", "services.worker", "--name", "w1")
    retried = services.client.post(f"/api/jobs/{job_id}/retry")
    assert retried.status_code == 202 and retried.json()["requeued_tasks"] == 1
    job = services.wait_state(job_id, {"completed"}, timeout=60)
    assert job["error"] is None and job["progress"]["tasks"]["failed"] == 0
    assert services.errors(job_id)["total"] == 0
    assert services.output_rows(job_id) == expected_output(10)


def test_a_job_submitted_while_the_broker_is_down_completes_after(
    services: Services, tmp_path: Path, rabbitmq
) -> None:  # type: ignore[no-untyped-def]
    services.start_pipeline(workers=1)
    make_csv(tmp_path / "in.csv", 5_000)
    rabbitmq.stop()
    try:
        ready = services.client.get("/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["broker"].startswith("unreachable")
        job_id = services.submit(tmp_path / "in.csv")  # the outbox keeps it
        assert services.job(job_id)["state"] == "queued"
    finally:
        rabbitmq.start()
    job = services.wait_state(job_id, {"completed", "failed"}, timeout=180)
    assert job["state"] == "completed", job
    assert services.output_rows(job_id) == expected_output(5_000)


def test_cancel_stops_the_remaining_work(services: Services, tmp_path: Path, rabbitmq) -> None:  # type: ignore[no-untyped-def]
    services.env["CHUNK_ROWS"] = "100"
    services.start_pipeline(workers=1)
    make_csv(tmp_path / "in.csv", 200_000)
    job_id = services.submit(tmp_path / "in.csv")
    wait_for(lambda: services.job(job_id)["progress"]["tasks"]["done"] >= 10, 60, "10 tasks")
    cancelled = services.client.post(f"/api/jobs/{job_id}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
    broker = Broker(rabbitmq.url, services.env["QUEUE_PREFIX"], delivery_limit=5)
    queue_name = topology.task_queue(broker.prefix, "shared", 5).name
    with broker.connection() as conn:
        wait_for(lambda: broker.queue_depth(conn, queue_name) == 0, 60, "the queue to drain")
    parts = list((tmp_path / "storage" / "jobs" / job_id / "parts").glob("*.csv"))
    full_run = 200_000 // 100  # tasks a job run to the end would have written parts for
    assert len(parts) < full_run // 2, "the remaining tasks were skipped"
    assert services.job(job_id)["progress"]["tasks"]["total"] <= full_run
    job = services.job(job_id)
    assert job["state"] == "cancelled"
    assert services.client.post(f"/api/jobs/{job_id}/cancel").status_code == 409
    assert services.client.get(f"/api/jobs/{job_id}/output").status_code == 409


def test_embedded_default_completes_a_job(tmp_path: Path) -> None:
    """The newcomer's flow: the embedded default on loopback, no login (accounts off)."""
    svc = Services.configure_login_free(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/conveyor.db")
    try:
        svc.start_web()
        assert "embedded all-in-one" in (tmp_path / "web.log").read_text()
        make_csv(tmp_path / "in.csv", 20_000, bad_every=500)
        job_id = svc.submit(tmp_path / "in.csv")
        job = svc.wait_state(job_id, {"completed", "failed"}, timeout=120)
        assert job["state"] == "completed", job
        assert svc.output_rows(job_id) == expected_output(20_000, bad_every=500)
    finally:
        codes = svc.stop_all()
    assert codes["web"] == 0, svc.logs()


@pytest.mark.parametrize("module", ["services.web", "services.dispatcher", "services.worker"])
def test_entry_points_explain_themselves(module: str) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, timeout=60
    )
    assert shown.returncode == 0
    assert b"BROKER_URL" in shown.stdout and b"DATABASE_URL" in shown.stdout


@pytest.mark.parametrize(
    ("module", "env", "expected"),
    [
        ("services.web", {"PORT": "eighty"}, "PORT: "),
        ("services.dispatcher", {"BROKER_URL": "redis://x"}, "BROKER_URL: unsupported scheme"),
        ("services.dispatcher", {}, "BROKER_URL: not set"),
        ("services.worker", {}, "BROKER_URL: not set"),
        ("services.worker", {"BROKER_URL": "amqp://x", "WORKER_CONCURRENCY": "-1"}, "WORKER_"),
        # A deployment never starts without accounts.
        ("services.web", {"HOST": "0.0.0.0"}, "SESSION_SECRET: required when accounts are on"),
        ("services.web", {"BROKER_URL": "amqp://x"}, "SESSION_SECRET: required when accounts"),
        ("services.web", {"HOST": "0.0.0.0", "ACCOUNTS": "off"}, "ACCOUNTS: off only on a"),
        (
            "services.web",
            {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
            "DATABASE_URL: cannot use the database",
        ),
    ],
)
def test_a_bad_setting_stops_start_up_with_one_line(
    module: str, env: dict[str, str], expected: str
) -> None:
    clean = {"PATH": "/usr/bin:/bin", **env}
    run = subprocess.run(
        [sys.executable, "-m", module], cwd=ROOT, env=clean, capture_output=True, timeout=60
    )
    assert run.returncode != 0
    lines = run.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], run.stderr.decode()
