"""Ownership with ACCOUNTS=required: lists show a member their own, the shared pool and
operator pools are an admin's, and rows from before accounts (no owner) are the admins'.
The access matrix (``test_access_matrix.py``) checks each route's status per role."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient

from libs.common import jobs
from libs.common.models import Job, Pairing, Worker, WorkerToken, now
from tests.webapp import Conveyor, StartApp

Client = TestClient[Any]


@pytest.fixture
def app(start_app: StartApp) -> Conveyor:
    return start_app(embedded=False, ACCOUNTS="required", WORKER_TOKEN_KEY="k" * 32)


def canary(client: Client, pool: str | None = None) -> Any:
    return client.post("/api/jobs/canary", json={"tasks": 1, "seconds": 0, "pool": pool})


def ids(client: Client, url: str) -> set[str]:
    answer = client.get(url)
    assert answer.status_code == 200, answer.text
    page = answer.json()
    assert page["total"] == len(page["items"])
    return {item["id"] for item in page["items"]}


def paired(app: Conveyor, client: Client) -> tuple[dict[str, Any], str]:
    made = client.post("/api/pairings")
    assert made.status_code == 201, made.text
    answer = app.client_for(None).post("/api/workers/pair", json={"code": made.json()["code"]})
    assert answer.status_code == 200, answer.text
    return made.json(), str(answer.json()["worker_id"])


def heartbeat(app: Conveyor, worker_id: str, paired_id: str | None, pool: str = "p") -> None:
    at = now()
    with app.components.sessions() as session, session.begin():
        session.add(Worker(
            id=worker_id, name=worker_id, pool=pool, host="h", pid=1, version="1",
            state="online", interval=5.0, started_at=at, sent_at=at, last_seen=at,
            paired_id=paired_id,
        ))  # fmt: skip


def test_job_lists_show_a_member_their_own_and_an_admin_all(app: Conveyor) -> None:
    alice, bob = app.member("alice@example.com"), app.member("bob@example.com")
    mine = {canary(alice).json()["id"] for _ in range(2)}
    theirs = canary(bob).json()["id"]
    with app.components.sessions() as session, session.begin():  # made with ACCOUNTS=off
        old = jobs.create_canary_job(session, job_id="old", tasks=1, seconds=0).id
    assert ids(alice, "/api/jobs") == mine
    assert ids(bob, "/api/jobs") == {theirs}
    assert ids(app.client, "/api/jobs") == mine | {theirs, old}
    assert alice.get(f"/api/jobs/{old}").status_code == 404
    assert app.client.get(f"/api/jobs/{old}").status_code == 200
    with app.components.sessions() as session:
        owners = {j.id: j.owner_id for j in session.query(Job)}
    assert owners[theirs] is not None and owners[theirs] != owners[next(iter(mine))]


def test_worker_lists_show_a_member_the_workers_paired_with_their_codes(app: Conveyor) -> None:
    alice, bob = app.member("alice@example.com"), app.member("bob@example.com")
    pairing, token = paired(app, alice)
    heartbeat(app, "alice-laptop", token)
    heartbeat(app, "operator-1", None)
    with app.components.sessions() as session:  # the token takes its pairing's owner
        owners = {session.get(WorkerToken, token), session.get(Pairing, pairing["id"])}
        assert len({row.owner_id for row in owners if row is not None} - {None}) == 1
    assert ids(alice, "/api/workers") == {"alice-laptop"}
    assert alice.get("/api/workers").json()["counts"]["online"] == 1
    assert ids(bob, "/api/workers") == set()
    assert ids(app.client, "/api/workers") == {"alice-laptop", "operator-1"}
    # An operator's worker is the admins': a member cannot see or revoke it.
    assert alice.get("/api/workers/operator-1").status_code == 404
    assert alice.delete("/api/workers/operator-1").status_code == 404
    assert bob.delete("/api/workers/alice-laptop").status_code == 404
    assert alice.delete("/api/workers/alice-laptop").status_code == 200
    assert app.client.delete("/api/workers/operator-1").status_code == 200


def test_the_shared_pool_and_operator_pools_are_for_admins(app: Conveyor) -> None:
    alice = app.member("alice@example.com")
    refused = alice.post("/api/pairings", json={"pool": "shared"})
    assert refused.status_code == 403, refused.text
    assert app.client.post("/api/pairings", json={"pool": "shared"}).status_code == 201
    assert canary(alice, "shared").status_code == 202
    operator = canary(alice, "gpu")
    assert operator.status_code == 403 and "admin" in operator.json()["detail"]
    # An admin may name it; it is then refused only because nobody serves it.
    assert canary(app.client, "gpu").status_code == 422
    heartbeat(app, "gpu-1", None, pool="gpu")
    assert canary(app.client, "gpu").status_code == 202
    assert canary(alice, "gpu").status_code == 403


def test_a_members_pool_is_theirs_and_looks_unknown_to_others(app: Conveyor) -> None:
    alice, bob = app.member("alice@example.com"), app.member("bob@example.com")
    pool = paired(app, alice)[0]["pool"]
    assert canary(alice, pool).status_code == 202
    unknown, theirs = canary(bob, "remote-00000000"), canary(bob, pool)
    assert theirs.status_code == unknown.status_code == 422
    assert theirs.json()["detail"] == unknown.json()["detail"].replace("remote-00000000", pool)
    assert bob.post("/api/pairings", json={"pool": pool}).status_code == 422
    assert alice.post("/api/pairings", json={"pool": pool}).status_code == 201
    assert canary(app.client, pool).status_code == 202
