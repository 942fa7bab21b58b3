"""Worker heartbeats: who the worker is, what it can run, and how it is doing.

The worker's loop thread (the only one that touches its connection) calls ``tick`` often;
a heartbeat goes to the events queue at start, then every ``HEARTBEAT_SECONDS``, and a
last one with state ``stopped`` when the worker shuts down cleanly. The dispatcher keeps
the latest of each worker in the registry (``services/dispatcher/registry.py``).

``items_per_second`` is the rows or tracks of the tasks finished in the last minute (or
since start, when that is shorter), divided by that time.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

from libs.common import messages
from libs.common.broker import Broker, Publisher
from libs.common.settings import Settings

log = logging.getLogger(__name__)

#: Seconds of finished work that ``items_per_second`` averages over.
RATE_WINDOW = 60.0


def version() -> str:
    try:
        return metadata.version("conveyor")
    except metadata.PackageNotFoundError:
        return "unknown"


def capabilities(settings: Settings, *, ffmpeg: bool) -> messages.Capabilities:
    """Track tasks need ffmpeg: a worker without one lists only the handlers it can run."""
    handlers = ["csv", "tracks", "canary"] if ffmpeg else ["csv", "canary"]
    return messages.Capabilities(
        handlers=handlers, ffmpeg=ffmpeg, cores=os.cpu_count() or 1,
        concurrency=settings.concurrency,
    )  # fmt: skip


def interval(settings: Settings, broker: Broker) -> float:
    """The promised gap between heartbeats. On SQS an idle loop blocks in a long-polling
    receive for up to ``SQS_WAIT_SECONDS``, so it cannot promise less than that."""
    wait = broker.sqs.wait_seconds if broker.kind == "sqs" else 0
    return max(settings.heartbeat_seconds, float(wait))


@dataclass(frozen=True)
class Snapshot:
    """The worker's side of a heartbeat, taken on its loop thread when one is due."""

    state: str
    in_flight: int
    processed: int
    failed: int
    current_job: str | None


class Heartbeats:
    def __init__(
        self,
        worker_id: str,
        name: str,
        settings: Settings,
        broker: Broker,
        *,
        ffmpeg: bool,
        paired_id: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.worker_id, self.name, self.pool = worker_id, name, settings.pool
        self.paired_id = paired_id
        self.capabilities = capabilities(settings, ffmpeg=ffmpeg)
        self.interval = interval(settings, broker)
        self.host, self.pid, self.version = socket.gethostname(), os.getpid(), version()
        self.started_at = time.time()
        self._clock = clock
        self._start = clock()
        self._done: deque[tuple[float, int]] = deque()  # (when, items) per finished task
        self._lock = threading.Lock()  # the live display reads the rate from its thread
        self._next: float | None = None  # None: due now

    # -- counting --------------------------------------------------------------------------
    def count(self, items: int) -> None:
        """A task finished with ``items`` rows or tracks."""
        with self._lock:
            self._done.append((self._clock(), items))

    def items_per_second(self) -> float:
        now = self._clock()
        with self._lock:
            while self._done and self._done[0][0] <= now - RATE_WINDOW:
                self._done.popleft()
            done = sum(items for _, items in self._done)
        return done / max(1.0, min(RATE_WINDOW, now - self._start))

    # -- sending (the loop's thread) -------------------------------------------------------
    def due(self) -> bool:
        return self._next is None or self._clock() >= self._next

    def tick(self, publisher: Publisher, snapshot: Callable[[], Snapshot]) -> None:
        """Publish a heartbeat if one is due; broker errors propagate (the loop reconnects)."""
        if self.due():
            self.send(publisher, snapshot())

    def send(self, publisher: Publisher, snapshot: Snapshot) -> None:
        publisher.event(messages.envelope("", self.message(snapshot)))
        self._next = self._clock() + self.interval

    def final(self, publisher: Publisher, processed: int, failed: int) -> None:
        """The clean shutdown's last heartbeat. Best effort: stopping never waits on it."""
        try:
            self.send(publisher, Snapshot(messages.W_STOPPED, 0, processed, failed, None))
        except Exception as exc:
            log.warning("could not send the last heartbeat: %s", exc, extra={"action": "heartbeat"})

    def message(self, snapshot: Snapshot) -> messages.Heartbeat:
        return messages.Heartbeat(
            worker_id=self.worker_id, name=self.name, state=snapshot.state, host=self.host,
            pid=self.pid, version=self.version, pool=self.pool, capabilities=self.capabilities,
            in_flight=snapshot.in_flight, processed=snapshot.processed, failed=snapshot.failed,
            items_per_second=round(self.items_per_second(), 2),
            current_job=snapshot.current_job, interval=self.interval,
            started_at=self.started_at, paired_id=self.paired_id,
        )  # fmt: skip
