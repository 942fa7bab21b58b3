"""A read-only view of a running worker, for its terminal display.

``Sampler.snapshot()`` reads what the ``Worker`` exposes (counters, tasks in flight, its
consume loop's connection) from another thread, without locks: every read is one
attribute, and anything missing is shown as unknown rather than breaking the display.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

RATE_WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Snapshot:
    name: str
    pool: str
    broker: str
    state: str  # connecting, connected, reconnecting, stopping, stopped
    error: str | None
    jobs: tuple[str, ...]
    tasks: tuple[str, ...]  # "task-id (what)" per task in flight
    done: int
    failed: int
    rate: float
    rate_unit: str  # items/s when the worker counts rows and tracks, else tasks/s
    uptime: float


def broker_host(url: str | None) -> str:
    """Where the broker is, never who logs in: ``rabbit.example:5671``, ``Amazon SQS``."""
    if not url:
        return "in-process"
    parts = urlsplit(url)
    if parts.scheme == "sqs":
        return f"Amazon SQS ({parts.hostname})" if parts.hostname else "Amazon SQS"
    if parts.scheme == "memory":
        return "in-process"
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or "?"
    return f"{host}:{port}" if port else host


def describe_task(body: Any) -> str:
    """``3f2a…-7 (rows 1-5000)``: the task id and what it holds."""
    task_id = str(getattr(body, "task_id", "?"))
    if hasattr(body, "first_row") and hasattr(body, "rows"):
        what = f"rows {body.first_row}-{body.first_row + body.rows - 1}"
    elif hasattr(body, "tracks"):
        what = f"{len(body.tracks)} tracks"
    elif hasattr(body, "seconds"):
        what = f"canary {body.seconds:g} s"
    else:
        what = type(body).__name__
    return f"{task_id} ({what})"


class ReconnectWatch(logging.Handler):
    """The consume loop's last "connection lost" reason, taken from its warning log."""

    def __init__(self, consumer: str) -> None:
        super().__init__(logging.WARNING)
        self.consumer = consumer
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "action", None) == "reconnect" and (
            getattr(record, "consumer", None) == self.consumer
        ):
            message = record.getMessage().removeprefix(f"{self.consumer}: ")
            self.last = re.sub(r"; reconnecting in [\d.]+s$", "", message)


class Sampler:
    """Snapshots of one worker, with its throughput over the last minute."""

    def __init__(self, worker: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.worker = worker
        self.clock = clock
        self.started = clock()
        self.stopped = False  # set by the display once the worker has returned
        self._counts: deque[tuple[float, int]] = deque()
        loop = getattr(worker, "loop", None)
        self.watch = ReconnectWatch(str(getattr(loop, "name", "")))

    def snapshot(self) -> Snapshot:
        worker, now = self.worker, self.clock()
        settings = getattr(worker, "settings", None)
        in_flight = list(getattr(worker, "in_flight", None) or ())
        envs = [getattr(item, "env", None) for item in in_flight]
        jobs = tuple(dict.fromkeys(str(e.job_id) for e in envs if e is not None))
        state, error = self._connection()
        rate, unit = self._rate(now)
        return Snapshot(
            name=str(getattr(worker, "name", "?")),
            pool=str(getattr(settings, "pool", "?")),
            broker=str(
                getattr(worker, "endpoint", None)
                or broker_host(getattr(settings, "broker_url", None))
            ),
            state=state,
            error=error,
            jobs=jobs,
            tasks=tuple(describe_task(e.body) for e in envs if e is not None),
            done=int(getattr(worker, "processed", 0) or 0),
            failed=int(getattr(worker, "failed", 0) or 0),
            rate=rate,
            rate_unit=unit,
            uptime=now - self.started,
        )

    def _connection(self) -> tuple[str, str | None]:
        loop = getattr(self.worker, "loop", None)
        stopping = getattr(self.worker, "stopping", None)
        connected = getattr(loop, "connected", None)
        error = getattr(loop, "last_error", None) or self.watch.last
        if self.stopped:
            return "stopped", None
        if stopping is not None and stopping.is_set():
            return "stopping", None
        if connected is not None and connected.is_set():
            self.watch.last = None
            return "connected", None
        return ("reconnecting", str(error)) if error else ("connecting", None)

    def _rate(self, now: float) -> tuple[float, str]:
        """Rows or tracks per second when the worker counts them, else finished tasks."""
        beats = getattr(self.worker, "beats", None)
        reported = getattr(beats, "items_per_second", None)
        reported = getattr(self.worker, "items_per_second", reported)
        try:
            value = reported() if callable(reported) else reported
        except Exception:  # read from another thread: one bad read, not a dead display
            value = None
        if isinstance(value, int | float):
            return float(value), "items/s"
        self._counts.append((now, int(getattr(self.worker, "processed", 0) or 0)))
        while now - self._counts[0][0] > RATE_WINDOW_SECONDS:
            self._counts.popleft()
        (then, before), (_, count) = self._counts[0], self._counts[-1]
        return ((count - before) / (now - then) if now > then else 0.0), "tasks/s"
