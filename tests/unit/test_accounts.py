"""Accounts, the pure parts (libs/common/accounts.py), and the rehash on login on SQLite."""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy.orm import Session, sessionmaker

from libs.common import accounts, db, users
from libs.common.accounts import AccountError
from libs.common.models import User
from services.web import users_cli

PASSWORD = "correct horse battery staple"
#: The same algorithm with cheaper parameters: what an older release might have stored.
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


# ------------------------------------------------------------------------------ passwords


def test_a_hash_is_argon2id_and_verifies_only_its_password() -> None:
    stored = accounts.hash_password(PASSWORD)
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    assert accounts.verify_password(stored, PASSWORD)
    assert not accounts.verify_password(stored, PASSWORD + " ")
    assert not accounts.verify_password(stored, "")
    assert accounts.hash_password(PASSWORD) != stored  # salted


@pytest.mark.parametrize(
    "stored",
    ["", "not a hash", "$argon2id$v=19$m=65536,t=3,p=4$bad$bad", "$2b$12$" + "x" * 53],
)
def test_verifying_against_a_malformed_hash_is_false_not_an_error(stored: str) -> None:
    assert accounts.verify_password(stored, PASSWORD) is False
    assert accounts.needs_rehash(stored) is True


def test_only_hashes_with_other_parameters_need_a_rehash() -> None:
    assert not accounts.needs_rehash(accounts.hash_password(PASSWORD))
    old = CHEAP.hash(PASSWORD)
    assert accounts.verify_password(old, PASSWORD)  # still a valid password meanwhile
    assert accounts.needs_rehash(old)


def test_an_unknown_email_costs_one_verification_against_a_dummy_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dummy = accounts.dummy_hash()
    assert dummy is accounts.dummy_hash()  # made once per process
    assert dummy.startswith("$argon2id$") and not accounts.needs_rehash(dummy)
    seen: list[str] = []
    real = accounts.verify_password

    def spy(stored: str, password: str) -> bool:
        seen.append(stored)
        return real(stored, password)

    monkeypatch.setattr(accounts, "verify_password", spy)
    assert accounts.verify_nothing(PASSWORD) is False
    assert seen == [dummy]


@pytest.mark.parametrize(
    ("password", "ok"),
    [
        ("x" * 11, False),
        ("x" * 12, True),
        ("é" * 12, True),  # characters, not bytes
        ("x" * 1024, True),
        ("x" * 1025, False),
        ("", False),
    ],
)
def test_password_policy(password: str, ok: bool) -> None:
    if ok:
        accounts.check_password(password)
    else:
        with pytest.raises(AccountError) as caught:
            accounts.check_password(password)
        assert caught.value.kind == accounts.INVALID
        assert str(caught.value) and (not password or password not in str(caught.value))


# -------------------------------------------------------------------------- who people are


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice@example.com", "alice@example.com"),
        ("  Alice.Smith+tag@Example.CO.uk \n", "alice.smith+tag@example.co.uk"),
        ("a@b.io", "a@b.io"),
    ],
)
def test_emails_are_stored_stripped_and_lower_case(raw: str, expected: str) -> None:
    assert accounts.normalise_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "alice",
        "alice@",
        "@example.org",
        "alice@example",
        "alice@@example.org",
        "alice smith@example.org",
        "alice@example..com",
        "alice@.example.org",
        "alice\x00@example.org",
        "a" * 65 + "@example.org",
        "a@" + "b" * 250 + ".com",
    ],
)
def test_implausible_emails_are_refused_without_quoting_them(raw: str) -> None:
    with pytest.raises(AccountError) as caught:
        accounts.normalise_email(raw)
    assert caught.value.kind == accounts.INVALID
    assert raw.strip() == "" or raw.strip().lower() not in str(caught.value)


def test_names_default_to_the_email_and_are_bounded() -> None:
    assert accounts.normalise_name("  Alice   Smith ", "a@example.com") == "Alice Smith"
    assert accounts.normalise_name("", "alice@example.com") == "alice"
    with pytest.raises(AccountError):
        accounts.normalise_name("x" * 129, "a@example.com")


def test_roles() -> None:
    assert (accounts.ADMIN, accounts.MEMBER) == ("admin", "member")
    accounts.check_role("admin")
    with pytest.raises(AccountError):
        accounts.check_role("root")


# --------------------------------------------------------------------------------- tokens


@pytest.mark.parametrize(
    ("make", "prefix"), [(accounts.new_api_token, "cvu_"), (accounts.new_invite_token, "cvi_")]
)
def test_tokens_are_256_random_bits_and_stored_as_sha256(make: object, prefix: str) -> None:
    assert callable(make)
    tokens = {make() for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert re.fullmatch(re.escape(prefix) + r"[A-Za-z0-9_-]{43}", token)  # 32 bytes
        digest = accounts.token_hash(token)
        assert digest == hashlib.sha256(token.encode()).hexdigest()
        assert re.fullmatch(r"[0-9a-f]{64}", digest)
        assert accounts.token_prefix(token) == token[:8]
        assert accounts.token_prefix(token).startswith(prefix)


def test_invites_live_a_week() -> None:
    assert accounts.INVITE_TTL_SECONDS == 7 * 24 * 3600


# ---------------------------------------------------------------- the rehash, on SQLite


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = db.make_engine(f"sqlite:///{tmp_path}/accounts.db")
    db.upgrade(engine)
    yield db.sessions(engine)
    engine.dispose()


def test_login_upgrades_a_hash_made_with_older_parameters(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as s, s.begin():
        user = users.create_user(s, "alice@example.com", "Alice", PASSWORD, at=100.0)
        user.password_hash = CHEAP.hash(PASSWORD)
    with sessions() as s, s.begin():
        assert users.authenticate(s, "alice@example.com", "wrong password!") is None
    with sessions() as s:
        assert s.get_one(User, user.id).password_hash.startswith("$argon2id$v=19$m=8,")
    with sessions() as s, s.begin():
        assert users.authenticate(s, "alice@example.com", PASSWORD) is not None
    with sessions() as s:
        upgraded = s.get_one(User, user.id)
    assert not accounts.needs_rehash(upgraded.password_hash)
    assert accounts.verify_password(upgraded.password_hash, PASSWORD)
    assert upgraded.password_changed_at == 100.0  # the same password, only hashed anew


# ----------------------------------------------------------- the CLI's password reading


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_cli_reads_the_first_line_of_a_pipe_as_it_is() -> None:
    pipe = io.StringIO("  spaces kept, newline not \r\nsecond line\n")
    assert users_cli.read_password(pipe) == "  spaces kept, newline not "
    assert users_cli.read_password(io.StringIO("")) == ""


@pytest.mark.parametrize(
    ("typed", "expected"),
    [([PASSWORD, PASSWORD], PASSWORD), ([PASSWORD, PASSWORD + "!"], None), ([EOFError()], None)],
)
def test_the_cli_asks_a_terminal_twice(
    monkeypatch: pytest.MonkeyPatch, typed: list[object], expected: str | None
) -> None:
    answers = iter(typed)

    def getpass(prompt: str = "") -> str:
        answer = next(answers)
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, str)
        return answer

    monkeypatch.setattr(users_cli.getpass, "getpass", getpass)
    if expected is None:
        with pytest.raises(AccountError):
            users_cli.read_password(_Terminal())
    else:
        assert users_cli.read_password(_Terminal()) == expected
