"""Fan-out and fan-in against real PostgreSQL: resumable, idempotent, counted once.

The broker here is the embedded ``memory://`` transport (real kombu, our own broker code),
because these tests are about the database side; the broker contract has its own suite.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection
from sqlalchemy import func, select

from libs.common import db, jobs, messages, topology
from libs.common.broker import Broker, Publisher
from libs.common.models import CANCELLED, COMPLETED, RUNNING, ItemError, Job, Task
from libs.common.storage import Storage
from services.dispatcher import fanout, results

pytestmark = pytest.mark.integration

ROWS = 1_050
CONFIG = fanout.FanoutConfig(rows_per_chunk=100, max_chunk_bytes=1 << 20, batch=4)


@pytest.fixture
def env(pg_url: str, tmp_path: Path) -> Iterator[tuple]:  # type: ignore[type-arg]
    engine = db.make_engine(pg_url)
    db.upgrade(engine)
    sessions = db.sessions(engine)
    storage = Storage(f"file://{tmp_path}")
    broker = Broker("memory://", f"t{uuid.uuid4().hex[:10]}", delivery_limit=3)
    with broker.connection() as conn:
        broker.declare(conn)
        yield sessions, storage, broker, conn
    engine.dispose()


def _submit(sessions, storage: Storage) -> str:  # type: ignore[no-untyped-def]
    job_id = jobs.new_job_id()
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["n", "word"])
    writer.writerows([i, f"w{i}"] for i in range(ROWS))
    storage.write(jobs.upload_key(job_id), text.getvalue().encode())
    with sessions() as session, session.begin():
        jobs.create_csv_job(
            session, job_id=job_id, source_bytes=0, header=["n", "word"], spec_json="",
            filename="t.csv",
        )  # fmt: skip
    return job_id


def _published_seqs(broker: Broker, conn: Connection) -> list[int]:
    queue = topology.task_queue(broker.prefix, "shared", broker.delivery_limit)
    bound = queue.bind(conn.default_channel)
    seqs = []
    for _ in range(1000):
        message = bound.get(no_ack=True)
        if message is None:
            break
        seqs.append(messages.decode(message.body).body.seq)
    return seqs


def _result(job_id: str, seq: int, rows: int, failed: int = 0) -> messages.TaskResult:
    errors = [messages.RowError(seq * 100 + 1, "n", "bad")] if failed else []
    body = messages.TaskResult(
        messages.task_id(job_id, seq), seq, rows_in=rows, rows_out=rows - failed,
        rows_failed=failed, errors=errors,
    )  # fmt: skip
    return body


def test_fan_out_resumes_from_its_cursor(env) -> None:  # type: ignore[no-untyped-def]
    sessions, storage, broker, conn = env
    job_id = _submit(sessions, storage)

    class Crash(Exception):
        pass

    class CrashingPublisher(Publisher):
        """Dies after six tasks: mid-way through the second batch of four."""

        sent = 0

        def task(self, env: messages.Envelope, pool: str) -> None:
            if self.sent == 6:
                raise Crash
            self.sent += 1
            super().task(env, pool)

    with pytest.raises(Crash):
        fanout.fan_out(sessions, storage, CrashingPublisher(broker, conn), CONFIG, job_id)
    first = _published_seqs(broker, conn)
    assert first == [0, 1, 2, 3, 4, 5]
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.cursor_seq == 4 and not job.fanout_done

    assert fanout.fan_out(sessions, storage, Publisher(broker, conn), CONFIG, job_id)
    again = _published_seqs(broker, conn)
    assert again == list(range(4, 11)), "resumes at the cursor: batch 2 again, then the rest"
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.tasks_total, job.rows_total, job.fanout_done) == (11, ROWS, True)
        assert session.scalar(select(func.count()).where(Task.job_id == job_id)) == 11


def test_results_count_once_and_complete_the_job(env) -> None:  # type: ignore[no-untyped-def]
    sessions, storage, broker, conn = env
    job_id = _submit(sessions, storage)
    assert fanout.fan_out(sessions, storage, Publisher(broker, conn), CONFIG, job_id)
    for seq in range(11):
        rows = 50 if seq == 10 else 100
        storage.write(jobs.part_key(job_id, seq), f"{seq}\n".encode() * (rows - (seq == 3)))
        for _ in range(2):  # every result arrives twice
            with sessions() as session, session.begin():
                results.record_result(
                    session, job_id, _result(job_id, seq, rows, failed=int(seq == 3))
                )
    assert results.finish_if_complete(sessions, storage, job_id)
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == COMPLETED
        assert (job.rows_done, job.rows_failed, job.tasks_done) == (ROWS - 1, 1, 11)
        assert session.scalar(select(func.count()).where(ItemError.job_id == job_id)) == 1
    output = storage.read_range(jobs.output_key(job_id), 0, storage.size(jobs.output_key(job_id)))
    lines = output.decode().splitlines()
    assert lines[0] == "n,word" and len(lines) == 1 + ROWS - 1
    assert lines[1:] == [
        str(s) for s in range(11) for _ in range((50 if s == 10 else 100) - (s == 3))
    ]


def test_a_dead_task_fails_the_job_and_retry_brings_it_back(env) -> None:  # type: ignore[no-untyped-def]
    sessions, storage, broker, conn = env
    job_id = _submit(sessions, storage)
    assert fanout.fan_out(sessions, storage, Publisher(broker, conn), CONFIG, job_id)
    _published_seqs(broker, conn)
    for seq in range(10):
        storage.write(jobs.part_key(job_id, seq), b"")
        with sessions() as session, session.begin():
            results.record_result(session, job_id, _result(job_id, seq, 100))
    with sessions() as session, session.begin():
        task_id = messages.task_id(job_id, 10)
        assert results.record_dead(session, job_id, task_id, "gave up after 5 attempts")
        assert not results.record_dead(session, job_id, task_id, "a duplicate dead letter")
    assert results.finish_if_complete(sessions, storage, job_id)
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == "failed"
        assert "1 of 11 tasks" in (job.error or "") and "gave up after 5 attempts" in job.error
        assert job.rows_failed == 50
    with sessions() as session, session.begin():
        assert jobs.retry_dead(session, job_id) == 1
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == RUNNING and job.rows_failed == 0
        assert session.scalar(select(func.count()).where(ItemError.job_id == job_id)) == 0


def test_cancel_during_fan_out_stops_it(env) -> None:  # type: ignore[no-untyped-def]
    sessions, storage, broker, conn = env
    job_id = _submit(sessions, storage)

    class CancellingPublisher(Publisher):
        def task(self, env: messages.Envelope, pool: str) -> None:
            super().task(env, pool)
            if env.body.seq == 1:  # type: ignore[union-attr]
                with sessions() as session, session.begin():
                    jobs.cancel(session, job_id)

    done = fanout.fan_out(sessions, storage, CancellingPublisher(broker, conn), CONFIG, job_id)
    assert done is False
    assert _published_seqs(broker, conn) == [0, 1, 2, 3]  # the batch in flight, no more
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == CANCELLED and job.tasks_total == 4
