"""One broker contract, every broker: the embedded memory transport and real RabbitMQ.

``BrokerContract`` holds the behaviour the services rely on; each subclass supplies a
``broker`` fixture. Queue prefixes are unique per test, so tests share one server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty

import pytest
from kombu import Connection, Queue
from kombu.message import Message

from libs.common import messages, topology
from libs.common.broker import Broker, Publisher, dead_cause, delivery_count

POOL = "shared"


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def _task(job_id: str = "job1", seq: int = 0) -> messages.Envelope:
    body = messages.CsvTask(
        task_id=messages.task_id(job_id, seq), seq=seq, source="uploads/x.csv", start=10,
        end=20, first_row=1, rows=1, header=["a"], spec="", output="p/0.csv",
    )  # fmt: skip
    return messages.envelope(job_id, body)


@contextmanager
def connected(broker: Broker) -> Iterator[tuple[Connection, Publisher]]:
    with broker.connection() as conn:
        conn.ensure_connection(max_retries=3)
        yield conn, Publisher(broker, conn)


def get(conn: Connection, queue: Queue, timeout: float = 10.0) -> Message:
    """The next message on ``queue`` (unacked), or fail after ``timeout``."""
    simple = conn.SimpleQueue(queue)
    simple.consumer.qos(prefetch_count=1)
    try:
        return simple.get(block=True, timeout=timeout)
    except Empty:
        pytest.fail(f"no message on {queue.name} within {timeout}s")
    finally:
        simple.consumer.cancel()  # a later get() must not compete with this consumer


def assert_empty(conn: Connection, queue: Queue) -> None:
    simple = conn.SimpleQueue(queue)
    with pytest.raises(Empty):
        simple.get(block=True, timeout=0.3)
    simple.consumer.cancel()


class BrokerContract:
    broker: Broker

    def task_queue(self, broker: Broker) -> Queue:
        return topology.task_queue(broker.prefix, POOL, broker.delivery_limit)

    def test_task_round_trip(self, broker: Broker) -> None:
        env = _task()
        with connected(broker) as (conn, publisher):
            publisher.task(env, POOL)
            message = get(conn, self.task_queue(broker))
            assert messages.decode(message.body) == env
            assert delivery_count(message) == 1
            message.ack()
            assert_empty(conn, self.task_queue(broker))

    def test_events_and_jobs_route_to_their_queues(self, broker: Broker) -> None:
        with connected(broker) as (conn, publisher):
            publisher.job(messages.envelope("j", messages.JobRequested("csv")))
            publisher.event(messages.envelope("j", messages.TaskResult("j-000000", 0, 1, 1, 0)))
            job = get(conn, topology.job_queue(broker.prefix, broker.delivery_limit))
            assert isinstance(messages.decode(job.body).body, messages.JobRequested)
            job.ack()
            event = get(conn, topology.event_queue(broker.prefix, broker.delivery_limit))
            assert isinstance(messages.decode(event.body).body, messages.TaskResult)
            event.ack()

    def test_retry_comes_back_later_with_the_next_attempt(self, broker: Broker) -> None:
        env = _task()
        with connected(broker) as (conn, publisher):
            publisher.task(env, POOL)
            first = get(conn, self.task_queue(broker))
            sent = time.monotonic()
            publisher.retry(first, messages.decode(first.body), delay=1.0)
            again = get(conn, self.task_queue(broker), timeout=15)
            waited = time.monotonic() - sent
            retried = messages.decode(again.body)
            again.ack()
        assert retried.attempt == env.attempt + 1
        assert retried.body == env.body
        assert waited >= 0.9, "the retry must wait for its delay"

    def test_dead_letter_keeps_the_message_and_its_cause(self, broker: Broker) -> None:
        env = _task()
        with connected(broker) as (conn, publisher):
            publisher.task(env, POOL)
            message = get(conn, self.task_queue(broker))
            publisher.dead_letter(message, "permanent error: the input object is missing")
            dead = get(conn, topology.dead_queue(broker.prefix))
            assert messages.decode(dead.body) == env
            assert dead_cause(dead) == "permanent error: the input object is missing"
            dead.ack()
            assert_empty(conn, self.task_queue(broker))

    def test_control_reaches_every_worker(self, broker: Broker) -> None:
        with connected(broker) as (conn, publisher):
            queues = [topology.control_queue(broker.prefix, name) for name in ("w1", "w2")]
            for queue in queues:
                queue.bind(conn.default_channel).declare()
            publisher.control(messages.envelope("job9", messages.JobCancelled()))
            for queue in queues:
                received = get(conn, queue)
                assert messages.decode(received.body).job_id == "job9"
                received.ack()


class TestMemoryBroker(BrokerContract):
    @pytest.fixture
    def broker(self) -> Iterator[Broker]:
        broker = Broker("memory://", _prefix(), delivery_limit=3)
        with broker.connection() as conn:
            broker.declare(conn)
        yield broker


@pytest.mark.integration
class TestRabbitMQBroker(BrokerContract):
    @pytest.fixture
    def broker(self, rabbitmq) -> Iterator[Broker]:  # type: ignore[no-untyped-def]
        broker = Broker(rabbitmq.url, _prefix(), delivery_limit=2)
        with broker.connection() as conn:
            broker.declare(conn)
        yield broker

    def test_poison_message_is_dead_lettered_by_delivery_count(self, broker: Broker) -> None:
        """A consumer that dies on a message each time: the broker dead-letters it."""
        env = _task()
        queue = self.task_queue(broker)
        with connected(broker) as (_, publisher):
            publisher.task(env, POOL)
        deliveries = []
        for _ in range(broker.delivery_limit + 3):
            with connected(broker) as (conn, _):
                simple = conn.SimpleQueue(queue)
                try:
                    message = simple.get(block=True, timeout=3)
                except Empty:
                    break
                deliveries.append(delivery_count(message))
                # the connection closes without an ack: as if the worker died
        assert deliveries == list(range(1, broker.delivery_limit + 2))
        with connected(broker) as (conn, _):
            dead = get(conn, topology.dead_queue(broker.prefix))
            assert messages.decode(dead.body) == env
            assert "delivery limit" in dead_cause(dead)
            dead.ack()

    def test_durable_messages_survive_a_broker_restart(self, rabbitmq, broker: Broker) -> None:  # type: ignore[no-untyped-def]
        env = _task()
        with connected(broker) as (_, publisher):
            publisher.task(env, POOL)
        rabbitmq.stop()
        rabbitmq.start()
        with connected(broker) as (conn, _):
            message = get(conn, self.task_queue(broker))
            assert messages.decode(message.body) == env
            message.ack()
