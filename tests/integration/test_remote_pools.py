"""Remote worker mode on the embedded default: jobs go to a pairing's pool and run only on
the worker paired with it; revoking that worker stops it within one heartbeat interval.

The lent worker is a real ``Worker`` on the app's in-process broker, in a thread, so it
meets the app's in-process dispatcher and shared worker as a separate process would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select, update

from libs.common import messages
from libs.common.models import Outbox, WorkerToken
from libs.common.storage import Storage
from services.worker.worker import Options, Worker
from tests.webapp import Conveyor, StartApp, detail, poll

BEAT = 0.3


def start(start_app: StartApp) -> Conveyor:
    return start_app(HEARTBEAT_SECONDS=str(BEAT), OFFLINE_AFTER_MISSED="3")


def paired(app: Conveyor, body: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
    created = app.client.post("/api/pairings", json=body or {})
    assert created.status_code == 201, created.text
    answer = app.client.post("/api/workers/pair", json={"code": created.json()["code"]})
    assert answer.status_code == 200, answer.text
    return created.json(), answer.json()


@contextmanager
def lent_worker(app: Conveyor, pool: str, paired_id: str) -> Iterator[Worker]:
    """A worker serving ``pool`` on the app's broker, as ``--server`` would start one."""
    settings = app.components.settings.replace(pool=pool)
    options = Options(name="lent", lent=True, paired_id=paired_id)
    worker = Worker(settings, Storage(settings.storage_url), app.components.broker, options)
    thread = threading.Thread(target=worker.run, name="lent-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.request_stop()
        thread.join(15)
        assert not thread.is_alive(), "the lent worker did not stop"


def canary(app: Conveyor, tasks: int, pool: str | None = None) -> Any:
    body: dict[str, Any] = {"tasks": tasks, "seconds": 0}
    if pool is not None:
        body["pool"] = pool
    return app.client.post("/api/jobs/canary", json=body)


def workers(app: Conveyor) -> dict[str, dict[str, Any]]:
    return {w["name"]: w for w in app.client.get("/api/workers").json()["items"]}


def test_remote_mode_jobs_run_on_the_paired_worker_only(start_app: StartApp) -> None:
    app = start(start_app)
    created, answer = paired(app)
    pool = created["pool"]
    with lent_worker(app, pool, answer["worker_id"]) as worker:
        remote = canary(app, 4, pool)
        assert remote.status_code == 202, remote.text
        assert remote.json()["pool"] == pool
        shared = canary(app, 3)
        assert shared.json()["pool"] == "shared"
        for job in (remote.json()["id"], shared.json()["id"]):
            assert app.wait_final(job)["state"] == "completed"

        seen = poll(
            lambda: workers(app),
            lambda w: (
                w.get("lent", {}).get("processed") == 4
                and sum(v["processed"] for v in w.values()) == 7
            ),
            "the lent worker's 4 tasks and the shared worker's 3 in the registry",
        )
        lent = seen["lent"]
        assert lent["pool"] == pool and lent["paired_id"] == answer["worker_id"]
        assert lent["revoked_at"] is None
        others = [w for name, w in seen.items() if name != "lent"]
        assert [w["pool"] for w in others] == ["shared"]
        assert others[0]["processed"] == 3 and others[0]["paired_id"] is None
        assert worker.processed == 4


def test_revoking_stops_the_running_worker_within_a_heartbeat(start_app: StartApp) -> None:
    app = start(start_app)
    created, answer = paired(app)
    with lent_worker(app, created["pool"], answer["worker_id"]) as worker:
        poll(lambda: workers(app), lambda w: "lent" in w, "the lent worker registered")
        revoked_at = time.monotonic()
        response = app.client.delete(f"/api/workers/{answer['worker_id']}")
        assert response.status_code == 200, response.text
        poll(worker.revoked.is_set, bool, "the worker told it was revoked")
        took = time.monotonic() - revoked_at
        assert took < BEAT + 1.0, f"revocation reached the worker after {took:.2f} s"
        poll(lambda: worker.loop.stop.is_set(), bool, "the revoked worker stopped")
    shown = poll(lambda: workers(app), lambda w: w["lent"]["status"] == "stopped", "stopped")
    row = shown["lent"]
    assert row["revoked_at"] is not None
    token = {"Authorization": f"Bearer {answer['token']}"}
    assert app.client.post("/api/workers/refresh", json={}, headers=token).status_code == 401
    refused = canary(app, 1, created["pool"])
    assert refused.status_code == 409, refused.text
    assert "revoked" in detail(refused)


def test_a_worker_that_missed_the_broadcast_is_told_at_its_next_heartbeat(
    start_app: StartApp,
) -> None:
    """Revoked behind its back (no broadcast): the dispatcher repeats it on a heartbeat."""
    app = start(start_app)
    created, answer = paired(app)
    with lent_worker(app, created["pool"], answer["worker_id"]) as worker:
        poll(lambda: workers(app), lambda w: "lent" in w, "the lent worker registered")
        with app.components.sessions() as session, session.begin():
            session.execute(
                update(WorkerToken)
                .where(WorkerToken.worker_id == answer["worker_id"])
                .values(revoked_at=time.time())
            )
        poll(worker.revoked.is_set, bool, "the worker told at its next heartbeat")
    with app.components.sessions() as session:
        sent = [messages.decode(r.body).body for r in session.scalars(select(Outbox))]
    assert not any(isinstance(b, messages.WorkerRevoked) for b in sent)  # not by the web


def test_pools_a_job_may_name(start_app: StartApp) -> None:
    app = start(start_app)
    unknown = canary(app, 1, "gpu")
    assert unknown.status_code == 422 and "no worker serves pool 'gpu'" in detail(unknown)
    invalid = canary(app, 1, "Bad Pool!")
    assert invalid.status_code == 422 and "invalid pool" in detail(invalid)
    too_long = canary(app, 1, "p" * 65)
    assert too_long.status_code == 400

    waiting = app.client.post("/api/pairings", json={}).json()
    accepted = canary(app, 1, waiting["pool"])  # its worker may pair later: the task waits
    assert accepted.status_code == 202, accepted.text
    assert app.job(accepted.json()["id"])["state"] in ("queued", "running")

    csv = app.client.post(
        "/api/jobs/csv",
        files={"file": ("a.csv", b"a,b\n1,2\n", "text/csv")},
        data={"pool": "nowhere"},
    )
    assert csv.status_code == 422 and "no worker serves pool 'nowhere'" in detail(csv)
    assert app.uploads() == []  # the refused upload is not kept
    twice = app.client.post(
        "/api/jobs/csv",
        files={"file": ("a.csv", b"a,b\n1,2\n", "text/csv")},
        data={"pool": ["shared", "shared"]},
    )
    assert twice.status_code == 422 and "at most one 'pool'" in detail(twice)
    routed = app.client.post(
        "/api/jobs/csv",
        files={"file": ("a.csv", b"a,b\n1,2\n", "text/csv")},
        data={"pool": waiting["pool"]},
    )
    assert routed.status_code == 202 and routed.json()["pool"] == waiting["pool"]

    lastfm = app.client.post("/api/jobs/audio", json={"prefix": "file:///nope/", "pool": "x-1"})
    assert lastfm.status_code in (422,), lastfm.text


def test_pairing_codes_for_the_shared_pool_or_an_earlier_pool(start_app: StartApp) -> None:
    app = start(start_app)
    shared = app.client.post("/api/pairings", json={"pool": "shared"})
    assert shared.status_code == 201 and shared.json()["pool"] == "shared"
    first = app.client.post("/api/pairings").json()
    second = app.client.post("/api/pairings", json={"pool": first["pool"]})
    assert second.status_code == 201 and second.json()["pool"] == first["pool"]
    assert second.json()["id"] != first["id"]
    unknown = app.client.post("/api/pairings", json={"pool": "remote-00000000"})
    assert unknown.status_code == 422 and "no pairing has pool" in detail(unknown)
    extra = app.client.post("/api/pairings", json={"pools": "shared"})
    assert extra.status_code == 400
