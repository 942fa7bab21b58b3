"""Worker pairing: codes from the app, tokens for workers, refresh, revocation, throttling."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import select, update

from libs.common import pairing
from libs.common.models import Pairing, WorkerToken
from tests.webapp import Conveyor, StartApp, detail

KEY = "k" * 32
BROKER = "amqp://remote:secret@broker.example/"


def start(start_app: StartApp, **env: str) -> Conveyor:
    env = {"WORKER_TOKEN_KEY": KEY, "WORKER_BROKER_URL": BROKER, **env}
    return start_app(embedded=False, **env)


def new_pairing(app: Conveyor) -> dict[str, Any]:
    response = app.client.post("/api/pairings", json={})
    assert response.status_code == 201, response.text
    return dict(response.json())


def pair(app: Conveyor, code: str, name: str = "lender") -> Any:
    return app.client.post("/api/workers/pair", json={"code": code, "name": name, "host": "h"})


def refresh(app: Conveyor, token: str) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    return app.client.post("/api/workers/refresh", json={"name": "n", "host": "h"}, headers=headers)


def test_pair_happy_path_stores_only_hashes(start_app: StartApp) -> None:
    app = start(start_app, WORKER_STORAGE_URL="s3://bucket/conveyor")
    created = new_pairing(app)
    code = created["code"]
    assert created["state"] == "waiting"
    assert len(code) == 9 and code[4] == "-"
    assert set(code.replace("-", "")) <= set(pairing.ALPHABET)
    assert created["pool"].startswith("remote-") and len(created["pool"]) == len("remote-") + 8

    response = pair(app, f" {code.lower()} ")  # normalised: case and spaces
    assert response.status_code == 200, response.text
    answer = response.json()
    token = answer["token"]
    assert token.startswith("cvw_") and len(token) > 40
    assert answer["pool"] == created["pool"]
    assert answer["name"] == "lender"
    assert answer["broker_url"] == BROKER
    assert answer["storage_url"] == "s3://bucket/conveyor"
    assert answer["queue_prefix"] == app.components.settings.queue_prefix
    assert answer["heartbeat_seconds"] == app.components.settings.heartbeat_seconds

    with app.components.sessions() as session:
        row = session.get(WorkerToken, answer["worker_id"])
        assert row is not None
        stored = session.scalar(select(Pairing).where(Pairing.id == created["id"]))
        assert stored is not None
    assert row.token_hash == pairing.token_hash(KEY.encode(), token)
    assert token not in row.token_hash
    assert stored.code_hash == pairing.code_hash(code)
    assert stored.worker_id == answer["worker_id"]

    view = app.client.get(f"/api/pairings/{created['id']}").json()
    assert view["state"] == "connected"
    assert view["worker"] == {"id": answer["worker_id"], "name": "lender"}
    assert app.client.get("/api/pairings/nope").status_code == 404

    again = pair(app, code)
    assert again.status_code == 409, again.text
    assert "already used" in detail(again)
    assert app.client.get("/api/workers").status_code == 200


def test_expired_and_wrong_codes(start_app: StartApp) -> None:
    app = start(start_app)
    created = new_pairing(app)
    with app.components.sessions() as session, session.begin():
        session.execute(update(Pairing).where(Pairing.id == created["id"]).values(expires_at=1.0))
    assert app.client.get(f"/api/pairings/{created['id']}").json()["state"] == "expired"
    expired = pair(app, created["code"])
    assert expired.status_code == 410, expired.text

    wrong = pair(app, "BBBB-BBBB")
    assert wrong.status_code == 403
    assert detail(wrong) == "this pairing code is not valid"


def test_refresh_and_revoke(start_app: StartApp) -> None:
    app = start(start_app)
    answer = pair(app, new_pairing(app)["code"]).json()
    token, worker_id = answer["token"], answer["worker_id"]

    ok = refresh(app, token)
    assert ok.status_code == 200, ok.text
    assert "token" not in ok.json()
    assert ok.json()["worker_id"] == worker_id and ok.json()["pool"] == answer["pool"]
    assert refresh(app, "cvw_unknown").status_code == 401
    missing = app.client.post("/api/workers/refresh", json={})
    assert missing.status_code == 401 and detail(missing)

    revoked = app.client.delete(f"/api/workers/{worker_id}")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["id"] == worker_id and revoked.json()["revoked_at"]
    after = refresh(app, token)
    assert after.status_code == 401 and detail(after)
    assert app.client.delete("/api/workers/unknown").status_code == 404

    fresh = pair(app, new_pairing(app)["code"])
    assert fresh.status_code == 200, fresh.text
    assert refresh(app, fresh.json()["token"]).status_code == 200


def test_pairing_attempts_are_throttled_per_address(start_app: StartApp) -> None:
    app = start(start_app, PAIRING_ATTEMPTS_PER_MINUTE="5")
    statuses = [pair(app, f"WRNG{i:04d}").status_code for i in range(12)]
    assert statuses.count(403) == 5  # accepted guesses within the minute: the cap
    assert statuses[5:] == [429] * 7
    refused = pair(app, "WRNG0000")
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "too many" in detail(refused)


def test_global_cap_applies_across_addresses() -> None:
    clock = [0.0]
    throttle = pairing.Throttle(per_key=3, total=4, window=60, clock=lambda: clock[0])
    assert [throttle.attempt("a") for _ in range(3)] == [None] * 3
    assert throttle.attempt("a") == 60
    assert throttle.attempt("b") is None  # 4th overall
    clock[0] = 30.0
    assert throttle.attempt("c") == 30  # global cap, until the first attempt leaves
    clock[0] = 60.5
    assert throttle.attempt("c") is None


def test_unconfigured_pairing_answers_503(start_app: StartApp) -> None:
    app = start_app(embedded=False)
    for response in (
        app.client.post("/api/pairings"),
        pair(app, "BCDF-GHJK"),
        refresh(app, "cvw_x"),
    ):
        assert response.status_code == 503
        assert detail(response) == "pairing is not configured: set WORKER_TOKEN_KEY"


@pytest.mark.parametrize("raw", ["bcdf-ghjk", " BCDF GHJK ", "BcDf--gHjK"])
def test_codes_normalise(raw: str) -> None:
    assert pairing.normalise_code(raw) == "BCDFGHJK"
    assert pairing.code_hash(raw) == pairing.code_hash("BCDFGHJK")


def test_embedded_default_pairs_with_a_key_of_its_own(start_app: StartApp) -> None:
    app = start_app()  # embedded, no WORKER_TOKEN_KEY
    answer = pair(app, new_pairing(app)["code"])
    assert answer.status_code == 200, answer.text
    assert refresh(app, answer.json()["token"]).status_code == 200


def test_no_code_or_token_reaches_the_logs(
    start_app: StartApp, caplog: pytest.LogCaptureFixture
) -> None:
    """Every pairing path at DEBUG: no log record holds a code or a token in clear."""
    caplog.set_level(logging.DEBUG)
    app = start(start_app, PAIRING_ATTEMPTS_PER_MINUTE="2")
    created = new_pairing(app)
    code = created["code"]
    answer = pair(app, code).json()
    token = answer["token"]
    assert refresh(app, token).status_code == 200
    assert pair(app, code).status_code == 409  # reused
    assert refresh(app, token + "x").status_code == 401
    assert app.client.delete(f"/api/workers/{answer['worker_id']}").status_code == 200
    assert refresh(app, token).status_code == 401
    assert pair(app, "BCDF-GHJK").status_code == 429  # the 3rd attempt from this address
    secrets = {code, code.replace("-", ""), code.lower(), token, token.removeprefix("cvw_")}
    logged = [r.getMessage() + repr(r.__dict__) for r in caplog.records]
    assert len(logged) >= 4  # pairing, refusal, revocation and throttling were logged
    leaks = [(s, line) for line in logged for s in secrets if s in line]
    assert leaks == []


def test_sustained_guessing_is_held_to_the_cap() -> None:
    """Ten minutes of 20 guesses a second from one address (a simulated clock): the
    accepted guesses per second are the cap, 10 a minute."""
    clock = [0.0]
    throttle = pairing.Throttle(per_key=10, total=100, window=60, clock=lambda: clock[0])
    accepted = 0
    for step in range(10 * 60 * 20):
        clock[0] = step / 20
        accepted += throttle.attempt("203.0.113.9") is None
    rate = accepted / 600
    assert accepted == 100  # 10 in each of the 10 minutes
    assert rate == pytest.approx(10 / 60)
