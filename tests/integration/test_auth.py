"""Accounts over HTTP with ACCOUNTS=required: sessions, CSRF, API tokens, sign-up,
invitations, the admin's routes and the login throttle, on the app via ``start_app``."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from litestar.middleware.session.client_side import ClientSideSessionBackend
from sqlalchemy import update

from libs.common import pairing, users
from libs.common.models import Invite
from services.web import access, auth
from services.web.auth_middleware import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE, session_config
from tests.webapp import Conveyor, StartApp

SECRET = "s3ss10n-" * 5
PASSWORD = "correct horse battery staple"
ADMIN, MEMBER = "admin@example.com", "member@example.com"


def start(start_app: StartApp, **env: str) -> Conveyor:
    env = {"ACCOUNTS": "required", "SESSION_SECRET": SECRET, **env}
    return start_app(embedded=False, login=False, **env)


def make_user(app: Conveyor, email: str, role: str = "member") -> str:
    with app.components.sessions() as session, session.begin():
        return users.create_user(session, email, "", PASSWORD, role).id


def csrf(app: Conveyor) -> dict[str, str]:
    """The CSRF header a browser's page would send: the CSRF cookie, echoed."""
    if CSRF_COOKIE not in app.client.cookies:
        assert app.client.get("/healthz").status_code == 200
    return {CSRF_HEADER: app.client.cookies[CSRF_COOKIE]}


def login(app: Conveyor, email: str, password: str = PASSWORD, **headers: str) -> httpx.Response:
    body = {"email": email, "password": password}
    return app.client.post("/api/auth/login", json=body, headers={**csrf(app), **headers})


def logged_in(app: Conveyor, email: str) -> str:
    """Log in on the app's client; the session cookie's value."""
    response = login(app, email)
    assert response.status_code == 200, response.text
    return str(app.client.cookies[SESSION_COOKIE])


def session_cookie(response: httpx.Response) -> str:
    headers = response.headers.get_list("set-cookie")
    found = [h for h in headers if h.startswith(f"{SESSION_COOKIE}=")]
    assert len(found) == 1, headers
    return found[0]


def with_cookie(app: Conveyor, value: str) -> None:
    """Be the browser that holds this session cookie."""
    app.client.cookies.delete(SESSION_COOKIE)
    app.client.cookies.set(SESSION_COOKIE, value, domain=app.client.base_url.host)


def me(app: Conveyor, **headers: str) -> httpx.Response:
    return app.client.get("/api/auth/me", headers=headers)


def session_data(app: Conveyor, value: str) -> dict[str, Any]:
    backend = ClientSideSessionBackend(session_config(app.client.app.state.auth))
    return backend.load_data([value.encode()])


def new_token(app: Conveyor, name: str = "script") -> dict[str, Any]:
    response = app.client.post("/api/auth/tokens", json={"name": name}, headers=csrf(app))
    assert response.status_code == 201, response.text
    return dict(response.json())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- sessions


def test_login_sets_a_session_cookie_and_me_answers(start_app: StartApp) -> None:
    app = start(start_app)
    make_user(app, ADMIN, "admin")
    assert me(app).status_code == 401

    response = login(app, " Admin@Example.com ")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "id": response.json()["id"], "email": ADMIN, "name": "admin", "role": "admin",
    }  # fmt: skip
    cookie = session_cookie(response).lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
    assert "secure" not in cookie  # HOST is loopback: plain http on one machine
    assert me(app).json()["email"] == ADMIN


def test_the_cookie_is_secure_outside_loopback(start_app: StartApp) -> None:
    app = start(start_app, HOST="0.0.0.0")
    app.client.base_url = httpx.URL("https://testserver")  # the Secure CSRF cookie comes back
    make_user(app, ADMIN)
    response = login(app, ADMIN)
    assert response.status_code == 200, response.text
    assert "; secure" in session_cookie(response).lower()


