"""Several web instances on RabbitMQ + PostgreSQL: a gateway worker's socket has its own
consumer in the instance it reached, so the instances share no memory. Revoking through
another instance closes the socket within a second (the control broadcast), and a web
restart mid-job loses and doubles nothing: the worker comes back with no new code."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.e2e.harness import ROOT, SPEC, Services, expected_output, make_csv, wait_for, web_ready
from tests.servers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

EXIT_REVOKED = 3
KEY = "gateway-test-key-0123456789"


@pytest.fixture
def services(tmp_path: Path, rabbitmq, pg_url: str) -> Iterator[Services]:  # type: ignore[no-untyped-def]
    svc = Services.configure(
        tmp_path, BROKER_URL=rabbitmq.url, DATABASE_URL=pg_url, CHUNK_ROWS="200",
        HEARTBEAT_SECONDS="1", WORKER_TOKEN_KEY=KEY,
    )  # fmt: skip
    try:
        yield svc
    finally:
        svc.stop_all()


def launch(svc: Services, name: str, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    log = (svc.tmp / f"{name}.log").open("ab")
    svc._logs.append(log)  # closed by stop_all
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    svc.procs[name] = proc
    return proc


def start_web(svc: Services, name: str, port: str) -> str:
    proc = launch(svc, name, {**svc.env, "PORT": port}, "services.web")
    base = f"http://127.0.0.1:{port}"
    ready = lambda: web_ready(proc, base, svc.logs, svc.headers)  # noqa: E731
    wait_for(ready, 60, f"{name} ready\n{svc.logs()}")
    return base


def socket_open(svc: Services, name: str) -> int:
    return (svc.tmp / f"{name}.log").read_text(errors="replace").count("action=gateway_connect")


def test_revoking_through_another_instance_and_a_web_restart(
    services: Services, tmp_path: Path, pg_url: str
) -> None:
    svc = services
    port_a = svc.env["PORT"]
    base_a = start_web(svc, "webA", port_a)
    base_b = start_web(svc, "webB", str(free_port()))
    svc.start("dispatcher", "services.dispatcher")
    api = svc.client  # as the admin; absolute URLs: either instance
    pairing = api.post(f"{base_b}/api/pairings", json={}, timeout=10).json()
    worker_env = {k: v for k, v in svc.env.items() if not k.startswith(("BROKER", "DATABASE"))}
    worker_env.update(CONVEYOR_CONFIG_DIR=str(tmp_path / "cfg"), WORK_DIR=str(tmp_path / "w"))
    worker = launch(
        svc, "lent", worker_env, "services.worker", "--server", base_a, "--code",
        pairing["code"], "--name", "lent", "--plain",
    )  # fmt: skip
    wait_for(lambda: socket_open(svc, "webA") >= 1, 60, f"the worker on A\n{svc.logs()}")

    # A job through B, run by the worker on A; A restarts mid-job.
    make_csv(tmp_path / "in.csv", 20_000, bad_every=1000)
    with (tmp_path / "in.csv").open("rb") as f:
        answer = api.post(
            f"{base_b}/api/jobs/csv", files={"file": ("in.csv", f)},
            data={"pool": pairing["pool"], "mapping": SPEC}, timeout=60,
        )  # fmt: skip
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]

    def tasks_done() -> int:
        return int(
            api.get(f"{base_b}/api/jobs/{job_id}", timeout=10).json()["progress"]["tasks"]["done"]
        )

    wait_for(lambda: tasks_done() >= 5, 60, f"tasks under way\n{svc.logs()}")
    svc.procs["webA"].terminate()
    assert svc.procs["webA"].wait(30) == 0
    going_away = "(1001: the server is shutting down)"  # not uvicorn's own 1012
    wait_for(lambda: going_away in (tmp_path / "lent.log").read_text(), 30, "going away")
    at_restart = tasks_done()
    print(f"web A restarted with {at_restart} of 100 tasks done")
    assert at_restart < 100, "the job finished before the restart: it proves nothing"
    start_web(svc, "webA", port_a)
    wait_for(lambda: socket_open(svc, "webA") >= 2, 60, f"the worker back on A\n{svc.logs()}")
    final = wait_for(
        lambda: (j := api.get(f"{base_b}/api/jobs/{job_id}", timeout=10).json())["state"]
        in ("completed", "failed") and j,
        120, f"the job\n{svc.logs()}",
    )  # fmt: skip
    assert final["state"] == "completed", final
    assert final["progress"]["tasks"] == {"total": 100, "done": 100, "failed": 0}
    output = api.get(f"{base_b}/api/jobs/{job_id}/output", timeout=60).text
    rows = list(csv.reader(io.StringIO(output, newline="")))
    assert rows == expected_output(20_000, bad_every=1000)
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        states = conn.execute(
            text("select state, worker from tasks where job_id = :j"), {"j": job_id}
        ).all()
    engine.dispose()
    assert {s for s, _ in states} == {"done"} and {w for _, w in states} == {"lent"}

    # Revoked through B: A hears the broadcast and closes the socket at once.
    paired_id = json.loads((tmp_path / "cfg" / "worker.json").read_text())["worker_id"]
    started = time.monotonic()
    assert api.delete(f"{base_b}/api/workers/{paired_id}", timeout=10).status_code == 200
    assert worker.wait(timeout=15) == EXIT_REVOKED, svc.logs()
    took = time.monotonic() - started
    print(f"revoked through another instance: the worker exited {took:.2f} s later")
    assert took < 5.0
    closed = [
        line for line in (tmp_path / "lent.log").read_text().splitlines()
        if "refused this worker" in line
    ]  # fmt: skip
    assert closed, svc.logs()
