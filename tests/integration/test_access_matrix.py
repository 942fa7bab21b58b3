"""The access matrix, built from the app's own route list: every route by {anonymous,
another member, the owner (a member), an admin} → the status it answers, with ACCOUNTS=
required. The objects (a job, a pairing, a paired worker, a track) are the owner's; a
route with no row here fails the test, so a new route needs its expected statuses.
Every call is made by a fresh client of its role; state-changing calls get fresh objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient

from libs.common import frames, users
from libs.common.models import Track, Worker, now
from services.web import access
from services.web.auth_middleware import CSRF_COOKIE, CSRF_HEADER
from tests.unit.test_route_access import routes
from tests.webapp import PASSWORD, Conveyor, StartApp

ROLES = ("anonymous", "another member", "owner", "admin")
Client = TestClient[Any]


@dataclass
class World:
    """The app, a token per role (anonymous: None), and the owner's objects."""

    app: Conveyor
    tmp: str
    tokens: dict[str, str | None]
    job: str = ""
    pairing: str = ""
    pool: str = ""
    worker: str = ""  # a registry row of a process running under the owner's token
    track: int = 0
    made: int = 0

    def client(self, role: str) -> Client:
        client = self.app.client_for(self.tokens[role])
        if self.tokens[role] is None:  # a browser's page: the CSRF cookie, echoed
            assert client.get("/healthz").status_code == 200
            client.headers[CSRF_HEADER] = client.cookies[CSRF_COOKIE]
        return client

    def unique(self, what: str) -> str:
        self.made += 1
        return f"{what}{self.made}"

    def new_job(self) -> str:
        answer = self.client("owner").post("/api/jobs/canary", json={"tasks": 1, "seconds": 0})
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    def new_pairing(self) -> dict[str, Any]:
        answer = self.client("owner").post("/api/pairings", json={"pool": self.pool or None})
        assert answer.status_code == 201, answer.text
        return dict(answer.json())

    def new_paired_worker(self) -> str:
        code = self.new_pairing()["code"]
        answer = self.app.client_for(None).post("/api/workers/pair", json={"code": code})
        assert answer.status_code == 200, answer.text
        return str(answer.json()["worker_id"])

    def new_user(self) -> str:
        return self.app.user(self.unique("target") + "@example.com")[0]

    def owner_token_id(self) -> str:
        with self.app.components.sessions() as session, session.begin():
            owner = users.authenticate(session, "owner@example.com", PASSWORD)
            assert owner is not None
            return users.create_api_token(session, owner, self.unique("spare"))[0].id

    def invite(self) -> str:
        with self.app.components.sessions() as session, session.begin():
            email = self.unique("invited") + "@example.com"
            return users.create_invite(session, email, "member", None)[1]


Call = Callable[[World, Client], "httpx.Response | int"]
J, T, W, P = "/api/jobs", "/api/tracks", "/api/workers", "/api/pairings"
ALL_USERS = (401, 200, 200, 200)
MINE = (401, 404, 200, 200)


def csv(w: World, c: Client) -> httpx.Response:
    data = {"pool": w.pool}
    return c.post(f"{J}/csv", files={"file": ("a.csv", b"name\nx\n", "text/csv")}, data=data)


def websocket(w: World, c: Client) -> int:
    try:
        with c.websocket_connect(frames.PATH, headers=dict(c.headers)) as ws:
            ws.receive_bytes()
    except WebSocketDisconnect as exc:
        return exc.code
    return 0


