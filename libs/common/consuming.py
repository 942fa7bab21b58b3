"""A consume loop that owns one connection, reconnects with backoff and stops on request.

The thread that runs ``ConsumeLoop.run`` is the only one that touches its connection:
handlers either finish quickly in ``on_message`` or hand work to a pool and settle it from
``tick``, which runs between waits. That keeps AMQP heartbeats flowing, and SQS leases
extended, during long work. The broker prepares the queues before each consume (on SQS:
creates them with their redrive policy, subscribes control queues to their topic).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kombu import Connection, Consumer, Queue
from kombu.message import Message

from libs.common.broker import Broker, Publisher

log = logging.getLogger(__name__)


@dataclass
class Session:
    """What a handler may use while connected: the connection and its publisher."""

    conn: Connection
    publisher: Publisher


@dataclass
class ConsumeLoop:
    broker: Broker
    name: str
    queues: Callable[[], Sequence[Queue]]
    on_message: Callable[[Session, Message], None]
    prefetch: int = 1
    stop: threading.Event = field(default_factory=threading.Event)
    tick: Callable[[Session], None] | None = None
    on_connect: Callable[[Session], None] | None = None
    poll_seconds: float = 0.5
    #: Overrides ``poll_seconds`` per wait, e.g. 0 while ``tick`` itself blocks on work.
    wait_seconds: Callable[[], float] | None = None
    max_backoff: float = 30.0
    connected: threading.Event = field(default_factory=threading.Event)
    _consumer: Consumer | None = field(default=None, init=False, repr=False)

    def cancel_consumer(self) -> None:
        """Stop fetching (from ``tick`` or a handler: the loop's own thread)."""
        if self._consumer is not None:
            self._consumer.cancel()

    def run(self) -> None:
        probe = self.broker.connection()  # lazy: only to learn this transport's error types
        backoff = 0.5
        while not self.stop.is_set():
            try:
                self._run_connected()
                backoff = 0.5
            except Exception as exc:
                if not self.broker.is_recoverable(exc, probe):
                    raise
                self.connected.clear()
                if self.stop.is_set():
                    break
                log.warning(
                    "%s: broker connection lost (%s); reconnecting in %.1fs",
                    self.name, exc, backoff,
                    extra={"action": "reconnect", "consumer": self.name},
                )  # fmt: skip
                self.stop.wait(backoff)
                backoff = min(self.max_backoff, backoff * 2)

    def _run_connected(self) -> None:
        with self.broker.connection() as conn:
            conn.ensure_connection(max_retries=1, timeout=10)
            session = Session(conn, Publisher(self.broker, conn))
            if self.on_connect:
                self.on_connect(session)
            queues = self.broker.prepare(conn, self.queues())
            channel = conn.channel()
            consumer = Consumer(
                channel,
                queues=queues,
                on_message=lambda message: self.on_message(session, message),
                prefetch_count=self.prefetch,
                accept=["application/json"],
            )
            with consumer:
                self._consumer = consumer
                self.connected.set()
                log.info("%s: consuming", self.name, extra={"action": "consume"})
                try:
                    self._drain(session)
                finally:
                    self._consumer = None

    def _drain(self, session: Session) -> None:
        conn = session.conn
        last_beat = time.monotonic()
        while not self.stop.is_set():
            timeout = self.wait_seconds() if self.wait_seconds else self.poll_seconds
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=timeout)
            if time.monotonic() - last_beat > 1.0:
                self.broker.heartbeat_check(conn)
                last_beat = time.monotonic()
            if self.tick:
                self.tick(session)
