"""Accounts on SQLite and on real PostgreSQL: users, API tokens, invites, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from libs.common import accounts, db, users
from libs.common.accounts import AccountError
from libs.common.models import ApiToken, Base, Invite, Pairing, User
from libs.common.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"
T0 = 1_000_000.0


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/users.db"
    pg_url = request.getfixturevalue("pg_url")
    assert isinstance(pg_url, str)
    return pg_url


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    engine = db.make_engine(url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return db.sessions(engine)


def make_user(
    sessions: sessionmaker[Session], email: str = "alice@example.com", role: str = "member"
) -> User:
    with sessions() as s, s.begin():
        return users.create_user(s, email, "", PASSWORD, role, at=T0)


def test_the_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


# ------------------------------------------------------------------------------ users


def test_create_user_and_duplicates(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        user = users.create_user(s, " Alice@Example.com ", "Alice", PASSWORD, "admin", at=T0)
    assert (user.email, user.name, user.role, user.session_epoch) == (
        "alice@example.com", "Alice", "admin", 0,
    )  # fmt: skip
    assert (user.created_at, user.password_changed_at, user.disabled_at) == (T0, T0, None)
    assert len(user.id) == 32 and PASSWORD not in user.password_hash
    for email in ("alice@example.com", "ALICE@example.COM"):
        with pytest.raises(AccountError) as caught, sessions() as s, s.begin():
            users.create_user(s, email, "Other", PASSWORD)
        assert caught.value.kind == accounts.DUPLICATE
    for email, password, role in [
        ("bob", PASSWORD, "member"),
        ("bob@example.com", "short", "member"),
        ("bob@example.com", PASSWORD, "owner"),
    ]:
        with pytest.raises(AccountError) as caught, sessions() as s, s.begin():
            users.create_user(s, email, "Bob", password, role)
        assert caught.value.kind == accounts.INVALID
    with sessions() as s:
        assert [u.email for u in users.list_users(s)] == ["alice@example.com"]


def test_authenticate(sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    user = make_user(sessions)
    verified: list[str] = []
    real = accounts.verify_password

    def spy(stored: str, password: str) -> bool:
        verified.append(stored)
        return real(stored, password)

    monkeypatch.setattr(accounts, "verify_password", spy)
    with sessions() as s, s.begin():
        found = users.authenticate(s, "  ALICE@example.com", PASSWORD)
        assert found is not None and found.id == user.id
        assert users.authenticate(s, "alice@example.com", PASSWORD + "x") is None
        assert verified == [user.password_hash, user.password_hash]
        for unknown in ("nobody@example.com", "not an email"):
            assert users.authenticate(s, unknown, PASSWORD) is None
        # the same work as a wrong password: one verification, against the dummy hash
        assert verified[2:] == [accounts.dummy_hash()] * 2
    with sessions() as s, s.begin():
        users.disable_user(s, s.get_one(User, user.id), at=T0 + 1)
    with sessions() as s, s.begin():
        assert users.authenticate(s, "alice@example.com", PASSWORD) is None
        assert users.authenticate(s, "alice@example.com", "wrong password!!") is None


def test_set_password_and_log_out_everywhere(sessions: sessionmaker[Session]) -> None:
    user = make_user(sessions)
    new = "a quite different passphrase"
    with sessions() as s, s.begin(), pytest.raises(AccountError):
        users.set_password(s, s.get_one(User, user.id), "short")
    with sessions() as s, s.begin():
        users.set_password(s, s.get_one(User, user.id), new, at=T0 + 5)
    with sessions() as s, s.begin():
        assert users.authenticate(s, "alice@example.com", PASSWORD) is None
        found = users.authenticate(s, "alice@example.com", new)
        assert found is not None
        assert (found.password_changed_at, found.session_epoch) == (T0 + 5, 1)
    # Two "log out everywhere" from copies read at once both count: the increment is SQL.
    with sessions() as a, sessions() as b:
        first, second = a.get_one(User, user.id), b.get_one(User, user.id)
        assert first.session_epoch == second.session_epoch == 1
        b.commit()
        users.bump_session_epoch(first)
        a.commit()
        users.bump_session_epoch(second)
        b.commit()
        assert second.session_epoch == 3


def test_deleting_a_user_keeps_what_they_owned(sessions: sessionmaker[Session]) -> None:
    user = make_user(sessions)
    with sessions() as s, s.begin():
        s.add(Pairing(id="p1", code_hash="0" * 64, pool="remote-1", expires_at=T0,
                      owner_id=user.id))  # fmt: skip
        users.create_api_token(s, s.get_one(User, user.id), "ci")
    with sessions() as s, s.begin():
        s.delete(s.get_one(User, user.id))
    with sessions() as s:
        assert s.get_one(Pairing, "p1").owner_id is None  # ON DELETE SET NULL
        assert s.scalars(select(ApiToken)).all() == []  # ON DELETE CASCADE


# -------------------------------------------------------------------------- API tokens


def test_api_tokens(sessions: sessionmaker[Session], engine: Engine) -> None:
    alice, bob = make_user(sessions), make_user(sessions, "bob@example.com")
    with sessions() as s, s.begin():
        row, token = users.create_api_token(s, s.get_one(User, alice.id), " CI  job ", at=T0)
    assert token.startswith("cvu_") and (row.name, row.prefix) == ("CI job", token[:8])
    with engine.connect() as connection:  # only the hash is stored
        stored = [str(v) for r in connection.execute(select(ApiToken.__table__)) for v in r]
    assert token not in stored and accounts.token_hash(token) in stored
    with sessions() as s, s.begin():
        assert [t.id for t in users.api_tokens(s, s.get_one(User, alice.id))] == [row.id]
        found = users.user_for_api_token(s, token, at=T0 + 10)
        assert found is not None and found.id == alice.id
        for wrong in ("", token[:-1] + ("A" if token[-1] != "A" else "B"), token[4:]):
            assert users.user_for_api_token(s, wrong, at=T0 + 10) is None
    seen = []
    for at in (T0 + 20, T0 + 69, T0 + 70):  # last_used_at moves at most once a minute
        with sessions() as s, s.begin():
            assert users.user_for_api_token(s, token, at=at) is not None
        with sessions() as s:
            seen.append(s.get_one(ApiToken, row.id).last_used_at)
    assert seen == [T0 + 10, T0 + 10, T0 + 70]
    with sessions() as s, s.begin():
        assert not users.revoke_api_token(s, s.get_one(User, bob.id), row.id)  # not Bob's
        assert users.user_for_api_token(s, token) is not None
        assert not users.revoke_api_token(s, s.get_one(User, alice.id), "no-such-id")
        assert users.revoke_api_token(s, s.get_one(User, alice.id), row.id, at=T0 + 80)
        assert users.revoke_api_token(s, s.get_one(User, alice.id), row.id, at=T0 + 90)
    with sessions() as s, s.begin():
        assert s.get_one(ApiToken, row.id).revoked_at == T0 + 80
        assert users.user_for_api_token(s, token) is None
        _, second = users.create_api_token(s, s.get_one(User, alice.id), "laptop")
        users.disable_user(s, s.get_one(User, alice.id))
    with sessions() as s, s.begin():
        assert users.user_for_api_token(s, second) is None
        with pytest.raises(AccountError) as caught:
            users.create_api_token(s, s.get_one(User, alice.id), "more")
        assert caught.value.kind == accounts.DISABLED


# ------------------------------------------------------------------------------ invites


def invite(sessions: sessionmaker[Session], email: str = "carol@example.com") -> str:
    admin = make_user(sessions, "admin@example.com", "admin")
    with sessions() as s, s.begin():
        row, token = users.create_invite(s, email, "member", s.get_one(User, admin.id), at=T0)
    assert (row.email, row.created_by, row.expires_at) == (
        email, admin.id, T0 + accounts.INVITE_TTL_SECONDS,
    )  # fmt: skip
    assert token.startswith("cvi_") and row.token_hash == accounts.token_hash(token)
    return token


def redeem(sessions: sessionmaker[Session], token: str, password: str = PASSWORD,
           at: float = T0 + 60) -> User:  # fmt: skip
    with sessions() as s, s.begin():
        return users.redeem_invite(s, token, "Carol", password, at=at)


def kind_of(call: object) -> str:
    assert callable(call)
    with pytest.raises(AccountError) as caught:
        call()
    return caught.value.kind


def test_an_invite_makes_one_account(sessions: sessionmaker[Session]) -> None:
    token = invite(sessions)
    assert kind_of(lambda: redeem(sessions, token, "short")) == accounts.INVALID
    user = redeem(sessions, token)  # the weak password did not use the invitation up
    assert (user.email, user.name, user.role) == ("carol@example.com", "Carol", "member")
    assert kind_of(lambda: redeem(sessions, token)) == accounts.INVITE_USED
    assert kind_of(lambda: redeem(sessions, "cvi_" + "x" * 43)) == accounts.INVITE_UNKNOWN
    with sessions() as s, s.begin():
        assert users.authenticate(s, "carol@example.com", PASSWORD) is not None
        assert kind_of(
            lambda: users.create_invite(s, "Carol@example.com", "member", None)
        ) == accounts.DUPLICATE  # fmt: skip


def test_an_invite_expires_after_a_week(sessions: sessionmaker[Session]) -> None:
    token = invite(sessions)
    expiry = T0 + accounts.INVITE_TTL_SECONDS
    assert kind_of(lambda: redeem(sessions, token, at=expiry)) == accounts.INVITE_EXPIRED
    assert redeem(sessions, token, at=expiry - 1).email == "carol@example.com"


def test_two_racing_redemptions_make_one_account(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both read the invitation as unused before either claims it: the claim decides."""
    token = invite(sessions)
    both_read = threading.Barrier(2, timeout=30)
    claim = users._claim_invite

    def claim_together(session: Session, row: Invite, at: float) -> None:
        both_read.wait()
        claim(session, row, at)

    monkeypatch.setattr(users, "_claim_invite", claim_together)

    def attempt(_: int) -> str:
        try:
            return redeem(sessions, token).email
        except AccountError as exc:
            return exc.kind

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(attempt, range(2)))
    assert outcomes == sorted(["carol@example.com", accounts.INVITE_USED])
    with sessions() as s:
        assert [u.email for u in users.list_users(s)] == ["admin@example.com", "carol@example.com"]


