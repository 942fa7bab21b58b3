"""The transactional outbox: a message is a row committed with the state that caused it.

``add`` writes the row in the caller's transaction. ``Relay`` publishes unsent rows in id
order and marks them sent; it runs in the web process, woken after each commit and on a
timer, so a broker outage at submit time only delays a job. Rows are claimed with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several web instances can relay at once.
"""

from __future__ import annotations

import logging
import threading

from kombu import Connection
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from libs.common import messages
from libs.common.broker import Broker, Publisher
from libs.common.models import Outbox, now

log = logging.getLogger(__name__)

CONTROL = "control"


def add(session: Session, route: str, env: messages.Envelope) -> None:
    session.add(Outbox(route=route, body=messages.encode(env)))


def relay_once(sessions: sessionmaker[Session], publisher: Publisher, limit: int = 500) -> int:
    """Publish up to ``limit`` unsent rows; return how many were sent."""
    with sessions() as session, session.begin():
        rows = session.scalars(
            select(Outbox)
            .where(Outbox.sent_at.is_(None))
            .order_by(Outbox.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            if row.route == CONTROL:
                publisher.control(messages.decode(row.body))
            else:
                publisher.publish_raw(row.body, row.route)
            row.sent_at = now()
        return len(rows)


class Relay:
    """A background thread that drains the outbox; ``wake()`` after a commit."""

    def __init__(
        self, sessions: sessionmaker[Session], broker: Broker, interval: float = 2.0
    ) -> None:
        self._sessions = sessions
        self._broker = broker
        self._interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-relay", daemon=True)
        self.healthy = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._broker.connection() as conn:
                    conn.ensure_connection(max_retries=1, timeout=5)
                    self._broker.declare(conn)
                    publisher = Publisher(self._broker, conn)
                    self.healthy.set()
                    self._loop(conn, publisher)
            except Exception as exc:  # broker or database down: keep rows, try again
                self.healthy.clear()
                log.warning(
                    "outbox relay: %s; retrying in %.0fs", exc, self._interval,
                    extra={"action": "outbox_retry"},
                )  # fmt: skip
                self._stop.wait(self._interval)

    def _loop(self, conn: Connection, publisher: Publisher) -> None:
        while not self._stop.is_set():
            while relay_once(self._sessions, publisher):
                pass
            # An idle AMQP connection must send heartbeats, or the broker closes it and
            # the next publish (a cancellation, a revocation) waits for a reconnect.
            self._broker.heartbeat_check(conn)
            self._wake.wait(self._interval)
            self._wake.clear()
