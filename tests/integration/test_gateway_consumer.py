"""One gateway socket's broker side (services/web/gateway_consumer.py), on the embedded
broker and on real RabbitMQ: it holds no more tasks than the worker runs, publishes a
result before it acks, refuses answers for tasks it does not hold, and gives every task
it holds back to the queue when it stops."""

from __future__ import annotations

import contextlib
import queue
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Consumer

from libs.common import frames, messages, topology
from libs.common.broker import Broker, Publisher
from services.web.gateway_consumer import Identity, PoolConsumer
from tests.servers import RabbitMQServer

POOL = "remote-test"
HELLO = frames.Hello("w-1", "laptop", concurrency=2, host="h", pid=9, version="v")


class Socket:
    """What the consumer sends to the socket, and how it asked to close it."""

    def __init__(self) -> None:
        self.sent: queue.SimpleQueue[frames.ToWorker] = queue.SimpleQueue()
        self.faults: queue.SimpleQueue[tuple[int, str]] = queue.SimpleQueue()

    def task(self, timeout: float = 10.0) -> frames.Task:
        frame = self.sent.get(timeout=timeout)
        assert isinstance(frame, frames.Task)
        return frame

    def fault(self, timeout: float = 10.0) -> tuple[int, str]:
        return self.faults.get(timeout=timeout)


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def publish_tasks(broker: Broker, n: int, job_id: str = "job1") -> list[messages.Envelope]:
    envs = [
        messages.envelope(job_id, messages.CanaryTask(messages.task_id(job_id, i), i, 0.0))
        for i in range(n)
    ]
    with broker.connection() as conn:
        publisher = Publisher(broker, conn)
        for env in envs:
            publisher.task(env, POOL)
    return envs


def drain(broker: Broker, q: Any, want: int, timeout: float = 10.0) -> list[messages.Envelope]:
    """Take ``want`` messages off ``q`` (acking them)."""
    got: list[messages.Envelope] = []
    with broker.connection() as conn:
        queues = broker.prepare(conn, [q])

        def take(message: Any) -> None:
            got.append(messages.decode(message.body))
            message.ack()

        with Consumer(conn.channel(), queues=queues, on_message=take, accept=["application/json"]):
            deadline = time.monotonic() + timeout
            while len(got) < want and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.2)
    return got


