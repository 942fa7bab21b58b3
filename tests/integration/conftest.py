"""Fixtures for the integration tier."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import MotoServer
from tests.webapp import StartApp, make_start_app


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[StartApp]:
    """The web app with its lifespan, once per test: ``start_app(embedded=..., **env)``."""
    yield from make_start_app(tmp_path)


@pytest.fixture
def aws_env(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point boto3 at moto through its standard variables, and at nothing else."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for name, value in moto.env.items():
        monkeypatch.setenv(name, value)
    return moto.env