def test_the_session_id_changes_at_login(start_app: StartApp) -> None:
    app = start(start_app)
    make_user(app, ADMIN)
    with_cookie(app, "planted-by-someone-else")
    first = logged_in(app, ADMIN)
    assert first != "planted-by-someone-else"
    second = logged_in(app, ADMIN)
    assert first != second
    one, two = session_data(app, first), session_data(app, second)
    assert one["uid"] == two["uid"] and one["sid"] != two["sid"]


def test_logout_and_logout_everywhere(start_app: StartApp) -> None:
    app = start(start_app)
    make_user(app, ADMIN)
    logged_in(app, ADMIN)
    out = app.client.post("/api/auth/logout", headers=csrf(app))
    assert out.status_code == 204, out.text
    assert SESSION_COOKIE not in app.client.cookies
    assert me(app).status_code == 401

    laptop = logged_in(app, ADMIN)
    phone = logged_in(app, ADMIN)  # a second browser's session
    token = new_token(app)["token"]
    everywhere = app.client.post("/api/auth/logout-all", headers=csrf(app))
    assert everywhere.status_code == 204, everywhere.text
    for old in (laptop, phone):
        with_cookie(app, old)
        assert me(app).status_code == 401
    assert me(app, **bearer(token)).status_code == 200  # API tokens are not sessions
    logged_in(app, ADMIN)
    assert me(app).status_code == 200


def test_a_new_password_ends_the_sessions(start_app: StartApp) -> None:
    app = start(start_app)
    make_user(app, ADMIN)
    logged_in(app, ADMIN)
    with app.components.sessions() as session, session.begin():
        user = users.authenticate(session, ADMIN, PASSWORD)
        assert user is not None
        users.set_password(session, user, "another long passphrase")
    assert me(app).status_code == 401


def test_wrong_password_and_unknown_email_answer_alike(start_app: StartApp) -> None:
    app = start(start_app)
    make_user(app, ADMIN)
    wrong = login(app, ADMIN, "not the password at all")
    unknown = login(app, "nobody@example.com", PASSWORD)
    malformed = login(app, "not an email", PASSWORD)
    assert wrong.status_code == unknown.status_code == malformed.status_code == 401
    assert wrong.json() == unknown.json() == malformed.json()
    assert wrong.headers.get_list("set-cookie") == unknown.headers.get_list("set-cookie") == []
    assert me(app).status_code == 401


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.1.1", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("app.example", False)],
)  # fmt: skip
def test_only_a_loopback_host_goes_without_secure_cookies(host: str, loopback: bool) -> None:
    assert auth.is_loopback(host) is loopback


# ------------------------------------------------------------------------- throttling


def test_login_is_throttled_per_address(start_app: StartApp) -> None:
    app = start(start_app, TRUSTED_PROXIES="testclient")
    make_user(app, ADMIN)
    attacker = {"X-Forwarded-For": "203.0.113.7"}
    statuses = [
        login(app, ADMIN, f"guess number {i:04d}", **attacker).status_code for i in range(10)
    ]
    assert statuses == [401] * 10
    refused = login(app, ADMIN, "guess number 0010", **attacker)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert login(app, ADMIN, **attacker).status_code == 429  # even the right one, from there
    owner = login(app, ADMIN, **{"X-Forwarded-For": "198.51.100.2"})
    assert owner.status_code == 200, owner.text


def test_login_is_throttled_per_account_across_addresses(start_app: StartApp) -> None:
    app = start(start_app, TRUSTED_PROXIES="testclient", LOGIN_ATTEMPTS_PER_MINUTE="2")
    make_user(app, ADMIN)
    cap = 2 * auth.ACCOUNT_FACTOR
    statuses = [
        login(
            app, ADMIN, "wrong password!!", **{"X-Forwarded-For": f"203.0.113.{i // 2}"}
        ).status_code
        for i in range(cap)
    ]
    assert statuses == [401] * cap
    fresh = {"X-Forwarded-For": "198.51.100.9"}
    assert login(app, ADMIN, **fresh).status_code == 429  # the account's cap, from anywhere
    assert login(app, "other@example.com", "whatever it is", **fresh).status_code == 401