# ----------------------------------------------------------------------------- the CLI


def cli(url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    ours = {f.metadata["env"] for f in fields(Settings)}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(DATABASE_URL=url, LOG_LEVEL="DEBUG")
    return subprocess.run(
        [sys.executable, "-m", "services.web", "users", *args],
        cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def test_the_cli_creates_and_lists_users(url: str, engine: Engine) -> None:
    made = cli(url, "create", "--admin", "Root@Example.com", "--name", "Root", stdin=PASSWORD)
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines() == ["created admin root@example.com (Root)"]
    member = cli(url, "create", "member@example.com", stdin=PASSWORD + "\nignored\n")
    assert member.returncode == 0, member.stderr
    assert member.stdout.splitlines() == ["created member member@example.com (member)"]
    with db.sessions(engine)() as s, s.begin():
        assert users.authenticate(s, "root@example.com", PASSWORD) is not None
        assert users.authenticate(s, "member@example.com", PASSWORD) is not None
    refused = [
        cli(url, "create", "root@example.com", stdin=PASSWORD),  # taken
        cli(url, "create", "new@example.com", stdin="too short\n"),
        cli(url, "create", "new@example.com"),  # nothing on stdin
        cli(url, "create", "not-an-email", stdin=PASSWORD),
    ]
    for result in refused:
        assert result.returncode == 2
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("conveyor: users: ")
    listed = cli(url, "list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("root@example.com", "admin", "active"),
        ("member@example.com", "member", "active"),
    ]
    for result in (made, member, *refused, listed):
        assert PASSWORD not in result.stdout + result.stderr
