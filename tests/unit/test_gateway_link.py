"""A gateway worker's side of the socket (services/worker/gateway_link.py): what the
worker publishes becomes the right frame, once, and only for tasks this socket holds."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from libs.common import frames, messages, settings
from libs.common.broker import Broker
from libs.common.storage import Storage
from services.worker.gateway_link import (
    GatewaySession,
    GatewayTarget,
    Revoked,
    _raise_if_refused,
    gateway_url,
)
from services.worker.worker import InFlight, Options, Worker

WELCOME = frames.Welcome("p.w", "remote-1", 5.0, 15.0)


class Socket:
    """Records what the session sends."""

    def __init__(self) -> None:
        self.sent: list[frames.FromWorker] = []

    def send(self, data: bytes) -> None:
        self.sent.append(frames.from_worker(data))


def session() -> tuple[GatewaySession, Socket]:
    ws = Socket()
    return GatewaySession(ws, WELCOME), ws  # type: ignore[arg-type]


def task(delivery: int, seq: int = 0) -> frames.Task:
    body = messages.CanaryTask(messages.task_id("job1", seq), seq, 0.1)
    return frames.Task(delivery, messages.envelope("job1", body))


def result(seq: int = 0) -> messages.Envelope:
    return messages.envelope(
        "job1", messages.TaskResult(messages.task_id("job1", seq), seq, 1, 1, 0)
    )


def test_a_result_becomes_done_for_its_delivery_and_the_ack_sends_nothing_more() -> None:
    s, ws = session()
    message = s.take(task(7))
    assert messages.decode(message.body).body == task(7).envelope.body
    s.publisher.event(result())
    message.ack()
    assert ws.sent == [frames.Done(7, result().body)]  # type: ignore[arg-type]
    assert s.held == {}


def test_retry_dead_letter_and_skip_name_their_delivery_once() -> None:
    s, ws = session()
    a, b, c = s.take(task(1, 0)), s.take(task(2, 1)), s.take(task(3, 2))
    s.publisher.retry(a, task(1).envelope, 2.5)
    s.publisher.dead_letter(b, "x" * 5000)
    c.ack()  # a cancelled job's task
    c.ack()
    s.publisher.retry(a, task(1).envelope, 2.5)  # already settled: nothing
    assert ws.sent == [frames.Retry(1, 2.5), frames.Dead(2, "x" * 2000), frames.Skip(3)]


def test_an_earlier_sockets_task_sends_nothing_on_a_new_one() -> None:
    old, _ = session()
    new, ws = session()
    message = old.take(task(1))
    new.publisher.event(result())  # its task is not held here: dropped, it runs again
    new.publisher.retry(message, task(1).envelope, 1.0)
    new.publisher.dead_letter(message, "boom")
    assert ws.sent == []


def test_progress_for_a_held_task_and_heartbeats_become_frames() -> None:
    s, ws = session()
    s.take(task(4))
    s.publisher.event(
        messages.envelope(
            "job1", messages.TrackProgress(messages.task_id("job1", 0), 9, "analysing")
        )
    )
    s.publisher.event(
        messages.envelope("job1", messages.TrackProgress("other-00000001", 9, "analysing"))
    )
    beat = messages.Heartbeat("w", "n", "online", in_flight=1, processed=3, failed=1, interval=5.0)
    s.publisher.event(messages.envelope("", beat))
    assert ws.sent == [
        frames.Progress(4, 9, "analysing"),
        frames.Beat("online", 1, 3, 1, 0.0, None, 5.0, 0.0),
    ]


@pytest.mark.parametrize(
    ("server", "url"),
    [
        ("https://app.example", "wss://app.example/api/workers/connect"),
        ("http://127.0.0.1:8000/", "ws://127.0.0.1:8000/api/workers/connect"),
        ("https://example.com/conveyor", "wss://example.com/conveyor/api/workers/connect"),
    ],
)
def test_the_gateway_url_follows_the_servers_scheme(server: str, url: str) -> None:
    assert gateway_url(server) == url


def test_the_target_never_shows_its_token() -> None:
    target = GatewayTarget("wss://app/api/workers/connect", "cvw_secret-token")
    assert "secret" not in repr(target) and "secret" not in str(target)


class _Close:
    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason


class _Closed(Exception):
    def __init__(self, code: int) -> None:
        self.rcvd: Any = _Close(code, "why")


@pytest.mark.parametrize("code", [frames.REVOKED, frames.UNAUTHORIZED])
def test_revoked_or_unauthorized_closes_stop_the_worker(code: int) -> None:
    with pytest.raises(Revoked):
        _raise_if_refused(_Closed(code))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "code", [frames.GOING_AWAY, frames.BROKER_LOST, frames.BAD_FRAME, frames.TIMEOUT, 1012]
)
def test_other_closes_reconnect(code: int) -> None:
    _raise_if_refused(_Closed(code))  # type: ignore[arg-type]


def test_a_result_from_an_earlier_socket_settles_nothing_on_the_new_one(tmp_path: Path) -> None:
    """The gateway gave the task back when the old socket closed, and sent it to this
    worker again: the old run's result must not settle the new delivery."""
    config = settings.load({"STORAGE_URL": str(tmp_path), "WORK_DIR": str(tmp_path / "w")})
    target = GatewayTarget("ws://127.0.0.1:9/api/workers/connect", "cvw_x")
    worker = Worker(
        config, Storage(config.storage_url), Broker("memory://", "t", 3),
        Options(name="w", lent=True, gateway=target),
    )  # fmt: skip
    try:
        old, _ = session()
        new, ws = session()
        first, again = old.take(task(1)), new.take(task(5))
        done: Future[messages.TaskResult] = Future()
        done.set_result(result().body)  # type: ignore[arg-type]
        worker._settle(new, InFlight(old, first, task(1).envelope, done))  # type: ignore[arg-type]
        assert ws.sent == []
        assert new.held == {again.task_id: again} and not again.settled
    finally:
        worker.executor.shutdown()