def test_forwarded_for_is_ignored_without_a_trusted_proxy(start_app: StartApp) -> None:
    app = start(start_app, LOGIN_ATTEMPTS_PER_MINUTE="3")
    make_user(app, ADMIN)
    for i in range(3):
        spoofed = {"X-Forwarded-For": f"203.0.113.{i}"}
        assert login(app, ADMIN, "wrong password!!", **spoofed).status_code == 401
    assert login(app, ADMIN, **{"X-Forwarded-For": "198.51.100.1"}).status_code == 429


def test_a_throttle_without_a_global_cap() -> None:
    clock = [0.0]
    throttle = pairing.Throttle(per_key=2, total=None, window=60, clock=lambda: clock[0])
    for key in range(50):
        assert [throttle.attempt(str(key)) for _ in range(2)] == [None, None]
    assert throttle.attempt("0") == 60
    clock[0] = 61.0
    assert throttle.attempt("0") is None


# ------------------------------------------------------------------------- API tokens


def test_api_tokens_create_list_revoke(start_app: StartApp) -> None:
    app = start(start_app)
    make_user(app, MEMBER)
    make_user(app, "other@example.com")
    logged_in(app, MEMBER)
    created = new_token(app, "nightly export")
    token = created["token"]
    assert token.startswith("cvu_") and created["prefix"] == token[:8]
    listed = app.client.get("/api/auth/tokens").json()
    assert [t["id"] for t in listed] == [created["id"]]
    assert "token" not in listed[0] and listed[0]["revoked_at"] is None

    app.client.cookies.clear()  # a script: the token alone, no cookie, no CSRF header
    assert me(app, **bearer(token)).json()["email"] == MEMBER
    scripted = app.client.post("/api/auth/tokens", json={"name": "2nd"}, headers=bearer(token))
    assert scripted.status_code == 201, scripted.text
    assert me(app, **bearer(token + "x")).status_code == 401
    assert me(app, **bearer("")).status_code == 401

    logged_in(app, "other@example.com")
    theirs = app.client.delete(f"/api/auth/tokens/{created['id']}", headers=csrf(app))
    assert theirs.status_code == 404  # not theirs to revoke
    assert me(app, **bearer(token)).status_code == 200

    revoked = app.client.delete(f"/api/auth/tokens/{created['id']}", headers=bearer(token))
    assert revoked.status_code == 204, revoked.text
    assert me(app, **bearer(token)).status_code == 401
    logged_in(app, MEMBER)
    rows = {t["id"]: t for t in app.client.get("/api/auth/tokens").json()}
    assert rows[created["id"]]["revoked_at"] is not None and len(rows) == 2


def test_a_worker_token_is_no_user_token(start_app: StartApp) -> None:
    app = start(start_app, WORKER_TOKEN_KEY="k" * 32)
    make_user(app, MEMBER)
    logged_in(app, MEMBER)
    code = app.client.post("/api/pairings", json={}, headers=csrf(app)).json()["code"]
    app.client.cookies.clear()
    paired = app.client.post("/api/workers/pair", json={"code": code})  # no CSRF header
    assert paired.status_code == 200, paired.text
    worker_token = paired.json()["token"]
    assert worker_token.startswith("cvw_")
    assert me(app, **bearer(worker_token)).status_code == 401
    listing = app.client.get("/api/auth/tokens", headers=bearer(worker_token))
    assert listing.status_code == 401
    refreshed = app.client.post("/api/workers/refresh", json={}, headers=bearer(worker_token))
    assert refreshed.status_code == 200, refreshed.text


# ---------------------------------------------------------------- sign-up and invites


def test_signup_is_closed_by_default(start_app: StartApp) -> None:
    app = start(start_app)
    body = {"email": "new@example.com", "name": "New", "password": PASSWORD}
    closed = app.client.post("/api/auth/signup", json=body, headers=csrf(app))
    assert closed.status_code == 403 and "invitation" in closed.json()["detail"]
    assert me(app).status_code == 401


