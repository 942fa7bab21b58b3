"""One gateway socket's broker side: a thread that consumes the worker's pool for it.

The thread owns one broker connection. It consumes the pool's task queue with a prefetch
of the worker's concurrency, so the gateway never holds more tasks than the worker runs,
and hands each task to the socket (``send``). It settles what the worker answers
(``commands``): a result is published with a confirm, and only then is the task acked; a
retry or a dead letter goes through the same ``Publisher`` as a directly connected
worker's. On SQS it extends the lease of every task the worker holds.

When it stops (the socket closed, timed out or broke the protocol) it first settles the
answers already received, then gives back every task still held: on SQS by setting its
visibility to 0, elsewhere by rejecting it with requeue, so it goes to another worker at
once. A lost broker connection ends the socket (``fault``): the worker connects again and
its tasks, which the broker requeued, run again (effects are keyed by task id).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from kombu import Consumer
from kombu.message import Message

from libs.common import frames, messages, topology
from libs.common.broker import Broker, Publisher

log = logging.getLogger(__name__)

#: How long the broker connection waits for a task when the worker holds none / some:
#: answers from the socket are settled between waits, so the busy wait is what a result
#: waits at most before it is published and acked (bench.gateway: 10 ms cost 0.78x direct
#: rows/s with 500-row tasks). A wake-up costs tens of microseconds.
IDLE_WAIT, BUSY_WAIT = 0.2, 0.002


@dataclass(frozen=True)
class Identity:
    """Who is on the socket: the token's pairing and pool, and what the worker said."""

    registry_id: str
    paired_id: str
    pool: str
    name: str
    hello: frames.Hello


@dataclass
class Held:
    message: Message
    env: messages.Envelope
    task_id: str
    leased_at: float = field(default_factory=time.monotonic)


class ProtocolError(Exception):
    """The worker answered for a delivery it does not hold (closes with BAD_FRAME)."""


