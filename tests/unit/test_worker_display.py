"""The worker's terminal display, read from a fake worker's state (no terminal, no broker)."""

from __future__ import annotations

import io
import logging
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from libs.common import messages
from services.worker.display import Display, PlainLines, clock_text, panel, summary_line
from services.worker.status import Sampler, broker_host

BROKER = "amqps://lender:pa55word@rabbit.example:5671/conveyor"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def csv_task(task_id: str) -> messages.CsvTask:
    return messages.CsvTask(
        task_id=task_id, seq=7, source="uploads/j.csv", start=0, end=10, first_row=5001,
        rows=5000, header=["a"], spec="{}", output="jobs/j/parts/7.csv",
    )  # fmt: skip


def fake_worker(**changes: Any) -> SimpleNamespace:
    state = {
        "name": "laptop",
        "settings": SimpleNamespace(pool="pair-abc", broker_url=BROKER),
        "processed": 0,
        "failed": 0,
        "in_flight": [],
        "loop": SimpleNamespace(name="worker laptop", connected=threading.Event()),
        "stopping": threading.Event(),
    }
    return SimpleNamespace(**{**state, **changes})


def busy(worker: SimpleNamespace) -> None:
    body = csv_task("job-1-7")
    worker.in_flight = [SimpleNamespace(env=SimpleNamespace(job_id="job-1", body=body))]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (BROKER, "rabbit.example:5671"),
        ("amqp://guest:guest@127.0.0.1//", "127.0.0.1"),
        ("sqs://AKIA:secret@", "Amazon SQS"),
        ("sqs://", "Amazon SQS"),
        (None, "in-process"),
    ],
)
def test_the_broker_is_shown_by_host_only(url: str | None, shown: str) -> None:
    assert broker_host(url) == shown


def test_plain_lines_follow_the_worker() -> None:
    worker, clock = fake_worker(), Clock()
    sampler, plain = Sampler(worker, clock), PlainLines(every=10.0)

    def lines() -> list[str]:
        snapshot = sampler.snapshot()
        return plain.lines(snapshot, snapshot.uptime)

    assert lines() == ["worker laptop: connecting to rabbit.example:5671, pool pair-abc"]
    assert lines() == []  # nothing changed
    worker.loop.connected.set()
    clock.now += 1
    assert lines() == ["worker laptop: connected to rabbit.example:5671, pool pair-abc"]

    busy(worker)
    worker.processed, worker.failed = 30, 1
    clock.now += 9
    assert lines() == [
        "worker laptop: 30 done, 1 failed, 3.0 tasks/s, job job-1, "
        "task job-1-7 (rows 5001-10000), up 0:00:10"
    ]
    clock.now += 5
    assert lines() == []  # the next summary is due 10 s after the last

    worker.stopping.set()
    assert lines() == ["worker laptop: stopping: finishing 1 tasks in flight"]
    sampler.stopped = True
    assert lines() == ["worker laptop: stopped"]
    assert all("pa55word" not in line and "lender" not in line for line in lines())


def test_reconnecting_shows_the_reason_from_the_loop_log() -> None:
    worker = fake_worker()
    sampler = Sampler(worker, Clock())
    logger = logging.getLogger("libs.common.consuming")
    logger.addHandler(sampler.watch)
    try:
        logger.warning(
            "%s: broker connection lost (%s); reconnecting in %.1fs", "worker laptop",
            ConnectionRefusedError(111, "Connection refused"), 2.0,
            extra={"action": "reconnect", "consumer": "worker laptop"},
        )  # fmt: skip
        logger.warning(
            "%s: broker connection lost (%s)", "worker laptop control", "other",
            extra={"action": "reconnect", "consumer": "worker laptop control"},
        )  # fmt: skip
    finally:
        logger.removeHandler(sampler.watch)
    snapshot = sampler.snapshot()
    assert snapshot.state == "reconnecting"
    assert snapshot.error == "broker connection lost ([Errno 111] Connection refused)"
    worker.loop.connected.set()
    assert (sampler.snapshot().state, sampler.snapshot().error) == ("connected", None)


def test_the_heartbeats_item_rate_wins_over_the_task_rate() -> None:
    worker = fake_worker(beats=SimpleNamespace(items_per_second=lambda: 812.5))
    snapshot = Sampler(worker, Clock()).snapshot()
    assert (snapshot.rate, snapshot.rate_unit) == (812.5, "items/s")
    assert "812.5 items/s" in summary_line(snapshot)


def test_a_failing_item_rate_falls_back_to_tasks() -> None:
    def racing() -> float:
        raise IndexError("pop from an empty deque")

    worker = fake_worker(processed=5, beats=SimpleNamespace(items_per_second=racing))
    snapshot = Sampler(worker, Clock()).snapshot()
    assert (snapshot.rate, snapshot.rate_unit) == (0.0, "tasks/s")


def test_missing_attributes_show_as_unknown() -> None:
    snapshot = Sampler(object(), Clock()).snapshot()
    assert (snapshot.name, snapshot.pool, snapshot.state) == ("?", "?", "connecting")
    assert (snapshot.done, snapshot.tasks) == (0, ())


def test_the_panel() -> None:
    worker = fake_worker(processed=4, failed=2)
    worker.loop.connected.set()
    busy(worker)
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(panel(Sampler(worker).snapshot()))
    text = out.getvalue()
    for expected in (
        "Conveyor worker laptop", "rabbit.example:5671  (pool pair-abc)", "● connected",
        "job-1-7 (rows 5001-10000)", "4 done", "2 failed", "0:00:00",
    ):  # fmt: skip
        assert expected in text, text
    assert "pa55word" not in text


def test_clock_text() -> None:
    assert [clock_text(s) for s in (0, 59.9, 61, 3600 * 27 + 5)] == [
        "0:00:00", "0:00:59", "0:01:01", "27:00:05",
    ]  # fmt: skip


def wait_for(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_display_thread_prints_plain_lines_and_a_last_summary() -> None:
    worker, out = fake_worker(), io.StringIO()
    display = Display(worker, "plain", out)
    display.start()
    try:
        wait_for(lambda: "connecting to" in out.getvalue())
        worker.loop.connected.set()
        wait_for(lambda: "connected to rabbit.example" in out.getvalue())
        worker.processed = 3
    finally:
        display.stop()
    assert not display._thread.is_alive()
    *_, stopped, summary = out.getvalue().splitlines()
    assert stopped == "worker laptop: stopped"
    assert summary.startswith("worker laptop: 3 done, 0 failed, ")


def test_a_broken_worker_view_stops_the_display_not_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        name = "laptop"

        @property
        def processed(self) -> int:
            raise RuntimeError("boom")

    display = Display(Broken(), "live", io.StringIO())
    display.start()
    wait_for(lambda: not display._thread.is_alive())
    display.stop()
    (record,) = [r for r in caplog.records if r.name == "services.worker.display"]
    assert "the progress display stopped" in record.getMessage()
    assert record.exc_info is not None and "boom" in str(record.exc_info[1])
