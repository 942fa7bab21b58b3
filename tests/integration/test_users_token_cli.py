"""`python -m services.web users token EMAIL`: an API token for scripts, shown once."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select

from libs.common import accounts, db, users
from libs.common.models import ApiToken, User
from tests.integration.test_users import PASSWORD, cli, engine, url

pytestmark = pytest.mark.integration

__all__ = ["engine", "url"]  # the fixtures, on SQLite and on PostgreSQL


def test_the_cli_makes_an_api_token_shown_once(url: str, engine: Engine) -> None:
    assert cli(url, "create", "--admin", "root@example.com", stdin=PASSWORD).returncode == 0
    made = cli(url, "token", "Root@Example.com", "--name", "nightly  export")
    assert made.returncode == 0, made.stderr
    (token,) = made.stdout.splitlines()  # the token alone on stdout
    assert token.startswith(accounts.API_TOKEN_PREFIX)
    # stderr: the logs (LOG_LEVEL=DEBUG) and one line for the operator; no token in either
    (note,) = [line for line in made.stderr.splitlines() if line.startswith("conveyor: users:")]
    assert "shown once" in note and accounts.token_prefix(token) in note
    assert token not in made.stderr and token[4:] not in made.stderr
    default = cli(url, "token", "root@example.com")
    assert default.returncode == 0, default.stderr
    with db.sessions(engine)() as s, s.begin():
        user = users.user_for_api_token(s, token)
        assert user is not None and user.email == "root@example.com"
        other = users.user_for_api_token(s, default.stdout.strip())
        assert other is not None and other.id == user.id
        rows = s.scalars(select(ApiToken).order_by(ApiToken.created_at)).all()
        assert [r.name for r in rows] == ["nightly export", "command line"]
        assert all(token not in r.token_hash for r in rows)
        users.disable_user(s, s.get_one(User, user.id))

    refused = [
        cli(url, "token", "nobody@example.com"),  # no such account
        cli(url, "token", "root@example.com"),  # disabled
        cli(url, "token", "not-an-email"),
        cli(url, "token", "root@example.com", "--name", " "),
    ]
    for result in refused:
        assert result.returncode == 2, result.stderr
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("conveyor: users: ")
    assert "no account" in refused[0].stderr and "disabled" in refused[1].stderr
