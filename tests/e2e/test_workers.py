"""Worker heartbeats and the registry with the real entry points on RabbitMQ + PostgreSQL.

Two workers heartbeat every 0.5 s. A SIGKILLed worker goes offline after the missed
heartbeats and its in-flight task comes back to the queue for the other one (the time it
takes is printed); a SIGTERMed worker drains (``stopping``), then says ``stopped``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Services, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

BEAT = 0.5
MISSED = 3


@pytest.fixture
def services(tmp_path: Path, rabbitmq, pg_url: str) -> Iterator[Services]:  # type: ignore[no-untyped-def]
    svc = Services.configure(
        tmp_path, BROKER_URL=rabbitmq.url, DATABASE_URL=pg_url,
        HEARTBEAT_SECONDS=str(BEAT), OFFLINE_AFTER_MISSED=str(MISSED),
    )  # fmt: skip
    try:
        yield svc
    finally:
        svc.stop_all()


def workers(services: Services, **params: str) -> dict[str, dict[str, Any]]:
    response = services.client.get("/api/workers", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return {w["name"]: w for w in response.json()["items"]}


def canary(services: Services, seconds: float) -> str:
    body = {"tasks": 1, "seconds": seconds}
    response = services.client.post("/api/jobs/canary", json=body, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def holder(services: Services, job_id: str) -> str | None:
    found = [n for n, w in workers(services).items() if w["current_job"] == job_id]
    return found[0] if found else None


def test_online_killed_offline_terminated_stopped(services: Services) -> None:
    services.start_pipeline(workers=2)
    procs = {"w1": services.procs["worker1"], "w2": services.procs["worker2"]}
    listed = wait_for(
        lambda: (ws := workers(services)) and {n for n, w in ws.items()
                                              if w["status"] == "online"} == {"w1", "w2"} and ws,
        60, f"two workers online\n{services.logs()}",
    )  # fmt: skip
    for name, w in listed.items():
        assert w["pid"] == procs[name].pid
        assert w["pool"] == "shared" and w["heartbeat_seconds"] == BEAT
        assert {"csv", "canary"} <= set(w["capabilities"]["handlers"])

    # SIGKILL the worker holding a 5 s canary task: the other one gets it.
    job_id = canary(services, 5)
    victim = wait_for(lambda: holder(services, job_id), 30, "a worker to take the canary", 0.05)
    survivor = "w2" if victim == "w1" else "w1"
    killed_at = time.monotonic()
    procs[victim].kill()
    procs[victim].wait(10)
    wait_for(lambda: holder(services, job_id) == survivor, 30, "the task to come back", 0.05)
    picked_up = time.monotonic() - killed_at
    wait_for(lambda: workers(services)[victim]["status"] == "offline", 30, "offline", 0.05)
    offline = time.monotonic() - killed_at
    services.wait_state(job_id, {"completed"}, timeout=60)
    completed = time.monotonic() - killed_at
    print(
        f"\nSIGKILLed {victim} holding a 5 s canary task: the other worker held it after "
        f"{picked_up:.2f} s (seen through its heartbeats, every {BEAT} s); the job completed "
        f"{completed:.2f} s after the kill, so redelivery took about {completed - 5:.2f} s; "
        f"{victim} shown offline after {offline:.2f} s ({MISSED} x {BEAT} s heartbeats)"
    )
    assert MISSED * BEAT - BEAT <= offline < MISSED * BEAT + 5
    assert completed - 5 < 5  # RabbitMQ requeues as soon as the connection drops
    assert list(workers(services, status="offline")) == [victim]

    # SIGTERM the survivor while it holds a task: stopping while it drains, then stopped.
    job_id = canary(services, 3)
    wait_for(lambda: holder(services, job_id) == survivor, 30, "the survivor to take it", 0.05)
    procs[survivor].send_signal(signal.SIGTERM)
    wait_for(lambda: workers(services)[survivor]["status"] == "stopping", 10, "stopping", 0.05)
    assert procs[survivor].wait(30) == 0
    final = wait_for(
        lambda: (ws := workers(services))[survivor]["status"] == "stopped" and ws, 10, "stopped"
    )
    assert final[survivor]["in_flight"] == 0 and final[survivor]["current_job"] is None
    assert final[victim]["status"] == "offline"
    assert services.job(job_id)["state"] == "completed"
    one = services.client.get(f"/api/workers/{final[survivor]['id']}", timeout=10)
    assert one.status_code == 200 and one.json()["processed"] >= 1
