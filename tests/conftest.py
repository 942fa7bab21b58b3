"""Shared fixtures.

Servers (see tests/servers.py) are started lazily, once per session, by the
first test that asks for them:

- ``rabbitmq``: a RabbitMQServer (``.url``, ``.port``, ``.stop()``/``.start()``).
  It is shared: use unique queue names, and leave it running.
- ``postgres``: a PostgresServer (``.url`` is the ``conveyor`` database).
- ``moto``: a MotoServer, the SQS + S3 emulator (``.endpoint``, ``.env``).
- ``localstack``: a LocalStackServer, LocalStack's SQS + S3 + SNS without Docker
  (``.endpoint``, ``.env``), from the virtualenv scripts/install-servers builds.
- ``pg_url``: SQLAlchemy URL of a fresh, empty database for one test.

Missing server binaries skip the test locally (run scripts/install-servers),
but fail it when $CI is set: CI must never silently skip integration tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TypeVar

import pytest

from tests.servers import (
    LocalStackServer,
    MotoServer,
    PostgresServer,
    RabbitMQServer,
    ServerNotInstalled,
)

# --------------------------------------------------------------------------- servers

_S = TypeVar("_S", RabbitMQServer, PostgresServer, MotoServer, LocalStackServer)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _serve(server: _S) -> Iterator[_S]:
    try:
        server.start()
    except BaseException as exc:
        server.close()
        if not isinstance(exc, ServerNotInstalled):
            raise
        message = f"{exc}: run scripts/install-servers (or scripts/test, which does)"
        if in_ci():
            pytest.fail(f"CI is set, refusing to skip: {message}", pytrace=False)
        pytest.skip(message)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQServer]:
    yield from _serve(RabbitMQServer())


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    yield from _serve(PostgresServer())


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """moto's standalone server (SQS + S3) on loopback; ``.endpoint``, ``.env``."""
    yield from _serve(MotoServer())


@pytest.fixture(scope="session")
def localstack() -> Iterator[LocalStackServer]:
    """LocalStack (SQS + S3 + SNS) without Docker, on loopback; ``.endpoint``, ``.env``."""
    yield from _serve(LocalStackServer())


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """SQLAlchemy URL (postgresql+psycopg://...) of a new empty database,
    dropped after the test (its open connections are terminated first)."""
    name = f"t_{uuid.uuid4().hex}"
    postgres.create_database(name)
    try:
        yield postgres.url_for(name)
    finally:
        postgres.drop_database(name)