def test_signup_when_open(start_app: StartApp) -> None:
    app = start(start_app, ALLOW_SIGNUP="true")
    body = {"email": "new@example.com", "name": "New", "password": PASSWORD}
    made = app.client.post("/api/auth/signup", json=body, headers=csrf(app))
    assert made.status_code == 201, made.text
    assert made.json()["role"] == "member" and made.json()["name"] == "New"
    assert me(app).json()["email"] == "new@example.com"  # logged in at once
    again = app.client.post("/api/auth/signup", json=body, headers=csrf(app))
    assert again.status_code == 409
    weak = {**body, "email": "weak@example.com", "password": "short"}
    assert app.client.post("/api/auth/signup", json=weak, headers=csrf(app)).status_code == 422


def invite(app: Conveyor, email: str = "carol@example.com", role: str = "member") -> Any:
    body = {"email": email, "role": role}
    return app.client.post("/api/users/invites", json=body, headers=csrf(app))


def redeem(app: Conveyor, token: str, **headers: str) -> httpx.Response:
    body = {"token": token, "name": "Carol", "password": PASSWORD}
    return app.client.post("/api/auth/invites/redeem", json=body, headers={**csrf(app), **headers})


def test_invitations(start_app: StartApp) -> None:
    app = start(start_app)
    make_user(app, ADMIN, "admin")
    make_user(app, MEMBER)
    assert invite(app).status_code == 401  # anonymous
    logged_in(app, MEMBER)
    assert invite(app).status_code == 403
    logged_in(app, ADMIN)
    made = invite(app, role="admin")
    assert made.status_code == 201, made.text
    link = made.json()["link"]
    assert link.startswith("/invite#cvi_") and made.json()["role"] == "admin"
    token = link.split("#", 1)[1]
    assert invite(app, "carol@example.com", "owner").status_code == 422
    assert invite(app, ADMIN).status_code == 409

    app.client.cookies.clear()
    assert redeem(app, "cvi_unknown").status_code == 404
    joined = redeem(app, token)
    assert joined.status_code == 201, joined.text
    assert me(app).json() == joined.json()
    assert joined.json()["email"] == "carol@example.com" and joined.json()["role"] == "admin"
    assert redeem(app, token).status_code == 409

    logged_in(app, ADMIN)
    late = invite(app, "dave@example.com").json()
    with app.components.sessions() as session, session.begin():
        session.execute(update(Invite).where(Invite.id == late["id"]).values(expires_at=1.0))
    assert redeem(app, late["link"].split("#", 1)[1]).status_code == 410


def test_invitation_redemption_is_throttled(start_app: StartApp) -> None:
    app = start(start_app, LOGIN_ATTEMPTS_PER_MINUTE="3")
    statuses = [redeem(app, f"cvi_guess{i}").status_code for i in range(4)]
    assert statuses == [404, 404, 404, 429]


def test_admins_list_and_disable_users(start_app: StartApp) -> None:
    app = start(start_app)
    admin_id = make_user(app, ADMIN, "admin")
    member_id = make_user(app, MEMBER)
    member_session = logged_in(app, MEMBER)
    member_token = new_token(app)["token"]
    assert app.client.get("/api/users").status_code == 403

    logged_in(app, ADMIN)
    listed = app.client.get("/api/users").json()
    assert {u["email"] for u in listed} == {ADMIN, MEMBER}
    disabled = app.client.delete(f"/api/users/{member_id}", headers=csrf(app))
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["disabled_at"] is not None
    assert app.client.delete(f"/api/users/{admin_id}", headers=csrf(app)).status_code == 409
    assert app.client.delete("/api/users/nobody", headers=csrf(app)).status_code == 404

    assert me(app, **bearer(member_token)).status_code == 401
    with_cookie(app, member_session)
    assert me(app).status_code == 401
    assert login(app, MEMBER).status_code == 401


