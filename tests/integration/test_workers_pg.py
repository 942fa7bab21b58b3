"""The worker registry on real PostgreSQL: upserts, out-of-order and racing heartbeats."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from libs.common import db, messages
from libs.common.models import Worker
from services.dispatcher import registry

pytestmark = pytest.mark.integration


@pytest.fixture
def sessions(pg_url: str) -> Iterator[sessionmaker[Session]]:
    engine = db.make_engine(pg_url)
    db.upgrade(engine)
    yield db.sessions(engine)
    engine.dispose()


def beat(worker_id: str, state: str = "online", processed: int = 0) -> messages.Heartbeat:
    caps = messages.Capabilities(handlers=["csv"], ffmpeg=False, cores=4, concurrency=2)
    return messages.Heartbeat(
        worker_id, f"name-{worker_id}", state, host="h", pid=42, version="0.1.0",
        pool="shared", capabilities=caps, processed=processed, interval=2.0,
        started_at=1.0, current_job="job1",
    )  # fmt: skip


def record(sessions: sessionmaker[Session], hb: messages.Heartbeat, sent_at: float) -> None:
    with sessions() as s, s.begin():
        registry.record(s, hb, sent_at)


def test_first_heartbeat_inserts_later_ones_update(sessions: sessionmaker[Session]) -> None:
    record(sessions, beat("w1", processed=1), 10.0)
    with sessions() as s:
        first = s.get(Worker, "w1")
    assert first is not None
    assert first.capabilities == {"handlers": ["csv"], "ffmpeg": False, "cores": 4,
                                  "concurrency": 2}  # fmt: skip
    assert (first.name, first.pid, first.current_job, first.revoked_at) == (
        "name-w1", 42, "job1", None,
    )  # fmt: skip
    record(sessions, beat("w1", "stopping", processed=5), 12.0)
    with sessions() as s:
        rows = s.scalars(select(Worker)).all()
    assert [(w.id, w.state, w.processed, w.sent_at) for w in rows] == [("w1", "stopping", 5, 12.0)]
    assert rows[0].last_seen >= first.last_seen


def test_out_of_order_heartbeats_keep_the_newest(sessions: sessionmaker[Session]) -> None:
    record(sessions, beat("w1", "stopped", processed=9), 20.0)
    record(sessions, beat("w1", "online", processed=3), 15.0)  # sent earlier, delivered later
    with sessions() as s:
        row = s.get(Worker, "w1")
    assert row is not None and (row.state, row.processed, row.sent_at) == ("stopped", 9, 20.0)


def test_racing_dispatchers_keep_the_newest(sessions: sessionmaker[Session]) -> None:
    """Several threads record one worker's heartbeats in a shuffled order at once."""
    order = list(range(1, 201))
    random.Random(7).shuffle(order)
    errors: list[BaseException] = []

    def run(part: list[int]) -> None:
        try:
            for n in part:
                record(sessions, beat("w1", processed=n), float(n))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(order[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    with sessions() as s:
        row = s.get(Worker, "w1")
    assert row is not None and (row.processed, row.sent_at) == (200, 200.0)


def test_status_and_order_computed_in_sql(sessions: sessionmaker[Session]) -> None:
    for worker_id, state in (("a", "online"), ("b", "online"), ("c", "stopping"), ("d", "stopped")):
        record(sessions, beat(worker_id, state), 1.0)
    seen = {"a": 1000.0, "b": 1009.0, "c": 1008.0, "d": 1009.5}
    with sessions() as s, s.begin():
        for worker_id, at in seen.items():
            s.execute(update(Worker).where(Worker.id == worker_id).values(last_seen=at))
    with sessions() as s:  # at 1010 with interval 2 and 3 missed: offline before 1004
        rows, total = registry.page(s, 1010.0, 3, None, 10, 0)
        assert [(w.id, status) for w, status in rows] == [
            ("b", "online"), ("d", "stopped"), ("c", "stopping"), ("a", "offline"),
        ]  # fmt: skip
        assert total == 4
        assert registry.counts(s, 1010.0, 3) == {
            "online": 1, "stopping": 1, "offline": 1, "stopped": 1,
        }  # fmt: skip
        for w, status in rows:
            assert registry.status(w.state, w.last_seen, w.interval, 1010.0, 3) == status
