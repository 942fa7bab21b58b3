"""The least-privilege worker user of ``infra/rabbitmq.py``, on a real RabbitMQ.

The definitions are imported with ``rabbitmqctl import_definitions``; the services then
declare their topology over them (any difference would fail with PRECONDITION_FAILED).
The worker user can do what a worker does, a real ``Worker`` included, and nothing more:
it cannot read the job queue, publish a job or a task, or create queues or exchanges.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
from amqp.exceptions import AccessRefused
from kombu import Connection, Exchange, Queue

from infra import rabbitmq as infra_rabbitmq
from libs.common import messages, settings, topology
from libs.common.broker import Broker, Publisher
from libs.common.storage import Storage
from services.worker.worker import Worker
from tests.servers import RabbitMQServer

LIMIT = 3
PASSWORD = "s3cret/+="  # characters that need quoting in a URL


@pytest.fixture
def setup(rabbitmq: RabbitMQServer, tmp_path: Path) -> Iterator[SimpleNamespace]:
    prefix = f"lp{uuid.uuid4().hex[:8]}"
    user = f"worker-{prefix}"
    doc = infra_rabbitmq.definitions(
        prefix, ("shared",), LIMIT, worker_user=user, worker_password=PASSWORD
    )
    file = tmp_path / "definitions.json"
    file.write_text(json.dumps(doc))
    rabbitmq.rabbitmqctl("import_definitions", str(file))
    services = Broker(rabbitmq.url, prefix, LIMIT)
    with services.connection() as conn:
        services.declare(conn, pools=("shared",))  # the same topology, declared again
    host = rabbitmq.url.split("@", 1)[1]
    worker_url = f"amqp://{user}:{quote(PASSWORD, safe='')}@{host}"
    yield SimpleNamespace(
        prefix=prefix,
        services=services,
        worker=Broker(worker_url, prefix, LIMIT),
        wrong=f"amqp://{user}:wrong@{host}",
    )
    rabbitmq.rabbitmqctl("delete_user", user)


def refused(action: Callable[[Connection], Any], broker: Broker) -> str:
    """Run ``action`` on a fresh connection of ``broker``; the broker's 403, in words."""
    with broker.connection() as conn, pytest.raises(AccessRefused) as caught:
        action(conn)
    return str(caught.value)


