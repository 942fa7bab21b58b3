"""Unit tests for settings loading (libs/common/settings.py): always from an explicit dict."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from libs.common import settings
from libs.common.settings import Settings, SettingsError, check_web, load

ENV_NAMES = [f.metadata["env"] for f in fields(Settings)]


def test_defaults_when_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load({})
    assert s.broker_url is None
    assert s.embedded
    assert s.effective_broker_url == "memory://"
    assert s.database_url == "sqlite:///var/conveyor.db"
    assert s.storage_url == f"file://{tmp_path.resolve() / 'var' / 'storage'}"
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert (s.queue_prefix, s.pool, s.concurrency) == ("conveyor", "shared", 1)
    assert (s.chunk_rows, s.chunk_max_bytes) == (5000, 8 << 20)
    assert s.max_upload_bytes == 2 << 30
    assert (s.max_attempts, s.retry_base_seconds, s.retry_max_seconds) == (5, 1.0, 300.0)
    assert (s.delivery_limit, s.shutdown_grace_seconds) == (5, 30.0)
    assert s.max_row_errors_per_task == 1000
    assert s.auto_migrate is True
    assert s.log_level == "INFO"


def test_load_ignores_unrelated_variables_and_blank_values() -> None:
    s = load({"PATH": "/bin", "PORT": "   ", "LOG_LEVEL": ""})
    assert s.port == 8000
    assert s.log_level == "INFO"


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "0"),
        ("PORT", "-80"),
        ("PORT", "80.5"),
        ("WORKER_CONCURRENCY", "0"),
        ("CHUNK_ROWS", "many"),
        ("MAX_ATTEMPTS", "-1"),
        ("RETRY_BASE_SECONDS", "-0.5"),
        ("RETRY_MAX_SECONDS", "soon"),
        ("SHUTDOWN_GRACE_SECONDS", "-1"),
        ("BROKER_URL", "redis://x"),
        ("BROKER_URL", "localhost:5672"),
        ("DATABASE_URL", "mysql://x"),
        ("STORAGE_URL", "ftp://x"),
        ("STORAGE_URL", "s3://"),
        ("AUTO_MIGRATE", "maybe"),
        ("LOG_LEVEL", "loud"),
        ("QUEUE_PREFIX", "a b"),
        ("QUEUE_PREFIX", "a.b"),
        ("WORKER_POOL", "x/y"),
    ],
)
def test_bad_value_names_the_variable(env: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load({env: value})
    message = str(caught.value)
    assert message.startswith(f"{env}: ")
    assert repr(value) in message
    assert "\n" not in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("postgres://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgresql://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///var/x.db", "sqlite:///var/x.db"),
        ("sqlite://", "sqlite://"),
    ],
)
def test_database_url(raw: str, expected: str) -> None:
    assert load({"DATABASE_URL": raw}).database_url == expected


@pytest.mark.parametrize(
    "raw", ["amqp://u:p@h/vh", "amqps://h", "pyamqp://h//", "sqs://", "memory://"]
)
def test_broker_url_accepted_and_not_embedded(raw: str) -> None:
    s = load({"BROKER_URL": raw})
    assert s.broker_url == raw
    assert not s.embedded
    assert s.effective_broker_url == raw


def test_storage_url_plain_path_becomes_absolute_file_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load({"STORAGE_URL": "data/store"}).storage_url == (
        f"file://{tmp_path.resolve() / 'data' / 'store'}"
    )
    absolute = tmp_path / "abs"
    assert load({"STORAGE_URL": str(absolute)}).storage_url == f"file://{absolute.resolve()}"
    assert load({"STORAGE_URL": f"file://{absolute}"}).storage_url == (
        f"file://{absolute.resolve()}"
    )
    assert load({"STORAGE_URL": "file://rel/dir"}).storage_url == (
        f"file://{tmp_path.resolve() / 'rel' / 'dir'}"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("s3://bucket/prefix/", "s3://bucket/prefix"), ("s3://bucket", "s3://bucket")],
)
def test_storage_url_s3(raw: str, expected: str) -> None:
    assert load({"STORAGE_URL": raw}).storage_url == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        (" YES ", True),
        ("on", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_auto_migrate_bool(raw: str, expected: bool) -> None:
    assert load({"AUTO_MIGRATE": raw}).auto_migrate is expected


@pytest.mark.parametrize(("raw", "expected"), [("debug", "DEBUG"), (" Warning ", "WARNING")])
def test_log_level_is_normalised(raw: str, expected: str) -> None:
    assert load({"LOG_LEVEL": raw}).log_level == expected


def test_values_are_parsed() -> None:
    s = load(
        {
            "PORT": "9000",
            "HOST": "0.0.0.0",
            "CHUNK_ROWS": "10_000",
            "RETRY_BASE_SECONDS": "0",
            "RETRY_MAX_SECONDS": "2.5",
            "QUEUE_PREFIX": "my-app_1",
            "WORKER_POOL": "big",
            "WORKER_CONCURRENCY": "4",
        }
    )
    assert (s.port, s.host, s.chunk_rows) == (9000, "0.0.0.0", 10_000)
    assert (s.retry_base_seconds, s.retry_max_seconds) == (0.0, 2.5)
    assert (s.queue_prefix, s.pool, s.concurrency) == ("my-app_1", "big", 4)


def test_replace_returns_a_new_settings() -> None:
    s = load({})
    changed = s.replace(port=1234, broker_url="amqp://h")
    assert changed.port == 1234
    assert not changed.embedded
    assert s.port == 8000
    assert s.embedded


def test_load_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "8123")
    assert load().port == 8123


def test_describe_mentions_every_variable() -> None:
    text = settings.describe()
    for name in ENV_NAMES:
        assert name in text
    assert len(text.splitlines()) == len(ENV_NAMES)
    assert "[default: unset]" in text  # BROKER_URL
    assert "[default: 8000]" in text


def test_env_names_are_unique() -> None:
    assert len(ENV_NAMES) == len(set(ENV_NAMES))


def test_accounts_settings() -> None:
    s = load({})
    assert (s.accounts, s.accounts_required, s.session_secret) == (None, False, None)
    assert (s.allow_signup, s.trusted_proxies, s.login_attempts_per_minute) == (False, None, 10)
    secret = "x" * 32
    on = load({"ACCOUNTS": "Required", "SESSION_SECRET": secret, "ALLOW_SIGNUP": "yes",
               "TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1,testclient"})  # fmt: skip
    assert on.accounts_required and on.session_secret == secret and on.allow_signup
    assert on.trusted_proxies == ("10.0.0.0/8", "127.0.0.1", "testclient")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ACCOUNTS": "maybe"}, "ACCOUNTS: expected required or off"),
        ({"SESSION_SECRET": "short-but-secret"}, "SESSION_SECRET: must be at least 32"),
        ({"TRUSTED_PROXIES": "*"}, "TRUSTED_PROXIES: '*'"),
        ({"TRUSTED_PROXIES": "10.0.0.1 evil"}, "TRUSTED_PROXIES: '10.0.0.1 evil'"),
        ({"LOGIN_ATTEMPTS_PER_MINUTE": "0"}, "LOGIN_ATTEMPTS_PER_MINUTE: must be a positive"),
    ],
)
def test_accounts_settings_refused(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load(env)
    assert str(caught.value).startswith(named)
    assert "short-but-secret" not in str(caught.value)  # a secret is never quoted


@pytest.mark.parametrize(
    ("env", "required"),
    [
        ({}, False),  # scripts/run: the all-in-one on loopback, no login page
        ({"HOST": "localhost"}, False),
        ({"HOST": "0.0.0.0"}, True),  # the all-in-one on a network: accounts
        ({"BROKER_URL": "amqp://u:p@rabbit/"}, True),  # a deployment: accounts
        ({"BROKER_URL": "amqp://u:p@rabbit/", "ACCOUNTS": "off"}, False),
        ({"ACCOUNTS": "required"}, True),
    ],
)
def test_accounts_are_on_everywhere_but_the_loopback_all_in_one(
    env: dict[str, str], required: bool
) -> None:
    assert load(env).accounts_required is required


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BROKER_URL": "amqp://u:p@rabbit/"}, "SESSION_SECRET: required when accounts are on"),
        ({"HOST": "0.0.0.0"}, "SESSION_SECRET: required when accounts are on"),
        ({"ACCOUNTS": "required"}, "SESSION_SECRET: required when accounts are on"),
        ({"ACCOUNTS": "off", "HOST": "0.0.0.0"}, "ACCOUNTS: off only on a loopback HOST"),
    ],
)
def test_the_web_never_starts_without_accounts_off_loopback(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        check_web(load(env))
    assert str(caught.value).startswith(named)


def test_the_web_starts_with_a_session_secret_or_on_loopback() -> None:
    check_web(load({}))
    check_web(load({"BROKER_URL": "amqp://u:p@rabbit/", "SESSION_SECRET": "s" * 32}))
    check_web(load({"BROKER_URL": "amqp://u:p@rabbit/", "ACCOUNTS": "off"}))  # loopback HOST