# fmt: off
MATRIX: dict[tuple[str, str], tuple[Call, tuple[int, int, int, int]]] = {
    ("GET", J): (lambda w, c: c.get(J), ALL_USERS),
    ("GET", f"{J}/{{job_id:str}}"): (lambda w, c: c.get(f"{J}/{w.job}"), MINE),
    ("GET", f"{J}/{{job_id:str}}/errors"): (lambda w, c: c.get(f"{J}/{w.job}/errors"), MINE),
    ("GET", f"{J}/{{job_id:str}}/output"): (
        lambda w, c: c.get(f"{J}/{w.job}/output"), (401, 404, 409, 409)),
    ("POST", f"{J}/{{job_id:str}}/cancel"): (
        lambda w, c: c.post(f"{J}/{w.new_job()}/cancel"), (401, 404, 202, 202)),
    ("POST", f"{J}/{{job_id:str}}/retry"): (
        lambda w, c: c.post(f"{J}/{w.job}/retry"), (401, 404, 409, 409)),
    # A job sent to the owner's pairing's pool: another member is told no worker serves it.
    ("POST", f"{J}/csv"): (csv, (401, 422, 202, 202)),
    ("POST", f"{J}/canary"): (
        lambda w, c: c.post(f"{J}/canary", json={"tasks": 1, "seconds": 0, "pool": w.pool}),
        (401, 422, 202, 202)),
    ("POST", f"{J}/lastfm"): (
        lambda w, c: c.post(f"{J}/lastfm", json={"username": "rj", "pool": w.pool}),
        (401, 422, 202, 202)),
    ("POST", f"{J}/audio"): (
        lambda w, c: c.post(f"{J}/audio", json={"prefix": f"file://{w.tmp}/", "pool": w.pool}),
        (401, 422, 202, 202)),
    ("GET", T): (lambda w, c: c.get(T), ALL_USERS),
    ("GET", f"{T}/export"): (lambda w, c: c.get(f"{T}/export"), ALL_USERS),
    ("GET", f"{T}/{{track_id:int}}"): (lambda w, c: c.get(f"{T}/{w.track}"), ALL_USERS),
    ("GET", f"{T}/{{track_id:int}}/similar"): (
        lambda w, c: c.get(f"{T}/{w.track}/similar"), (401, 409, 409, 409)),
    ("GET", W): (lambda w, c: c.get(W), ALL_USERS),
    ("GET", f"{W}/{{worker_id:str}}"): (lambda w, c: c.get(f"{W}/{w.worker}"), MINE),
    ("DELETE", f"{W}/{{worker_id:str}}"): (
        lambda w, c: c.delete(f"{W}/{w.new_paired_worker()}"), MINE),
    # Another pairing into the owner's pool: another member is told no pairing has it.
    ("POST", P): (lambda w, c: c.post(P, json={"pool": w.pool}), (401, 422, 201, 201)),
    ("GET", f"{P}/{{pairing_id:str}}"): (lambda w, c: c.get(f"{P}/{w.pairing}"), MINE),
    ("POST", "/api/auth/login"): (
        lambda w, c: c.post("/api/auth/login",
                            json={"email": "owner@example.com", "password": PASSWORD}),
        (200, 200, 200, 200)),
    ("POST", "/api/auth/logout"): (lambda w, c: c.post("/api/auth/logout"), (204,) * 4),
    ("POST", "/api/auth/signup"): (  # closed: ALLOW_SIGNUP is false
        lambda w, c: c.post("/api/auth/signup",
                            json={"email": "new@example.com", "password": PASSWORD}),
        (403,) * 4),
    ("POST", "/api/auth/invites/redeem"): (
        lambda w, c: c.post("/api/auth/invites/redeem",
                            json={"token": w.invite(), "password": PASSWORD}),
        (201,) * 4),
    ("POST", "/api/auth/logout-all"): (
        lambda w, c: c.post("/api/auth/logout-all"), (401, 204, 204, 204)),
    ("GET", "/api/auth/me"): (lambda w, c: c.get("/api/auth/me"), ALL_USERS),
    ("GET", "/api/auth/tokens"): (lambda w, c: c.get("/api/auth/tokens"), ALL_USERS),
    ("POST", "/api/auth/tokens"): (
        lambda w, c: c.post("/api/auth/tokens", json={"name": "x"}), (401, 201, 201, 201)),
    # An API token is its user's only: even an admin cannot revoke another's.
    ("DELETE", "/api/auth/tokens/{token_id:str}"): (
        lambda w, c: c.delete(f"/api/auth/tokens/{w.owner_token_id()}"), (401, 404, 204, 404)),
    ("GET", "/api/users"): (lambda w, c: c.get("/api/users"), (401, 403, 403, 200)),
    ("POST", "/api/users/invites"): (
        lambda w, c: c.post("/api/users/invites", json={"email": w.unique("i") + "@example.com"}),
        (401, 403, 403, 201)),
    ("DELETE", "/api/users/{user_id:str}"): (
        lambda w, c: c.delete(f"/api/users/{w.new_user()}"), (401, 403, 403, 200)),
    # The worker routes take a worker token or a pairing code: a user's token is neither.
    ("POST", f"{W}/pair"): (lambda w, c: c.post(f"{W}/pair", json={"code": "AAAA-AAAA"}),
                            (403,) * 4),
    ("POST", f"{W}/refresh"): (lambda w, c: c.post(f"{W}/refresh", json={}), (401,) * 4),
    ("WS", f"{W}/connect"): (websocket, (frames.UNAUTHORIZED,) * 4),
    ("POST", f"{W}/tasks/{{task_id:str}}/urls"): (
        lambda w, c: c.post(f"{W}/tasks/x/urls", json={}), (401,) * 4),
    ("GET", f"{W}/tasks/{{task_id:str}}/input"): (
        lambda w, c: c.get(f"{W}/tasks/x/input"), (401,) * 4),
    ("PUT", f"{W}/tasks/{{task_id:str}}/output"): (
        lambda w, c: c.put(f"{W}/tasks/x/output", content=b""), (401,) * 4),
    ("GET", f"{W}/tasks/{{task_id:str}}/tracks/{{track_id:int}}"): (
        lambda w, c: c.get(f"{W}/tasks/x/tracks/1"), (401,) * 4),
}
# fmt: on