def get(broker: Broker, queue: Queue, timeout: float = 15.0) -> Any:
    with broker.connection() as conn:
        bound = queue.bind(conn.default_channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = bound.get(no_ack=True)
            if message is not None:
                return message
            time.sleep(0.05)
    pytest.fail(f"nothing arrived in {queue.name} within {timeout} s")


def task_env(prefix: str) -> messages.Envelope:
    return messages.envelope("job1", messages.CanaryTask(f"job1-{uuid.uuid4().hex[:6]}", 1, 0.0))


def test_the_worker_user_does_a_workers_job(setup: SimpleNamespace) -> None:
    p, services, worker = setup.prefix, setup.services, setup.worker
    tasks = topology.task_queue(p, "shared", LIMIT, declare=False)
    events = topology.event_queue(p, LIMIT)
    with services.connection() as conn:
        Publisher(services, conn).task(task_env(p), "shared")
    message = get(worker, tasks)  # consume a task
    assert isinstance(messages.decode(message.body).body, messages.CanaryTask)

    with worker.connection() as conn:
        publisher = Publisher(worker, conn)
        publisher.event(messages.envelope("job1", messages.TrackProgress("job1-1", 1, "x")))
        assert worker.queue_depth(conn, tasks.name) == 0  # --drain's check, passively
        # a retry goes back to the task queue through a delay tier
        fake = SimpleNamespace(delivery_info={"routing_key": topology.task_key("shared")})
        fake.ack = lambda: None
        publisher.retry(fake, task_env(p), 1.0)  # type: ignore[arg-type]
    assert isinstance(messages.decode(get(services, events).body).body, messages.TrackProgress)
    assert isinstance(messages.decode(get(worker, tasks).body).body, messages.CanaryTask)

    # its control queue: named by the broker, bound to the control fanout
    with worker.connection() as conn:
        control = topology.control_queue(p, "w1", server_named=True).bind(conn.default_channel)
        control.declare()
        assert control.name.startswith("amq.gen-")
        with services.connection() as sconn:
            Publisher(services, sconn).control(messages.envelope("job1", messages.JobCancelled()))
        deadline = time.monotonic() + 10
        while (got := control.get(no_ack=True)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got is not None and isinstance(messages.decode(got.body).body, messages.JobCancelled)


def test_the_worker_user_cannot_do_more(setup: SimpleNamespace) -> None:
    p, worker = setup.prefix, setup.worker
    jobs = topology.job_queue(p, LIMIT)
    jobs.no_declare = True
    reason = refused(lambda c: jobs.bind(c.default_channel).get(), worker)
    assert reason.startswith("Basic.get") and f"queue '{p}.jobs'" in reason
    reason = refused(
        lambda c: topology.dead_queue(p).bind(c.default_channel).queue_declare(passive=False),
        worker,
    )
    assert reason.startswith("Queue.declare") and f"queue '{p}.dead'" in reason
    for name in (f"{p}.evil", f"{p}.tasks.newpool"):
        reason = refused(
            lambda c, n=name: Queue(n, durable=True).bind(c.default_channel).queue_declare(), worker
        )
        assert reason.startswith("Queue.declare") and f"queue '{name}'" in reason
    reason = refused(
        lambda c: Exchange(f"{p}.mine", type="fanout").bind(c.default_channel).declare(), worker
    )
    assert reason.startswith("Exchange.declare") and f"exchange '{p}.mine'" in reason

    def publish(key: str) -> Callable[[Connection], None]:
        return lambda c: Publisher(worker, c).publish(task_env(p), key)

    assert "topic" in refused(publish(topology.JOB_KEY), worker)  # no jobs
    assert "topic" in refused(publish(topology.task_key("shared")), worker)  # no tasks

    def retry_as(key: str) -> Callable[[Connection], None]:
        fake = SimpleNamespace(delivery_info={"routing_key": key}, ack=lambda: None)
        return lambda c: Publisher(worker, c).retry(fake, task_env(p), 1.0)  # type: ignore[arg-type]

    assert "topic" in refused(retry_as(topology.JOB_KEY), worker)  # no job through a delay
    with Connection(setup.wrong) as conn, pytest.raises(AccessRefused):
        conn.ensure_connection(max_retries=1)  # the password is checked (stored hashed)


def test_a_real_worker_runs_tasks_as_the_worker_user(
    setup: SimpleNamespace, tmp_path: Path
) -> None:
    p, services, worker = setup.prefix, setup.services, setup.worker
    config = settings.load(
        {"BROKER_URL": worker.url, "QUEUE_PREFIX": p, "DELIVERY_LIMIT": str(LIMIT),
         "STORAGE_URL": str(tmp_path), "HEARTBEAT_SECONDS": "0.5", "WORKER_DECLARE": "false"}
    )  # fmt: skip
    running = Worker(config, Storage(config.storage_url), worker)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    try:
        with services.connection() as conn:
            publisher = Publisher(services, conn)
            sent = [task_env(p) for _ in range(3)]
            for env in sent:
                publisher.task(env, "shared")
        events = topology.event_queue(p, LIMIT)
        done: set[str] = set()
        deadline = time.monotonic() + 60
        while len(done) < 3 and time.monotonic() < deadline:
            body = messages.decode(get(services, events).body).body
            if isinstance(body, messages.TaskResult):
                done.add(body.task_id)
        assert done == {env.body.task_id for env in sent}  # type: ignore[union-attr]
        assert running.loop.connected.is_set() and running.control.connected.is_set()
    finally:
        running.request_stop()
        thread.join(30)
    assert not thread.is_alive()