def test_every_user_and_admin_route_refuses_anonymous_callers(start_app: StartApp) -> None:
    """The account routes, from the access table: anonymous 401, a member on admin's 403."""
    app = start(start_app)
    make_user(app, MEMBER)
    guarded = [(m, p, r) for (m, p), r in access.RULES.items() if r in (access.USER, access.ADMIN)]
    assert len(guarded) >= 8

    def call(method: str, path: str) -> int:
        url = path.replace("{token_id:str}", "x").replace("{user_id:str}", "x")
        body: dict[str, str] | None = {} if method == "POST" else None
        return app.client.request(method, url, json=body, headers=csrf(app)).status_code

    assert {(m, p): call(m, p) for m, p, _ in guarded} == {(m, p): 401 for m, p, _ in guarded}
    logged_in(app, MEMBER)
    admin_only = {(m, p): call(m, p) for m, p, r in guarded if r == access.ADMIN}
    assert set(admin_only.values()) == {403}


# ------------------------------------------------------------------------------- CSRF


def test_a_cookie_authenticated_post_needs_the_csrf_header(start_app: StartApp) -> None:
    app = start(start_app)
    make_user(app, MEMBER)
    logged_in(app, MEMBER)
    body = {"name": "from a form"}
    bare = app.client.post("/api/auth/tokens", json=body)
    assert bare.status_code == 403
    forged = app.client.post("/api/auth/tokens", json=body, headers={CSRF_HEADER: "f" * 128})
    assert forged.status_code == 403
    assert app.client.post("/api/auth/tokens", json=body, headers=csrf(app)).status_code == 201
    assert app.client.post("/api/auth/logout-all").status_code == 403
    assert me(app).status_code == 200


def test_a_cross_site_form_post_is_refused_unread(start_app: StartApp) -> None:
    """A form on another site posting a CSV with the victim's cookie: refused, not stored."""
    app = start(start_app)
    make_user(app, MEMBER)
    logged_in(app, MEMBER)
    files = {"file": ("people.csv", b"name\nalice\n", "text/csv")}
    posted = app.client.post("/api/jobs/csv", files=files, data={"_csrf_token": "x"})
    assert posted.status_code == 403
    assert app.uploads() == []
    assert (
        app.client.post("/api/auth/login", json={"email": MEMBER, "password": PASSWORD}).status_code
        == 403
    )


def test_accounts_off_changes_nothing(start_app: StartApp) -> None:
    """The default: everyone is the local admin, no CSRF header asked, no session cookie."""
    app = start_app(embedded=False)
    local = me(app)
    assert local.status_code == 200
    assert local.json() == {"id": None, "email": "", "name": "Local admin", "role": "admin"}
    refused = app.client.post("/api/auth/login", json={"email": ADMIN, "password": PASSWORD})
    assert refused.status_code == 409 and "ACCOUNTS=off" in refused.json()["detail"]
    assert app.client.get("/api/auth/tokens").status_code == 409
    assert app.client.post("/api/auth/logout").status_code == 204
    assert app.client.get("/api/jobs").status_code == 200
    assert not app.client.cookies


# ------------------------------------------------------------------------------- logs


def test_no_password_session_or_token_reaches_the_logs(
    start_app: StartApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = start(start_app, LOGIN_ATTEMPTS_PER_MINUTE="4")
    make_user(app, ADMIN, "admin")
    wrong = "hunter2 but longer"
    assert login(app, ADMIN, wrong).status_code == 401
    assert login(app, "typo@example.con", PASSWORD).status_code == 401
    session = logged_in(app, ADMIN)
    token = new_token(app)["token"]
    link = invite(app).json()["link"]
    invite_token = link.split("#", 1)[1]
    app.client.cookies.clear()
    assert redeem(app, invite_token).status_code == 201
    assert me(app, **bearer(token)).status_code == 200
    assert me(app, **bearer(token + "x")).status_code == 401
    assert login(app, ADMIN, wrong).status_code == 429  # the 5th attempt from this address

    secrets = {PASSWORD, wrong, session, token, token.removeprefix("cvu_"), invite_token,
               invite_token.removeprefix("cvi_"), "typo@example.con"}  # fmt: skip
    logged = [r.getMessage() + repr(r.__dict__) for r in caplog.records]
    assert len(logged) >= 5  # logins, refusals, the token, the invite, the throttle
    leaks = [(s, line) for line in logged for s in secrets if s in line]
    assert leaks == []
