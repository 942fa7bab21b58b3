"""Pairing limits with accounts: per address and per user, so nobody locks others out."""

from __future__ import annotations

from tests.webapp import StartApp

LIMIT = 3


def test_bogus_attempts_from_everywhere_do_not_lock_out_a_real_code(start_app: StartApp) -> None:
    app = start_app(
        embedded=False, ACCOUNTS="required", WORKER_TOKEN_KEY="k" * 32,
        TRUSTED_PROXIES="testclient", PAIRING_ATTEMPTS_PER_MINUTE=str(LIMIT),
        PAIRING_ATTEMPTS_GLOBAL_PER_MINUTE=str(LIMIT),
    )  # fmt: skip
    code = app.client.post("/api/pairings", json={}).json()["code"]
    anonymous = app.client_for(None)
    statuses = set()
    for n in range(5 * LIMIT):  # more than the global cap, from many addresses
        answer = anonymous.post(
            "/api/workers/pair", json={"code": "BCDF-GHJK", "name": "x"},
            headers={"X-Forwarded-For": f"203.0.113.{n}"},
        )  # fmt: skip
        statuses.add(answer.status_code)
    assert statuses == {403}  # refused as a wrong code, never throttled
    real = anonymous.post(
        "/api/workers/pair", json={"code": code, "name": "laptop"},
        headers={"X-Forwarded-For": "198.51.100.7"},
    )  # fmt: skip
    assert real.status_code == 200, real.text


def test_each_user_may_make_a_few_codes_a_minute(start_app: StartApp) -> None:
    app = start_app(
        embedded=False, ACCOUNTS="required", WORKER_TOKEN_KEY="k" * 32,
        PAIRING_ATTEMPTS_PER_MINUTE=str(LIMIT),
    )  # fmt: skip
    member = app.member("m@example.com")
    made = [member.post("/api/pairings", json={}).status_code for _ in range(LIMIT + 1)]
    assert made == [201] * LIMIT + [429]
    refused = member.post("/api/pairings", json={})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert app.member("other@example.com").post("/api/pairings", json={}).status_code == 201