class GatewayConsumerContract:
    @pytest.fixture
    def broker(self) -> Broker:  # pragma: no cover - each broker's class says
        raise NotImplementedError

    @pytest.fixture
    def socket(self) -> Socket:
        return Socket()

    @pytest.fixture
    def consumer(self, broker: Broker, socket: Socket) -> Iterator[PoolConsumer]:
        identity = Identity("pair1234.w-1", "pair1234", POOL, "laptop", HELLO)
        consumer = PoolConsumer(
            broker, identity, socket.sent.put, lambda code, why: socket.faults.put((code, why)),
            cancelled=lambda job_id: job_id == "cancelled-job",
        )  # fmt: skip
        consumer.start()
        assert consumer.ready.wait(15)
        yield consumer
        consumer.stop()
        consumer.join(15)

    def events(self, broker: Broker) -> Any:
        return topology.event_queue(broker.prefix, broker.delivery_limit)

    def tasks(self, broker: Broker) -> Any:
        return topology.task_queue(broker.prefix, POOL, broker.delivery_limit)

    def test_holds_no_more_than_the_workers_concurrency(
        self, broker: Broker, socket: Socket, consumer: PoolConsumer
    ) -> None:
        envs = publish_tasks(broker, 4)
        first, second = socket.task(), socket.task()
        assert [first.envelope, second.envelope] == envs[:2]
        with pytest.raises(queue.Empty):
            socket.sent.get(timeout=0.5)  # the third waits for a free slot
        consumer.commands.put(frames.Done(first.delivery, _result(first)))
        third = socket.task()
        assert third.envelope == envs[2]

    def test_a_result_is_published_then_acked(
        self, broker: Broker, socket: Socket, consumer: PoolConsumer
    ) -> None:
        publish_tasks(broker, 1)
        task = socket.task()
        consumer.commands.put(frames.Done(task.delivery, _result(task)))
        consumer.commands.put(frames.Beat("online", in_flight=0, processed=1, interval=5.0))
        events = drain(broker, self.events(broker), 2)
        result, beat = (e.body for e in events)
        assert result == _result(task) and events[0].job_id == "job1"
        assert isinstance(beat, messages.Heartbeat)
        # Who the worker is comes from its token, not from what it says.
        assert (beat.worker_id, beat.pool, beat.paired_id) == ("pair1234.w-1", POOL, "pair1234")
        wait_for(lambda: not consumer.held, 5, "the task to be settled")
        consumer.stop()
        consumer.join(15)
        assert drain(broker, self.tasks(broker), 1, timeout=1.0) == []  # acked: gone

    @pytest.mark.parametrize("answer", ["unknown delivery", "wrong task", "skip not cancelled"])
    def test_an_answer_for_a_task_it_does_not_hold_closes_and_gives_the_tasks_back(
        self, broker: Broker, socket: Socket, consumer: PoolConsumer, answer: str
    ) -> None:
        envs = publish_tasks(broker, 1)
        task = socket.task()
        bad: frames.FromWorker = {
            "unknown delivery": frames.Done(task.delivery + 100, _result(task)),
            "wrong task": frames.Done(task.delivery, _result(task, task_id="job1-99999999")),
            "skip not cancelled": frames.Skip(task.delivery),
        }[answer]
        consumer.commands.put(bad)
        code, _reason = socket.fault()
        assert code == frames.BAD_FRAME
        consumer.join(15)
        assert not consumer.is_alive()
        again = drain(broker, self.tasks(broker), 1)
        assert again == envs  # back in the queue at once, not lost

    def test_a_cancelled_jobs_task_may_be_skipped(
        self, broker: Broker, socket: Socket, consumer: PoolConsumer
    ) -> None:
        publish_tasks(broker, 1, job_id="cancelled-job")
        task = socket.task()
        consumer.commands.put(frames.Skip(task.delivery))
        wait_for(lambda: not consumer.held, 5, "the skip to be settled")
        consumer.stop()
        consumer.join(15)
        assert drain(broker, self.tasks(broker), 1, timeout=1.0) == []
        assert socket.faults.empty()

    def test_stopping_gives_every_held_task_back(
        self, broker: Broker, socket: Socket, consumer: PoolConsumer
    ) -> None:
        envs = publish_tasks(broker, 2)
        socket.task(), socket.task()
        consumer.stop()
        consumer.join(15)
        again = drain(broker, self.tasks(broker), 2)
        assert sorted(e.id for e in again) == sorted(e.id for e in envs)

    def test_retry_and_dead_letter_settle_through_the_publisher(
        self, broker: Broker, socket: Socket, consumer: PoolConsumer
    ) -> None:
        envs = publish_tasks(broker, 2)
        first, second = socket.task(), socket.task()
        consumer.commands.put(frames.Retry(first.delivery, 0.0, "network"))
        consumer.commands.put(frames.Dead(second.delivery, "a bad spec"))
        retried = socket.task(timeout=15)  # the retry comes back to this same pool
        assert retried.envelope.id == envs[0].id and retried.envelope.attempt == 2
        dead = drain(broker, topology.dead_queue(broker.prefix), 1)
        assert [d.id for d in dead] == [envs[1].id]


def _result(task: frames.Task, task_id: str | None = None) -> messages.TaskResult:
    body = task.envelope.body
    assert isinstance(body, messages.CanaryTask)
    return messages.TaskResult(task_id or body.task_id, body.seq, 1, 1, 0, worker="laptop")


def _prefix() -> str:
    return f"g{uuid.uuid4().hex[:10]}"


class TestOnTheEmbeddedBroker(GatewayConsumerContract):
    @pytest.fixture
    def broker(self) -> Broker:
        broker = Broker("memory://", _prefix(), delivery_limit=3)
        with broker.connection() as conn:
            broker.declare(conn, pools=(POOL,))
        return broker


@pytest.mark.integration
class TestOnRabbitMQ(GatewayConsumerContract):
    @pytest.fixture
    def broker(self, rabbitmq: RabbitMQServer) -> Broker:
        broker = Broker(rabbitmq.url, _prefix(), delivery_limit=3)
        with broker.connection() as conn:
            broker.declare(conn, pools=(POOL,))
        return broker
