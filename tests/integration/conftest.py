"""Fixtures for the integration tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.webapp import StartApp, make_start_app


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[StartApp]:
    """The web app with its lifespan, once per test: ``start_app(embedded=..., **env)``."""
    yield from make_start_app(tmp_path)
