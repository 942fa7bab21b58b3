"""Heartbeats (services/worker/heartbeat.py) and the worker registry's rules
(services/dispatcher/registry.py): counting, the rate, when to send, the status shown,
and the upsert that ignores out-of-order heartbeats (here on SQLite; PostgreSQL in
tests/integration/test_workers_pg.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from libs.common import db, messages
from libs.common.broker import Broker, SqsOptions
from libs.common.models import Worker, WorkerToken
from libs.common.settings import load
from services.dispatcher import registry
from services.worker.heartbeat import RATE_WINDOW, Heartbeats, Snapshot

SETTINGS = load({"HEARTBEAT_SECONDS": "5", "WORKER_CONCURRENCY": "3"})
MEMORY = Broker("memory://", "t", delivery_limit=3)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Stands in for a Publisher: keeps what would have been published."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[messages.Envelope] = []
        self.fail = fail

    def event(self, env: messages.Envelope) -> None:
        if self.fail:
            raise ConnectionError("broker gone")
        self.sent.append(env)


def beats(clock: Clock, ffmpeg: bool = True) -> Heartbeats:
    return Heartbeats("host-1-abc", "w1", SETTINGS, MEMORY, ffmpeg=ffmpeg, clock=clock)


SNAP = Snapshot(messages.W_ONLINE, 1, 7, 2, "job1")


# --------------------------------------------------------------------------- worker side


def test_rate_is_items_done_in_the_last_minute() -> None:
    clock = Clock()
    hb = beats(clock)
    assert hb.items_per_second() == 0.0
    clock.now += 10
    hb.count(500)
    hb.count(300)
    assert hb.items_per_second() == pytest.approx(800 / 10)  # since start: 10 s so far
    clock.now += 50
    hb.count(400)
    assert hb.items_per_second() == pytest.approx(1200 / RATE_WINDOW)
    clock.now += 30  # the first two fall out of the window
    assert hb.items_per_second() == pytest.approx(400 / RATE_WINDOW)
    clock.now += 31
    assert hb.items_per_second() == 0.0


def test_a_task_done_right_at_start_does_not_make_an_absurd_rate() -> None:
    clock = Clock()
    hb = beats(clock)
    clock.now += 0.001
    hb.count(5000)
    assert hb.items_per_second() == 5000.0  # over at least a second


def test_first_heartbeat_at_once_then_every_interval() -> None:
    clock = Clock()
    hb = beats(clock)
    out = Recorder()
    taken: list[int] = []

    def snapshot() -> Snapshot:
        taken.append(1)
        return SNAP

    hb.tick(out, snapshot)  # type: ignore[arg-type]
    assert len(out.sent) == 1
    for _ in range(4):
        clock.now += 1.2
        hb.tick(out, snapshot)  # type: ignore[arg-type]
    assert len(out.sent) == 1 and len(taken) == 1  # not due: no snapshot taken either
    clock.now += 0.2  # 5.0 s after the first
    hb.tick(out, snapshot)  # type: ignore[arg-type]
    assert len(out.sent) == 2


def test_the_heartbeat_says_who_and_how() -> None:
    clock = Clock()
    hb = beats(clock)
    clock.now += 2
    hb.count(10)
    out = Recorder()
    hb.send(out, SNAP)  # type: ignore[arg-type]
    env = out.sent[0]
    assert env.job_id == ""
    beat = env.body
    assert isinstance(beat, messages.Heartbeat)
    assert (beat.worker_id, beat.name, beat.pool, beat.state) == (
        "host-1-abc",
        "w1",
        "shared",
        "online",
    )
    assert (beat.in_flight, beat.processed, beat.failed, beat.current_job) == (1, 7, 2, "job1")
    assert beat.items_per_second == 5.0 and beat.interval == 5.0
    assert beat.pid > 0 and beat.host and beat.version and beat.started_at > 0
    caps = beat.capabilities
    assert caps.handlers == ["csv", "tracks", "canary"] and caps.ffmpeg
    assert caps.cores >= 1 and caps.concurrency == 3
    assert beats(clock, ffmpeg=False).capabilities.handlers == ["csv", "canary"]


def test_the_last_heartbeat_is_stopped_and_never_raises() -> None:
    hb = beats(Clock())
    out = Recorder()
    hb.final(out, processed=9, failed=1)  # type: ignore[arg-type]
    beat = out.sent[0].body
    assert isinstance(beat, messages.Heartbeat)
    assert (beat.state, beat.in_flight, beat.current_job) == ("stopped", 0, None)
    assert (beat.processed, beat.failed) == (9, 1)
    hb.final(Recorder(fail=True), processed=9, failed=1)  # type: ignore[arg-type]  # logged only


def test_on_sqs_the_interval_covers_a_long_polling_receive() -> None:
    sqs = Broker("sqs://", "t", delivery_limit=3, sqs=SqsOptions(wait_seconds=10))
    assert Heartbeats("i", "n", SETTINGS, sqs, ffmpeg=False).interval == 10.0
    assert Heartbeats("i", "n", SETTINGS, MEMORY, ffmpeg=False).interval == 5.0


def test_heartbeat_round_trips_and_old_senders_decode_with_defaults() -> None:
    beat = messages.Heartbeat("w-1", "w1", "online", pool="gpu", current_job=None)
    env = messages.envelope("", beat)
    assert messages.decode(messages.encode(env)) == env
    minimal = b'{"id":"m","job_id":"","body":{"type":"worker.heartbeat","worker_id":"x",'
    minimal += b'"name":"x","state":"online"}}'
    decoded = messages.decode(minimal).body
    assert isinstance(decoded, messages.Heartbeat)
    assert decoded.capabilities == messages.Capabilities() and decoded.interval == 5.0
    with pytest.raises(msgspec.ValidationError):
        messages.decode(minimal.replace(b'"state":"online"', b'"state":3'))


# --------------------------------------------------------------------------- status


@pytest.mark.parametrize(
    ("state", "age", "expected"),
    [
        ("online", 0.0, "online"),
        ("online", 14.9, "online"),  # interval 5, 3 missed: offline after 15 s
        ("online", 15.1, "offline"),
        ("stopping", 3.0, "stopping"),
        ("stopping", 20.0, "offline"),
        ("stopped", 0.0, "stopped"),
        ("stopped", 3600.0, "stopped"),  # a clean exit stays stopped, never offline
        ("paused", 1.0, "online"),  # a state a newer worker may send
    ],
)
def test_status(state: str, age: float, expected: str) -> None:
    assert registry.status(state, 1000.0, 5.0, 1000.0 + age, 3) == expected


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = db.make_engine(f"sqlite:///{tmp_path}/registry.db")
    db.upgrade(engine)
    yield db.sessions(engine)
    engine.dispose()


def heartbeat(worker_id: str, state: str = "online", **fields: Any) -> messages.Heartbeat:
    fields.setdefault("interval", 5.0)
    return messages.Heartbeat(worker_id, worker_id.upper(), state, **fields)


def test_the_sql_status_agrees_with_the_rule(sessions: sessionmaker[Session]) -> None:
    cases = [(state, age) for state in ("online", "stopping", "stopped") for age in (1, 14, 16)]
    with sessions() as s, s.begin():
        for n, (state, _) in enumerate(cases):
            registry.record(s, heartbeat(f"w{n}", state), sent_at=1.0)
    with sessions() as s:
        rows = {w.id: w for w in s.scalars(select(Worker))}
        for n, (_, age) in enumerate(cases):
            at = rows[f"w{n}"].last_seen + age
            (sql,) = s.execute(
                select(registry.status_column(at, 3)).where(Worker.id == f"w{n}")
            ).one()
            w = rows[f"w{n}"]
            assert sql == registry.status(w.state, w.last_seen, w.interval, at, 3), cases[n]


def test_a_late_heartbeat_never_overwrites_a_newer_one(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        registry.record(s, heartbeat("w1", processed=5), sent_at=100.0)
        registry.record(s, heartbeat("w1", "stopped", processed=9), sent_at=110.0)
        registry.record(s, heartbeat("w1", processed=7), sent_at=105.0)  # delivered late
        registry.record(s, heartbeat("w1", processed=7), sent_at=110.0)  # same time: a copy
    with sessions() as s:
        (row,) = s.scalars(select(Worker)).all()
    assert (row.state, row.processed, row.sent_at) == ("stopped", 9, 110.0)


def test_page_lists_online_first_then_most_recent(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        for worker_id, state in (("a", "stopped"), ("b", "online"), ("c", "online")):
            registry.record(s, heartbeat(worker_id, state), sent_at=1.0)
        s.execute(Worker.__table__.update().values(last_seen=1000.0))
        s.execute(Worker.__table__.update().where(Worker.id == "a").values(last_seen=1090.0))
        s.execute(Worker.__table__.update().where(Worker.id == "c").values(last_seen=1080.0))
    with sessions() as s:
        rows, total = registry.page(s, 1090.0, 3, None, 10, 0)
        assert [(w.id, status) for w, status in rows] == [
            ("c", "online"), ("a", "stopped"), ("b", "offline"),
        ]  # fmt: skip
        assert total == 3
        rows, total = registry.page(s, 1090.0, 3, "offline", 10, 0)
        assert [w.id for w, _ in rows] == ["b"] and total == 1
        rows, total = registry.page(s, 1090.0, 3, None, 1, 1)
        assert [w.id for w, _ in rows] == ["a"] and total == 3
        counts = registry.counts(s, 1090.0, 3)
        assert counts == {"online": 1, "stopping": 0, "offline": 1, "stopped": 1}


def test_record_says_when_a_running_worker_was_revoked(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        s.add(WorkerToken(worker_id="p1", token_hash="h", name="lent", pool="remote-1"))
        assert registry.record(s, heartbeat("w1", paired_id="p1"), sent_at=1.0) is False
        assert registry.record(s, heartbeat("op"), sent_at=1.0) is False
    with sessions() as s, s.begin():
        s.execute(update(WorkerToken).values(revoked_at=50.0))
    with sessions() as s, s.begin():
        # a process of the revoked pairing (one started after the revocation, too)
        assert registry.record(s, heartbeat("w1", paired_id="p1"), sent_at=2.0) is True
        assert registry.record(s, heartbeat("w2", paired_id="p1"), sent_at=2.0) is True
        assert registry.record(s, heartbeat("op"), sent_at=2.0) is False
        # its last heartbeat: nothing more to tell it
        assert registry.record(s, heartbeat("w1", "stopped", paired_id="p1"), sent_at=3.0) is False
    with sessions() as s:
        rows = {w.id: w for w in s.scalars(select(Worker))}
    assert rows["w1"].revoked_at == rows["w2"].revoked_at == 50.0
    assert rows["w1"].paired_id == "p1" and rows["op"].paired_id is None
    assert rows["op"].revoked_at is None
