"""One broker contract, every broker: the embedded memory transport, RabbitMQ, and SQS (on
moto and on LocalStack).

``BrokerContract`` holds the behaviour the services rely on; each subclass supplies a
``broker`` fixture. Queue prefixes are unique per test, so tests share one server. Where a
broker cannot do something (the embedded one counts no deliveries), the test says so and
skips; where brokers differ in how (SQS leases lapse, RabbitMQ's last as long as the
connection), the test checks each one's own behaviour.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any
from urllib.parse import quote

import boto3
import pytest
from kombu import Connection, Queue
from kombu.message import Message

from libs.common import messages, topology
from libs.common.broker import Broker, Publisher, SqsOptions, dead_cause, delivery_count
from libs.common.broker_sqs import SqsSetupError
from tests.servers import LocalStackServer, MotoServer, RabbitMQServer

POOL = "shared"
SQS_LEASE = 3  # seconds: short, so that lapsed leases show within a test


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


def get(broker: Broker, conn: Connection, queue: Queue, timeout: float = 10.0) -> Message:
    """The next message on ``queue`` (unacked), or fail after ``timeout``."""
    (ready,) = broker.prepare(conn, [queue])
    simple = conn.SimpleQueue(ready)
    simple.consumer.qos(prefetch_count=1)
    try:
        return simple.get(block=True, timeout=timeout)
    except Empty:
        pytest.fail(f"no message on {queue.name} within {timeout}s")
    finally:
        simple.consumer.cancel()  # a later get() must not compete with this consumer


def assert_empty(broker: Broker, conn: Connection, queue: Queue) -> None:
    (ready,) = broker.prepare(conn, [queue])
    simple = conn.SimpleQueue(ready)
    with pytest.raises(Empty):
        simple.get(block=True, timeout=0.3)
    simple.consumer.cancel()


class BrokerContract:
    def task_queue(self, broker: Broker) -> Queue:
        return topology.task_queue(broker.prefix, POOL, broker.delivery_limit)

    def test_task_round_trip(self, broker: Broker) -> None:
        env = _task()
        with connected(broker) as (conn, publisher):
            publisher.task(env, POOL)
            message = get(broker, conn, self.task_queue(broker))
            assert messages.decode(message.body) == env
            assert delivery_count(message) == 1
            message.ack()
            assert_empty(broker, conn, self.task_queue(broker))

    def test_events_and_jobs_route_to_their_queues(self, broker: Broker) -> None:
        with connected(broker) as (conn, publisher):
            publisher.job(messages.envelope("j", messages.JobRequested("csv")))
            publisher.event(messages.envelope("j", messages.TaskResult("j-000000", 0, 1, 1, 0)))
            job = get(broker, conn, topology.job_queue(broker.prefix, broker.delivery_limit))
            assert isinstance(messages.decode(job.body).body, messages.JobRequested)
            job.ack()
            event = get(broker, conn, topology.event_queue(broker.prefix, broker.delivery_limit))
            assert isinstance(messages.decode(event.body).body, messages.TaskResult)
            event.ack()

    def test_retry_comes_back_later_as_a_new_message_with_the_next_attempt(
        self, broker: Broker
    ) -> None:
        env = _task()
        with connected(broker) as (conn, publisher):
            publisher.task(env, POOL)
            first = get(broker, conn, self.task_queue(broker))
            sent = time.monotonic()
            publisher.retry(first, messages.decode(first.body), delay=1.0)
            again = get(broker, conn, self.task_queue(broker), timeout=15)
            waited = time.monotonic() - sent
            retried = messages.decode(again.body)
            count = delivery_count(again)
            again.ack()
            assert_empty(broker, conn, self.task_queue(broker))  # the first one is settled
        assert retried.attempt == env.attempt + 1
        assert retried.body == env.body
        assert count == 1, "a retry is a new message: its deliveries count from one"
        assert waited >= 0.9, "the retry must wait for its delay"

    def test_dead_letter_keeps_the_message_and_its_cause(self, broker: Broker) -> None:
        env = _task()
        with connected(broker) as (conn, publisher):
            publisher.task(env, POOL)
            message = get(broker, conn, self.task_queue(broker))
            publisher.dead_letter(message, "permanent error: the input object is missing")
            dead = get(broker, conn, topology.dead_queue(broker.prefix))
            assert messages.decode(dead.body) == env
            assert dead_cause(dead) == "permanent error: the input object is missing"
            dead.ack()
            assert_empty(broker, conn, self.task_queue(broker))

    def test_control_reaches_every_worker(self, broker: Broker) -> None:
        if not broker.broadcasts:
            pytest.skip("no broadcast here: cancellation works at the dispatcher only")
        with connected(broker) as (conn, publisher):
            queues = [topology.control_queue(broker.prefix, name) for name in ("w1", "w2")]
            broker.prepare(conn, queues)
            publisher.control(messages.envelope("job9", messages.JobCancelled()))
            for queue in queues:
                received = get(broker, conn, queue)
                assert messages.decode(received.body).job_id == "job9"
                received.ack()
            for queue in queues:
                broker.delete_private_queue(queue)

    def test_poison_message_is_dead_lettered_by_delivery_count(self, broker: Broker) -> None:
        """A consumer that dies on a message each time: the broker dead-letters it."""
        if not broker.durable:
            pytest.skip("the embedded broker counts no deliveries (it dies with its consumers)")
        env = _task()
        queue = self.task_queue(broker)
        with connected(broker) as (_, publisher):
            publisher.task(env, POOL)
        deliveries = []
        for _ in range(broker.delivery_limit + 3):
            with connected(broker) as (conn, _):
                (ready,) = broker.prepare(conn, [queue])
                simple = conn.SimpleQueue(ready)
                try:
                    message = simple.get(block=True, timeout=3)
                except Empty:
                    break
                deliveries.append(delivery_count(message))
                # the connection closes without an ack: as if the worker died
        assert deliveries == list(range(1, broker.delivery_limit + 2))
        with connected(broker) as (conn, _):
            dead = get(broker, conn, topology.dead_queue(broker.prefix))
            assert messages.decode(dead.body) == env
            assert "its consumers died or gave it back each time" in dead_cause(dead)
            dead.ack()

    def test_a_held_lease_keeps_the_message_from_other_consumers(self, broker: Broker) -> None:
        """While its consumer extends the lease, nobody else gets the message. When the
        consumer dies, the message comes back: on SQS once the lease lapses, on RabbitMQ as
        soon as the connection is gone (there, a lease lasts as long as the connection and
        extending it does nothing). The embedded broker loses it with its process."""
        env = _task()
        queue = self.task_queue(broker)
        lease = broker.lease_seconds
        with connected(broker) as (other, publisher):
            publisher.task(env, POOL)
            with connected(broker) as (conn, _):
                message = get(broker, conn, queue)
                hold_until = time.monotonic() + 2 * (lease or 1) + 1
                while time.monotonic() < hold_until:
                    assert broker.extend_lease(message)
                    assert_empty(broker, other, queue)  # a receive: 0.3 s, 1 s on SQS
                if lease is not None:
                    message.channel.do_restore = False  # die: hand nothing back on close
            if not broker.durable:
                return  # the embedded broker forgets it; the dispatcher re-publishes at start
            died = time.monotonic()
            again = get(broker, other, queue, timeout=(lease or 0) + 10)
            waited = time.monotonic() - died
            assert messages.decode(again.body) == env
            assert delivery_count(again) == 2
            again.ack()
        if lease is not None:
            assert waited >= lease - 1.5, "the message came back before its lease lapsed"


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
    def broker(self, rabbitmq: RabbitMQServer) -> Iterator[Broker]:
        broker = Broker(rabbitmq.url, _prefix(), delivery_limit=2)
        with broker.connection() as conn:
            broker.declare(conn)
        yield broker

    def test_durable_messages_survive_a_broker_restart(
        self, rabbitmq: RabbitMQServer, broker: Broker
    ) -> None:
        env = _task()
        with connected(broker) as (_, publisher):
            publisher.task(env, POOL)
        rabbitmq.stop()
        rabbitmq.start()
        with connected(broker) as (conn, _):
            message = get(broker, conn, self.task_queue(broker))
            assert messages.decode(message.body) == env
            message.ack()


# --------------------------------------------------------------------------- SQS


def sqs_url(emulator: MotoServer | LocalStackServer) -> str:
    """BROKER_URL for an emulator: its host:port is the endpoint, the credentials URL-quoted."""
    key, secret = emulator.env["AWS_ACCESS_KEY_ID"], emulator.env["AWS_SECRET_ACCESS_KEY"]
    host = emulator.endpoint.removeprefix("http://")
    return f"sqs://{quote(key, safe='')}:{quote(secret, safe='')}@{host}"


def sqs_options(
    emulator: MotoServer | LocalStackServer, *, create_queues: bool = True
) -> SqsOptions:
    return SqsOptions(
        region=emulator.env["AWS_DEFAULT_REGION"], visibility_timeout=SQS_LEASE, wait_seconds=1,
        create_queues=create_queues,
    )  # fmt: skip


def sqs_client(emulator: MotoServer | LocalStackServer) -> Any:
    env = emulator.env
    return boto3.client(
        "sqs", endpoint_url=emulator.endpoint, region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip


class SQSContract(BrokerContract):
    """The SQS broker on an emulator (``emulator`` fixture): the contract, plus the queue
    attributes that provisioning relies on, and the endpoint from the environment."""

    @pytest.fixture
    def broker(self, emulator: MotoServer | LocalStackServer) -> Iterator[Broker]:
        broker = Broker(sqs_url(emulator), _prefix(), delivery_limit=2, sqs=sqs_options(emulator))
        with broker.connection() as conn:
            broker.declare(conn)
        yield broker

    def test_queues_have_the_redrive_policy_provisioning_gives_them(
        self, emulator: MotoServer | LocalStackServer, broker: Broker
    ) -> None:
        client = sqs_client(emulator)
        wanted = topology.sqs_queues(broker.prefix, (POOL,), broker.delivery_limit, SQS_LEASE)
        dead_arn = client.get_queue_attributes(
            QueueUrl=client.get_queue_url(QueueName=wanted[0].name)["QueueUrl"],
            AttributeNames=["QueueArn"],
        )["Attributes"]["QueueArn"]
        for queue in wanted:
            url = client.get_queue_url(QueueName=queue.name)["QueueUrl"]
            attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])[
                "Attributes"
            ]
            assert attributes["VisibilityTimeout"] == str(SQS_LEASE)
            if queue.dead_letter_to is None:
                assert "RedrivePolicy" not in attributes
            else:
                policy = json.loads(attributes["RedrivePolicy"])
                assert policy["deadLetterTargetArn"] == dead_arn
                assert int(policy["maxReceiveCount"]) == broker.delivery_limit + 1

    def test_a_queue_made_without_its_policy_gets_it(
        self, emulator: MotoServer | LocalStackServer
    ) -> None:
        """A queue someone created bare (kombu does, on first use) is brought in line."""
        client = sqs_client(emulator)
        broker = Broker(sqs_url(emulator), _prefix(), delivery_limit=2, sqs=sqs_options(emulator))
        name = topology.sqs_name(self.task_queue(broker).name)
        url = client.create_queue(QueueName=name)["QueueUrl"]
        with broker.connection() as conn:
            broker.declare(conn)
        attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
        assert "RedrivePolicy" in attributes["Attributes"]
        assert attributes["Attributes"]["VisibilityTimeout"] == str(SQS_LEASE)

    def test_endpoint_from_the_environment(
        self, emulator: MotoServer | LocalStackServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``sqs://`` with no host: boto3's own AWS_ENDPOINT_URL_SQS and credentials."""
        for name, value in emulator.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", emulator.endpoint)
        broker = Broker("sqs://", _prefix(), delivery_limit=2, sqs=sqs_options(emulator))
        env = _task()
        with connected(broker) as (conn, publisher):
            broker.declare(conn)
            publisher.task(env, POOL)
            message = get(broker, conn, self.task_queue(broker))
            assert messages.decode(message.body) == env
            message.ack()