class PoolConsumer(threading.Thread):
    def __init__(
        self,
        broker: Broker,
        identity: Identity,
        send: Callable[[frames.ToWorker], None],
        fault: Callable[[int, str], None],
        cancelled: Callable[[str], bool] = lambda _job_id: False,
    ) -> None:
        super().__init__(name=f"gateway-{identity.registry_id[:24]}", daemon=True)
        self.broker, self.identity = broker, identity
        self._send, self._fault, self._cancelled = send, fault, cancelled
        self.commands: queue.SimpleQueue[frames.FromWorker] = queue.SimpleQueue()
        self.held: dict[int, Held] = {}
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self._next_delivery = 0
        self._publisher: Publisher | None = None
        self._consumer: Consumer | None = None

    # -- the socket's side ------------------------------------------------------------------
    def stop(self) -> None:
        self.stopping.set()

    # -- the thread -------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run_connected()
        except ProtocolError as exc:
            self._fault(frames.BAD_FRAME, str(exc))
        except Exception as exc:
            probe = self.broker.connection()
            if self.broker.is_recoverable(exc, probe):
                log.warning(
                    "gateway for %s: broker connection lost (%s)", self.identity.registry_id,
                    exc, extra={"action": "gateway_broker_lost"},
                )  # fmt: skip
            else:
                log.exception("gateway consumer failed", extra={"action": "gateway_error"})
            self._fault(frames.BROKER_LOST, "the gateway lost its broker connection: reconnect")

    def _run_connected(self) -> None:
        ident = self.identity
        with self.broker.connection() as conn:
            conn.ensure_connection(max_retries=2, timeout=10)
            publisher = self._publisher = Publisher(self.broker, conn)
            queue_ = topology.task_queue(self.broker.prefix, ident.pool, self.broker.delivery_limit)
            queues = self.broker.prepare(conn, [queue_])
            consumer = self._consumer = Consumer(
                conn.channel(), queues=queues, on_message=self._on_message,
                prefetch_count=ident.hello.concurrency, accept=["application/json"],
            )  # fmt: skip
            with consumer:
                self.ready.set()
                try:
                    self._serve(conn, publisher)
                finally:  # answers already received are settled; the rest goes back
                    with contextlib.suppress(ProtocolError):
                        self._settle_all(publisher)
                    self._give_back()

    def _serve(self, conn: object, publisher: Publisher) -> None:
        last_beat = time.monotonic()
        while not self.stopping.is_set():
            wait = BUSY_WAIT if self.held else IDLE_WAIT
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=wait)  # type: ignore[attr-defined]
            self._settle_all(publisher)
            self._keep_leases()
            if time.monotonic() - last_beat > 1.0:
                self.broker.heartbeat_check(conn)  # type: ignore[arg-type]
                last_beat = time.monotonic()

    def _on_message(self, message: Message) -> None:
        publisher = self._publisher
        assert publisher is not None
        try:
            env = messages.decode(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            publisher.dead_letter(message, f"undecodable message: {exc}")
            return
        body = env.body
        if not isinstance(body, messages.CsvTask | messages.TrackTask | messages.CanaryTask):
            publisher.dead_letter(message, f"no handler for {type(body).__name__}")
            return
        self._next_delivery += 1
        self.held[self._next_delivery] = Held(message, env, body.task_id)
        self._send(frames.Task(self._next_delivery, env))

    # -- settling the worker's answers -----------------------------------------------------
    def _settle_all(self, publisher: Publisher) -> None:
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return
            self._settle(publisher, command)

    def _settle(self, publisher: Publisher, command: frames.FromWorker) -> None:
        match command:
            case frames.Done(delivery, result):
                held = self._peek(delivery, "a result")
                if result.task_id != held.task_id:
                    raise ProtocolError(
                        f"the result of delivery {delivery} names task {result.task_id}, "
                        f"not {held.task_id}"
                    )
                del self.held[delivery]
                publisher.event(messages.envelope(held.env.job_id, result))
                held.message.ack()
            case frames.Retry(delivery, delay, _reason):
                held = self._take(delivery, "a retry")
                publisher.retry(held.message, held.env, delay)
            case frames.Dead(delivery, cause):
                held = self._take(delivery, "a dead letter")
                publisher.dead_letter(held.message, cause)
            case frames.Skip(delivery):
                held = self._peek(delivery, "a skip")
                if not self._cancelled(held.env.job_id):
                    raise ProtocolError(
                        f"a skip of delivery {delivery}, whose job is not cancelled"
                    )
                del self.held[delivery]
                held.message.ack()
            case frames.Progress(delivery, track_id, stage):
                found = self.held.get(delivery)
                if found is not None:  # else settled already: progress is only a display
                    progress = messages.TrackProgress(found.task_id, track_id, stage)
                    publisher.event(messages.envelope(found.env.job_id, progress))
            case frames.Beat():
                publisher.event(messages.envelope("", self._heartbeat(command)))
            case frames.Pause():
                if self._consumer is not None:
                    self._consumer.cancel()
            case _:
                raise ProtocolError(f"unexpected {type(command).__name__} frame")

    def _peek(self, delivery: int, what: str) -> Held:
        held = self.held.get(delivery)
        if held is None:
            raise ProtocolError(f"{what} for delivery {delivery}, which this socket does not hold")
        return held

    def _take(self, delivery: int, what: str) -> Held:
        held = self._peek(delivery, what)
        del self.held[delivery]
        return held

    def _heartbeat(self, beat: frames.Beat) -> messages.Heartbeat:
        ident, hello = self.identity, self.identity.hello
        return messages.Heartbeat(
            worker_id=ident.registry_id, name=ident.name, state=beat.state, host=hello.host,
            pid=hello.pid, version=hello.version, pool=ident.pool,
            capabilities=hello.capabilities, in_flight=beat.in_flight,
            processed=beat.processed, failed=beat.failed,
            items_per_second=beat.items_per_second, current_job=beat.current_job,
            interval=beat.interval, started_at=beat.started_at, paired_id=ident.paired_id,
        )  # fmt: skip

    # -- leases ------------------------------------------------------------------------------
    def _keep_leases(self) -> None:
        interval = self.broker.lease_interval
        if interval is None:
            return
        now = time.monotonic()
        for held in self.held.values():
            if now - held.leased_at >= interval:
                self.broker.extend_lease(held.message)
                held.leased_at = now

    def _give_back(self) -> None:
        """Every task still held goes back to the queue now, for another worker."""
        for held in self.held.values():
            try:
                if self.broker.lease_seconds is not None:
                    self.broker.extend_lease(held.message, 0)
                else:
                    held.message.reject(requeue=True)
            except Exception as exc:  # the connection is gone: the broker requeues anyway
                log.debug("give back: %s", exc, extra={"action": "gateway_give_back"})
        if self.held:
            log.info(
                "gateway for %s: gave %d tasks back to the queue", self.identity.registry_id,
                len(self.held), extra={"action": "handed_back"},
            )  # fmt: skip
        self.held.clear()
