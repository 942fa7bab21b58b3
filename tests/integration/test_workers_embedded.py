"""Worker heartbeats and the workers API on the embedded default (one process, no servers).

The in-process worker heartbeats through the in-process broker like a separate one would;
the in-process dispatcher records it, and the API shows it.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

from litestar.testing import TestClient

from libs.common import messages, settings, topology
from libs.common.broker import Broker
from libs.common.models import Worker as WorkerRow
from libs.common.runtime import build
from libs.common.storage import Storage
from services.web.app import create_app
from services.worker.worker import Worker
from tests.webapp import StartApp, detail, poll


def test_the_in_process_worker_is_listed_online_with_its_capabilities(
    start_app: StartApp,
) -> None:
    app = start_app(HEARTBEAT_SECONDS="0.2")
    client = app.client
    page = poll(
        lambda: client.get("/api/workers").json(),
        lambda p: [w["status"] for w in p["items"]] == ["online"],
        "one worker online",
    )
    assert page["total"] == 1
    assert page["counts"] == {"online": 1, "stopping": 0, "offline": 0, "stopped": 0}
    worker = page["items"][0]
    assert worker["pool"] == "shared"
    assert worker["version"] == "0.1.0"
    assert worker["heartbeat_seconds"] == 0.2
    assert worker["seconds_since_seen"] < 5
    caps = worker["capabilities"]
    assert {"csv", "canary"} <= set(caps["handlers"])
    assert caps["cores"] >= 1 and caps["concurrency"] == 1
    assert ("tracks" in caps["handlers"]) == caps["ffmpeg"]

    job = client.post("/api/jobs/canary", json={"tasks": 3, "seconds": 0}).json()
    app.wait_final(job["id"])
    worker = poll(
        lambda: client.get(f"/api/workers/{worker['id']}").json(),
        lambda w: w["processed"] == 3,
        "3 tasks counted",
    )
    assert worker["status"] == "online"
    assert worker["failed"] == 0 and worker["in_flight"] == 0
    assert worker["items_per_second"] > 0

    assert client.get("/api/workers", params={"status": "online"}).json()["total"] == 1
    assert client.get("/api/workers", params={"status": "offline"}).json()["items"] == []


def test_workers_api_refuses_unknown_ids_and_statuses(start_app: StartApp) -> None:
    client = start_app().client
    missing = client.get("/api/workers/no-such-worker")
    assert missing.status_code == 404
    assert "no-such-worker" in detail(missing)
    bad = client.get("/api/workers", params={"status": "sleeping"})
    assert bad.status_code == 400
    assert "sleeping" in detail(bad) and "offline" in detail(bad)
    assert client.get("/api/workers", params={"limit": 0}).status_code == 400


def test_a_clean_stop_is_recorded_as_stopped(tmp_path: Path) -> None:
    """The embedded app waits for the dispatcher to record the worker's last heartbeat."""
    config = settings.load(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite",
            "STORAGE_URL": str(tmp_path / "storage"),
            "QUEUE_PREFIX": f"t{uuid.uuid4().hex[:10]}",
            "HEARTBEAT_SECONDS": "0.2",
        }
    )
    components = build(config)
    try:
        with TestClient(create_app(components)) as client:
            poll(lambda: client.get("/api/workers").json()["total"], bool, "a worker listed")
        with components.sessions() as session:
            rows = session.query(WorkerRow).all()
        assert [(r.state, r.in_flight, r.current_job) for r in rows] == [("stopped", 0, None)]
    finally:
        components.engine.dispose()


def test_a_worker_heartbeats_at_start_and_says_stopped_last(tmp_path: Path) -> None:
    """The worker alone on the in-process broker: its heartbeats, read off the events queue."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    config = settings.load(
        {"QUEUE_PREFIX": prefix, "STORAGE_URL": str(tmp_path), "HEARTBEAT_SECONDS": "0.1"}
    )
    broker = Broker("memory://", prefix, delivery_limit=3)
    beats: list[messages.Heartbeat] = []
    with broker.connection() as conn:
        broker.declare(conn)
        events = topology.event_queue(prefix, 3).bind(conn.default_channel)

        def read() -> list[messages.Heartbeat]:
            for _ in range(1000):
                message = events.get(no_ack=True)
                if message is None:
                    break
                body = messages.decode(message.body).body
                assert isinstance(body, messages.Heartbeat)
                beats.append(body)
            return beats

        worker = Worker(config, Storage(config.storage_url), broker)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            poll(read, lambda b: len(b) >= 3, "3 heartbeats")
        finally:
            worker.request_stop()
            thread.join(15)
        assert not thread.is_alive()
        read()
    assert {b.worker_id for b in beats} == {worker.id}
    assert [b.state for b in beats[:3]] == ["online"] * 3
    assert beats[-1].state == "stopped"
    assert beats[-1].processed == 0 and beats[-1].interval == 0.1
