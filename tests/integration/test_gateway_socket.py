"""The gateway's WebSocket route on the app (services/web/gateway.py), through Litestar's
test client on the embedded broker: the token in the handshake header, Hello first,
tasks forwarded, bad frames and revocations closing the socket with our close codes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.exceptions import WebSocketDisconnect

from libs.common import frames, messages
from libs.common.broker import Publisher
from tests.webapp import Conveyor, StartApp

KEY = "k" * 32
HELLO = frames.Hello("host-1-abc", "laptop", concurrency=1, host="host", pid=1, version="v")


@pytest.fixture
def app(start_app: StartApp) -> Conveyor:
    return start_app(embedded=False, WORKER_TOKEN_KEY=KEY, HEARTBEAT_SECONDS="1")


@pytest.fixture
def paired(app: Conveyor) -> dict[str, Any]:
    code = app.client.post("/api/pairings", json={}).json()["code"]
    answer = app.client.post("/api/workers/pair", json={"code": code, "name": "laptop"})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def connect(app: Conveyor, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return app.client.websocket_connect(frames.PATH, headers=headers)


def closed_with(app: Conveyor, token: str | None, *send: bytes) -> WebSocketDisconnect:
    with pytest.raises(WebSocketDisconnect) as caught, connect(app, token) as ws:
        for data in send:
            ws.send_bytes(data)
        for _ in range(10):  # bounded: the server closes after at most these frames
            ws.receive_bytes()
    return caught.value


def publish_canary(app: Conveyor, pool: str, job_id: str = "job1") -> messages.Envelope:
    env = messages.envelope(job_id, messages.CanaryTask(messages.task_id(job_id, 0), 0, 0.0))
    broker = app.components.broker
    with broker.connection() as conn:
        Publisher(broker, conn).task(env, pool)
    return env


@pytest.fixture
def welcomed(app: Conveyor, paired: dict[str, Any]) -> Iterator[tuple[Any, frames.Welcome]]:
    with connect(app, paired["token"]) as ws:
        ws.send_bytes(frames.encode(HELLO))
        welcome = frames.to_worker(ws.receive_bytes())
        assert isinstance(welcome, frames.Welcome)
        yield ws, welcome


def test_the_pairing_answer_sends_the_gateway_and_no_broker(paired: dict[str, Any]) -> None:
    assert paired["transport"] == "gateway"
    assert paired["broker_url"] == ""
    assert paired["task_urls"] is True


@pytest.mark.parametrize("token", [None, "cvw_not-a-real-token"])
def test_a_missing_or_unknown_token_is_closed_as_unauthorized(
    app: Conveyor, token: str | None
) -> None:
    assert closed_with(app, token).code == frames.UNAUTHORIZED


@pytest.mark.parametrize(
    "first", [b"garbage", frames.encode(frames.Pause()), b'{"body":{"type":"pause"},"v":99}']
)
def test_a_first_frame_that_is_not_hello_closes_as_bad_frame(
    app: Conveyor, paired: dict[str, Any], first: bytes
) -> None:
    assert closed_with(app, paired["token"], first).code == frames.BAD_FRAME
    assert sum(app.client.app.state.gateway.faults.values()) >= 1


def test_welcome_names_the_pool_and_tasks_arrive(
    app: Conveyor, paired: dict[str, Any], welcomed: tuple[Any, frames.Welcome]
) -> None:
    ws, welcome = welcomed
    assert welcome.pool == paired["pool"]
    assert welcome.worker_id == f"{paired['worker_id'][:12]}.{HELLO.worker_id}"
    env = publish_canary(app, paired["pool"])
    task = frames.to_worker(ws.receive_bytes())
    assert isinstance(task, frames.Task) and task.envelope == env
    result = messages.TaskResult(messages.task_id("job1", 0), 0, 1, 1, 0, worker="laptop")
    ws.send_bytes(frames.encode(frames.Done(task.delivery, result)))
    ws.send_bytes(frames.encode(frames.Beat("online")))  # the socket stays open


def test_an_answer_for_a_task_it_does_not_hold_closes_and_the_task_goes_back(
    app: Conveyor, paired: dict[str, Any], welcomed: tuple[Any, frames.Welcome]
) -> None:
    ws, _ = welcomed
    publish_canary(app, paired["pool"])
    task = frames.to_worker(ws.receive_bytes())
    assert isinstance(task, frames.Task)
    ws.send_bytes(frames.encode(frames.Retry(task.delivery + 1, 1.0)))
    with pytest.raises(WebSocketDisconnect) as caught:
        ws.receive_bytes()
    assert caught.value.code == frames.BAD_FRAME
    assert "does not hold" in caught.value.detail
    broker = app.components.broker

    def depth() -> int:
        with broker.connection() as conn:
            return broker.queue_depth(conn, f"{broker.prefix}.tasks.{paired['pool']}")

    deadline = time.monotonic() + 10
    while depth() != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert depth() == 1, "the held task went back to the queue"


def test_revoking_closes_the_socket_within_a_second_and_the_token_is_refused_after(
    app: Conveyor, paired: dict[str, Any], welcomed: tuple[Any, frames.Welcome]
) -> None:
    ws, _ = welcomed
    started = time.monotonic()
    assert app.client.delete(f"/api/workers/{paired['worker_id']}").status_code == 200
    with pytest.raises(WebSocketDisconnect) as caught:
        ws.receive_bytes()
    took = time.monotonic() - started
    assert caught.value.code == frames.REVOKED
    assert took < 1.0, f"closed {took:.2f} s after the revocation"
    assert closed_with(app, paired["token"]).code == frames.UNAUTHORIZED