@pytest.mark.integration
class TestSQSBroker(SQSContract):
    """On moto's server."""

    @pytest.fixture
    def emulator(self, moto: MotoServer) -> MotoServer:
        return moto


@pytest.mark.integration
class TestLocalStackBroker(SQSContract):
    """On LocalStack, run without Docker (SQS, with SNS for the control broadcast)."""

    @pytest.fixture
    def emulator(self, localstack: LocalStackServer) -> LocalStackServer:
        return localstack


@pytest.mark.integration
class TestSQSProvisionedBroker(BrokerContract):
    """SQS_CREATE_QUEUES=false: the queues exist beforehand (``python -m infra.aws``
    creates them from ``topology.sqs_queues``), and the services only look them up."""

    @pytest.fixture
    def broker(self, moto: MotoServer) -> Iterator[Broker]:
        prefix = _prefix()
        provisioner = Broker(sqs_url(moto), prefix, delivery_limit=2, sqs=sqs_options(moto))
        provisioner.declare(provisioner.connection(), (POOL,))
        options = sqs_options(moto, create_queues=False)
        broker = Broker(sqs_url(moto), prefix, delivery_limit=2, sqs=options)
        with broker.connection() as conn:
            broker.declare(conn)
        yield broker

    def test_a_missing_queue_is_named(self, broker: Broker) -> None:
        with connected(broker) as (_, publisher), pytest.raises(SqsSetupError) as caught:
            publisher.task(_task(), "nosuchpool")
        assert topology.sqs_name(f"{broker.prefix}.tasks.nosuchpool") in str(caught.value)
        assert "\n" not in str(caught.value)
