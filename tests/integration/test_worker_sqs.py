"""The worker on SQS (moto): a task that outlasts the visibility timeout keeps its lease."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from libs.common import messages, settings, topology
from libs.common.broker import Broker, Publisher, SqsOptions
from libs.common.storage import Storage
from services.worker import worker as worker_module
from services.worker.worker import Options, Worker
from tests.integration.test_broker_contract import _task, assert_empty, get, sqs_client, sqs_url
from tests.servers import MotoServer

LEASE = 2


@pytest.mark.integration
def test_a_task_longer_than_its_lease_runs_once(
    moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def slow_handler(task: messages.CsvTask, *_: object, **__: object) -> messages.TaskResult:
        calls.append(task.task_id)
        time.sleep(LEASE * 2.5)
        return messages.TaskResult(task.task_id, task.seq, 1, 1, 0)

    monkeypatch.setattr(worker_module, "handle_csv", slow_handler)
    options = SqsOptions(region=moto.region, visibility_timeout=LEASE, wait_seconds=0)
    broker = Broker(sqs_url(moto), f"t{uuid.uuid4().hex[:10]}", delivery_limit=2, sqs=options)
    config = settings.load({"STORAGE_URL": str(tmp_path), "WORKER_CONCURRENCY": "2"})
    env = _task()
    with broker.connection() as conn:
        broker.declare(conn)
        Publisher(broker, conn).task(env, "shared")

    worker = Worker(config, Storage(config.storage_url), broker, Options(max_idle=1.0))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    thread.join(timeout=LEASE * 2.5 + 30)
    assert not thread.is_alive(), "the worker did not stop"

    assert calls == [env.body.task_id], "the task was delivered again while its worker lived"
    assert worker.processed == 1
    with broker.connection() as conn:
        events = topology.event_queue(broker.prefix, broker.delivery_limit)
        bodies: list[messages.Body] = []
        for _ in range(20):  # the result, and heartbeats: at start, every 5 s, "stopped" last
            event = get(broker, conn, events)
            bodies.append(messages.decode(event.body).body)
            event.ack()
            beats = [b.state for b in bodies if isinstance(b, messages.Heartbeat)]
            if "stopped" in beats and len(beats) < len(bodies):
                break
        results = [b for b in bodies if not isinstance(b, messages.Heartbeat)]
        assert results == [messages.TaskResult(env.body.task_id, 0, 1, 1, 0)]
        assert_empty(broker, conn, events)
        assert_empty(broker, conn, topology.task_queue(broker.prefix, "shared", 2))
        assert_empty(broker, conn, topology.dead_queue(broker.prefix))
    control = topology.sqs_name(topology.control_queue(broker.prefix, worker.id).name)
    left = sqs_client(moto).list_queues(QueueNamePrefix=control).get("QueueUrls", [])
    assert left == [], "the worker leaves its control queue behind"
