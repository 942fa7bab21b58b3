"""Track jobs' planning and fan-in on real PostgreSQL (and SQLite, the embedded default).

Planning upserts tracks by key and skips what is known; results keep vectors exactly
once; a dead-lettered task's tracks are tried again by the next job.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from kombu import Connection
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from libs.common import db, jobs, messages, topology
from libs.common.audio.layout import FEATURE_VERSION
from libs.common.broker import Broker, Publisher
from libs.common.models import COMPLETED, FAILED, ItemError, Job, Track
from libs.common.settings import Settings
from services.dispatcher import fanout, results, tracklist

pytestmark = pytest.mark.integration

Env = tuple[sessionmaker[Session], Broker, Connection]


@pytest.fixture(params=["postgresql", "sqlite"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else (
        f"sqlite:///{tmp_path}/t.db"
    )  # fmt: skip
    engine = db.make_engine(url)
    db.upgrade(engine)
    broker = Broker("memory://", f"t{uuid.uuid4().hex[:10]}", delivery_limit=3)
    with broker.connection() as conn:
        broker.declare(conn)
        yield db.sessions(engine), broker, conn
    engine.dispose()


def listed(n: int) -> list[tracklist.Listed]:
    return [tracklist.Listed(f"a{i}\u2014t{i}", "lastfm", f"A{i}", f"T{i}") for i in range(n)]


def new_job(sessions: sessionmaker[Session]) -> str:
    job_id = jobs.new_job_id()
    with sessions() as session, session.begin():
        jobs.create_track_job(
            session, job_id=job_id, kind=jobs.LASTFM,
            params={"username": "u", "source": "top", "period": "overall", "limit": 50},
        )  # fmt: skip
    return job_id


def plan_and_publish(env: Env, items: list[tracklist.Listed], per_task: int = 3) -> str:
    sessions, broker, conn = env
    job_id = new_job(sessions)
    fanout.start(sessions, job_id)
    assert tracklist.plan(sessions, job_id, items, per_task)
    assert not tracklist.plan(sessions, job_id, items, per_task), "planned once"
    settings = Settings(tracks_per_task=per_task)
    assert fanout.fan_out_tracks(sessions, Publisher(broker, conn), settings, job_id)
    return job_id


def drain(env: Env) -> list[messages.TrackTask]:
    _, broker, conn = env
    queue = topology.task_queue(broker.prefix, "shared", broker.delivery_limit)
    found = []
    with conn.SimpleQueue(queue) as simple:
        for _ in range(1000):
            try:
                message = simple.get(timeout=0.05)
            except simple.Empty:
                break
            body = messages.decode(message.body).body
            assert isinstance(body, messages.TrackTask)
            found.append(body)
            message.ack()
    return found


def vector(seed: int) -> bytes:
    v = np.random.default_rng(seed).normal(size=72).astype("<f4")
    return (v / np.linalg.norm(v)).astype("<f4").tobytes()


def outcome(ref: messages.TrackRef, ok: bool) -> messages.TrackOutcome:
    if ok:
        return messages.TrackOutcome(ref.id, vector=vector(ref.id), version=FEATURE_VERSION,
                                     duration=30.0, summary={"key": "A"})  # fmt: skip
    return messages.TrackOutcome(ref.id, error="not found")


def result(task: messages.TrackTask, ok: bool = True) -> messages.TaskResult:
    outcomes = [outcome(ref, ok or i > 0) for i, ref in enumerate(task.tracks)]
    failed = sum(o.vector is None for o in outcomes)
    return messages.TaskResult(
        task.task_id, task.seq, rows_in=len(outcomes), rows_out=len(outcomes) - failed,
        rows_failed=failed, tracks=outcomes,
        errors=[messages.RowError(task.tracks[0].row, "track", "not found")] if failed else [],
    )  # fmt: skip


def test_plan_publishes_tracks_in_tasks_and_fan_in_keeps_vectors_once(env: Env) -> None:
    sessions = env[0]
    job_id = plan_and_publish(env, listed(7) + listed(2))  # two listed twice
    tasks = drain(env)
    assert [len(t.tracks) for t in tasks] == [3, 3, 1]
    assert [r.row for t in tasks for r in t.tracks] == list(range(1, 8))
    assert [r.title for r in tasks[0].tracks] == ["T0", "T1", "T2"]
    for task in tasks:
        with sessions() as s, s.begin():
            assert results.record_result(s, job_id, result(task, ok=task.seq != 1))
        with sessions() as s, s.begin():
            assert not results.record_result(s, job_id, result(task)), "a duplicate"
    assert results.finish_if_complete(sessions, None, job_id)  # type: ignore[arg-type]
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == COMPLETED
        assert (job.rows_total, job.rows_done, job.rows_failed) == (7, 6, 1)
        tracks = {t.title: t for t in s.scalars(select(Track))}
    assert len(tracks) == 7
    assert tracks["T3"].state == "unavailable" and tracks["T3"].error == "not found"
    assert tracks["T0"].state == "vectorized" and tracks["T0"].vector == vector(tracks["T0"].id)
    assert tracks["T0"].vector_version == FEATURE_VERSION and tracks["T0"].summary == {"key": "A"}


def test_a_second_job_skips_known_tracks_and_retries_failed_ones(env: Env) -> None:
    sessions = env[0]
    first = plan_and_publish(env, listed(6))
    tasks = drain(env)
    with sessions() as s, s.begin():  # task 0: two vectorized, one unavailable
        results.record_result(s, first, result(tasks[0], ok=False))
    with sessions() as s, s.begin():  # task 1 dead-lettered: its tracks failed
        assert results.record_dead(s, first, tasks[1].task_id, "worker crashed 6 times")
    with sessions() as s:
        states = sorted(t.state for t in s.scalars(select(Track)))
    assert states == ["failed"] * 3 + ["unavailable"] + ["vectorized"] * 2
    results.finish_if_complete(sessions, None, first)  # type: ignore[arg-type]
    with sessions() as s:
        job = s.get(Job, first)
        assert job is not None and job.state == FAILED
        reasons = s.scalars(select(ItemError.reason).where(ItemError.job_id == first)).all()
    assert "tracks 4-6 were not processed: worker crashed 6 times" in reasons

    second = plan_and_publish(env, listed(8))
    again = drain(env)
    assert sorted(r.title for t in again for r in t.tracks) == ["T3", "T4", "T5", "T6", "T7"]
    with sessions() as s:
        job = s.get(Job, second)
        assert job is not None
        assert job.params["skipped"] == 3
        assert (job.params["skipped_vectorized"], job.params["skipped_unavailable"]) == (2, 1)
        assert (job.rows_total, job.tasks_total) == (5, 2)


def test_nothing_new_completes_the_job_with_no_tasks(env: Env) -> None:
    sessions = env[0]
    first = plan_and_publish(env, listed(2))
    (task,) = drain(env)
    with sessions() as s, s.begin():
        results.record_result(s, first, result(task))
    second = plan_and_publish(env, listed(2))
    assert drain(env) == []
    assert results.finish_if_complete(sessions, None, second)  # type: ignore[arg-type]
    with sessions() as s:
        job = s.get(Job, second)
        assert job is not None and job.state == COMPLETED and job.params["skipped"] == 2