def expected(route: tuple[str, str]) -> tuple[Call, tuple[int, int, int, int]] | None:
    """The route's row; the public pages and probes (GET, rule PUBLIC or PAGE) answer all."""
    if route in MATRIX:
        return MATRIX[route]
    method, path = route
    if method == "GET" and access.RULES.get(route) in (access.PUBLIC, access.PAGE):
        return (lambda w, c: c.get(path.replace("{", "").replace("}", "")), (200,) * 4)
    return None


ENV = {"WORKER_TOKEN_KEY": "k" * 32, "LASTFM_API_KEY": "test", "LOGIN_ATTEMPTS_PER_MINUTE": "1000",
       "PAIRING_ATTEMPTS_PER_MINUTE": "1000"}  # fmt: skip


@pytest.fixture
def world(start_app: StartApp, tmp_path: Any) -> World:
    app = start_app(embedded=False, ACCOUNTS="required", AUDIO_ROOTS=f"file://{tmp_path}/", **ENV)
    assert len(app.client.app.state.auth.secret) >= 32
    tokens: dict[str, str | None] = {
        "anonymous": None,
        "admin": app.client.headers["authorization"][7:],
    }
    for role, email in (("owner", "owner@example.com"), ("another member", "other@example.com")):
        tokens[role] = app.user(email)[1]
    w = World(app, str(tmp_path), tokens)
    first = w.new_pairing()
    w.pairing, w.pool = first["id"], first["pool"]
    paired = w.new_paired_worker()
    w.job = w.new_job()
    at = now()
    with app.components.sessions() as session, session.begin():
        session.add(Worker(
            id="process-1", name="laptop", pool=w.pool, host="h", pid=1, version="1",
            state="online", interval=5.0, started_at=at, sent_at=at, last_seen=at,
            paired_id=paired,
        ))  # fmt: skip
        track = Track(key="artist - title", origin="lastfm", artist="Artist", title="Title")
        session.add(track)
        session.flush()
        w.worker, w.track = "process-1", track.id
    return w


def test_every_route_answers_each_role_as_the_matrix_says(world: World) -> None:
    served = routes(world.app.client.app)
    missing = sorted(r for r in served if expected(r) is None)
    assert missing == [], "routes without a row in the access matrix"
    assert MATRIX.keys() - served == set(), "rows for routes that do not exist"
    wrong = []
    for route in sorted(served):
        row = expected(route)
        assert row is not None
        call, statuses = row
        for role, status in zip(ROLES, statuses, strict=True):
            answer = call(world, world.client(role))
            got = answer if isinstance(answer, int) else answer.status_code
            if got != status:
                text = "" if isinstance(answer, int) else answer.text[:200]
                wrong.append(f"{route} as {role}: {got}, expected {status} {text}")
    assert wrong == []
