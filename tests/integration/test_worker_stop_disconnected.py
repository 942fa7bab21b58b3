"""A worker asked to stop while it cannot reach its gateway or its broker stops at once:
there is nothing to finish (its tasks were given back when the connection dropped), so it
must not keep reconnecting until a second signal."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from libs.common import settings
from libs.common.broker import Broker
from libs.common.storage import Storage
from services.worker.gateway_link import GatewayTarget
from services.worker.worker import Options, Worker
from tests.servers import free_port


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("through", ["gateway", "broker"])
def test_stop_while_disconnected_exits_at_once(
    tmp_path: Path, through: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    port = free_port()  # nothing listens there
    env = {"STORAGE_URL": str(tmp_path), "WORK_DIR": str(tmp_path / "work")}
    if through == "broker":
        env["BROKER_URL"] = f"amqp://guest:guest@127.0.0.1:{port}//"
    config = settings.load(env)
    gateway = GatewayTarget(f"ws://127.0.0.1:{port}/api/workers/connect", "cvw_x")
    options = Options(name="w", lent=True, gateway=gateway if through == "gateway" else None)
    broker = Broker(config.effective_broker_url, "stop", 3)
    worker = Worker(config, Storage(config.storage_url), broker, options)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    try:
        assert _wait(lambda: _retrying(caplog), 30), "the worker never tried to connect"
        started = time.monotonic()
        worker.request_stop()
        runner.join(10)
        took = time.monotonic() - started
    finally:
        worker.loop.stop.set()
        runner.join(30)
    assert not runner.is_alive()
    assert took < 5.0, f"stopped {took:.1f} s after the request"


def _retrying(caplog: pytest.LogCaptureFixture) -> bool:
    """Its first connection attempt has failed: the loop waits in its backoff."""
    return any(getattr(r, "action", None) == "reconnect" for r in caplog.records)
