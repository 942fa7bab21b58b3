"""Broker access through Kombu. The only module that knows which broker is in use.

``Broker`` opens connections, declares the topology and prepares queues for consuming;
``Publisher`` sends envelopes with publisher confirms and settles a delivery by retrying it
later or dead-lettering it. Per broker:

- **RabbitMQ**: a retry goes through the TTL tier queues, a dead letter through the DLX; a
  message is the consumer's for as long as its connection lives.
- **SQS**: there are no exchanges to route by (kombu's bindings live in each process's
  memory), so messages go straight to their queue. A retry is a new message with an SQS
  delay (``Envelope.attempt`` counts retries as on RabbitMQ); a dead letter goes straight
  to the dead queue; the redrive policy dead-letters poison messages by receive count. A
  received message is the consumer's for ``SQS_VISIBILITY_TIMEOUT`` unless its lease is
  extended. The control fanout is an SNS topic, when the services may create queues.
- **memory://** (the embedded default, one process, no server): a timer stands in for the
  TTL, and the broker is not durable, so the dispatcher re-publishes unfinished work when
  it starts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kombu import Connection, Exchange, Producer, Queue
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.message import Message

from libs.common import messages, topology
from libs.common.broker_sqs import SqsAdmin, SqsOptions, is_transient

log = logging.getLogger(__name__)

__all__ = ["Broker", "Publisher", "SqsOptions", "dead_cause", "delivery_count"]

CAUSE_HEADER = "x-conveyor-cause"
CONTENT_TYPE = "application/json"
#: The AMQP heartbeat the services ask for, in seconds (workers ask for less).
AMQP_HEARTBEAT = 30
#: SQS takes at most this many seconds of per-message delay.
SQS_MAX_DELAY = 900
#: RabbitMQ: the longest wait for a publish confirm. A link that goes silent (no reset)
#: would otherwise hold the publishing thread, and with it the heartbeat checks, until
#: TCP gives up; a timeout is a connection error, so the caller reconnects.
CONFIRM_TIMEOUT = 15.0


class Broker:
    def __init__(
        self,
        url: str,
        prefix: str,
        delivery_limit: int,
        heartbeat: int = AMQP_HEARTBEAT,
        sqs: SqsOptions | None = None,
    ) -> None:
        scheme = urlsplit(url).scheme
        self.kind = {"amqp": "amqp", "amqps": "amqp", "pyamqp": "amqp"}.get(scheme, scheme)
        self.url = url
        self.prefix = prefix
        self.delivery_limit = delivery_limit
        self.heartbeat = heartbeat
        self.sqs = sqs or SqsOptions()
        sqs_admin = SqsAdmin(url, prefix, delivery_limit, self.sqs) if self.kind == "sqs" else None
        self._admin = sqs_admin

    @property
    def durable(self) -> bool:
        """False when messages die with the process (the embedded transport)."""
        return self.kind != "memory"

    @property
    def lease_seconds(self) -> int | None:
        """How long a received message stays its consumer's unless the lease is extended;
        None: for as long as the consumer's connection lives (RabbitMQ, memory)."""
        return self.sqs.visibility_timeout if self.kind == "sqs" else None

    @property
    def lease_interval(self) -> float | None:
        """How often to extend the lease of a message still being worked on (None: never)."""
        return None if self.lease_seconds is None else self.lease_seconds / 3

    @property
    def broadcasts(self) -> bool:
        """Whether ``Publisher.control`` reaches workers (SQS needs SNS, so may create queues)."""
        return self.kind != "sqs" or self.sqs.create_queues

    def connection(self) -> Connection:
        """A new, unopened connection (no I/O until it is used)."""
        if self.kind == "memory":
            return Connection("memory://", transport_options={"polling_interval": 0.02})
        if self._admin is not None:
            return Connection(self.url, transport_options=self._admin.transport_options())
        return Connection(
            self.url,
            heartbeat=self.heartbeat,
            connect_timeout=10,
            transport_options={"confirm_publish": True},
        )

    def is_recoverable(self, exc: BaseException, conn: Connection) -> bool:
        """Whether reconnecting may cure ``exc`` (else it is a bug or a misconfiguration)."""
        errors = (OSError, KombuOperationalError, *conn.connection_errors, *conn.channel_errors)
        return isinstance(exc, errors) or (self._admin is not None and is_transient(exc))

    def heartbeat_check(self, conn: Connection) -> None:
        """Keep an idle AMQP connection alive; call it about every second."""
        if self.kind == "amqp":
            conn.heartbeat_check()

    def declare(self, conn: Connection, pools: tuple[str, ...] = ("shared",)) -> None:
        """Create what is missing of the topology (on SQS: the queues with their redrive
        policy, unless SQS_CREATE_QUEUES is off and provisioning owns them)."""
        if self._admin is not None:
            self._admin.declare(pools)
            return
        channel = conn.default_channel
        for queue in topology.all_queues(self.prefix, pools, self.delivery_limit):
            queue.bind(channel).declare()
        topology.control_exchange(self.prefix).bind(channel).declare()

    def declare_pool(self, conn: Connection, pool: str) -> None:
        """Create ``pool``'s task queue if it is missing (on SQS with its redrive policy):
        before a worker that may not declare queues starts to consume it."""
        queue = topology.task_queue(self.prefix, pool, self.delivery_limit)
        if self._admin is not None:
            self._admin.ensure(queue.name)
        else:
            queue.bind(conn.default_channel).declare()

    def prepare(self, conn: Connection, queues: Iterable[Queue]) -> list[Queue]:
        """Declare ``queues`` so that they receive from now on, and return those this broker
        can serve. On SQS a queue is created with its redrive policy (or, with
        SQS_CREATE_QUEUES off, must exist), and a control queue is subscribed to its SNS
        topic; without SQS_CREATE_QUEUES there are no control queues."""
        queues = list(queues)
        if self._admin is None:
            prepared = []
            for queue in queues:
                bound = queue.bind(conn.default_channel)
                bound.declare()  # a no_declare queue must exist already (kombu skips it)
                bound.no_declare = True  # the consumer must not declare it again: a
                prepared.append(bound)  # server-named queue can't be (amq.* is reserved)
            return prepared
        self._admin.ready()
        if not self.broadcasts:
            queues = [q for q in queues if not topology.is_control_queue(self.prefix, q.name)]
        for queue in queues:
            self._admin.ensure(queue.name)
        self._admin.prime(conn)
        channel: Any = conn.default_channel  # kombu's SQS channel: SNS through ``fanout``
        prepared = []
        for queue in queues:
            if topology.is_control_queue(self.prefix, queue.name):
                channel.fanout.subscriptions.subscribe_queue(
                    queue_name=queue.name, exchange_name=queue.exchange.name
                )
                prepared.append(queue)
            else:  # messages come straight to it: no binding (the dead queue's would be SNS)
                prepared.append(Queue(queue.name, durable=queue.durable))
        return prepared

    def delete_private_queue(self, queue: Queue) -> None:
        """Remove a consumer's own queue when it stops (RabbitMQ auto-deletes it; SQS keeps
        a queue until it is deleted, so a worker killed outright leaves its control queue)."""
        if self._admin is not None and self.broadcasts:
            self._admin.delete(queue.name)

    def extend_lease(self, message: Message, seconds: int | None = None) -> bool:
        """Keep ``message`` from going to another consumer for ``seconds`` (default
        ``lease_seconds``) from now. False when it can no longer be kept (already gone).
        A no-op on brokers whose leases last as long as the connection."""
        if self._admin is None:
            return True
        info = message.delivery_info
        return self._admin.change_visibility(
            info["sqs_queue"],
            info["sqs_message"]["ReceiptHandle"],
            self.sqs.visibility_timeout if seconds is None else seconds,
        )

    def ping(self, timeout: float = 3.0) -> None:
        """Raise when the broker cannot be reached within ``timeout`` seconds."""
        if self._admin is not None:
            self._admin.ping()
            return
        with self.connection() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)

    def queue_depth(self, conn: Connection, queue_name: str) -> int:
        """Messages ready in the queue (not those in flight or delayed)."""
        if self._admin is not None:
            return self._admin.depth(queue_name)
        channel = conn.default_channel
        if self.kind == "memory":
            return int(channel._size(queue_name))
        return int(channel.queue_declare(queue=queue_name, passive=True).message_count)

    def _ready(self) -> None:
        """What must be known before kombu opens a channel (SQS: the queues' addresses)."""
        if self._admin is not None:
            self._admin.ready()


def delivery_count(message: Message) -> int:
    """How many times this message has been delivered, this delivery included."""
    sqs_message = message.delivery_info.get("sqs_message")
    if sqs_message is not None:
        return int(sqs_message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
    headers = message.headers or {}
    if "x-delivery-count" in headers:  # quorum queues count returns and consumer deaths
        return int(headers["x-delivery-count"]) + 1
    return 2 if message.delivery_info.get("redelivered") else 1


def dead_cause(message: Message) -> str:
    """Why a message sits in the dead-letter queue, in words."""
    headers = message.headers or {}
    if headers.get(CAUSE_HEADER):
        return str(headers[CAUSE_HEADER])
    info = message.delivery_info
    if info.get("sqs_message") is not None:
        source = str(info.get("routing_key") or "?")
        here = str(info.get("sqs_queue") or "").rsplit("/", 1)[-1]
        if topology.sqs_name(source) != here:  # sent elsewhere: moved by the redrive policy
            before = delivery_count(message) - 1  # receives before this one, from the DLQ
            times = f"{before} times" if before > 0 else "too many times"
            return (
                f"SQS dead-lettered it from {topology.sqs_name(source)}: received {times} "
                "without being deleted, past the delivery limit (its consumers died or gave "
                "it back each time)"
            )
    deaths = headers.get("x-death") or []
    if deaths:
        first = deaths[0]
        reason, queue = first.get("reason", "?"), first.get("queue", "?")
        if reason == "delivery_limit":
            return (
                f"the broker dead-lettered it from {queue}: delivered more than the delivery "
                "limit without an acknowledgement (its consumers died or gave it back each time)"
            )
        return f"the broker dead-lettered it from {queue} ({reason})"
    return "dead-lettered without a recorded cause"


@dataclass
class _Held:
    message: Message
    renewed: float


class Publisher:
    """Publishes envelopes with confirms. Not thread-safe: one per connection-owning thread.

    On RabbitMQ every publish is ``mandatory``: a message no queue would take comes back
    as ``NO_ROUTE`` and raises (a channel error), so the caller retries instead of losing it.
    On SQS a message goes to its queue by name; a queue that is missing is created with its
    redrive policy, or (SQS_CREATE_QUEUES off) raises.
    """

    def __init__(self, broker: Broker, conn: Connection) -> None:
        self.broker = broker
        broker._ready()
        self._conn = conn
        self._producer = Producer(conn.channel())
        self._exchange = topology.main_exchange(broker.prefix)
        self._sqs = broker.kind == "sqs"
        self._held: _Held | None = None
        self._control_declared = False
        self._pools: set[str] = set()

    def _send(
        self,
        body: bytes,
        exchange: Exchange | str,
        routing_key: str,
        headers: dict[str, Any] | None = None,
        **properties: Any,
    ) -> None:
        self._renew_held()
        self._producer.publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            content_type=CONTENT_TYPE,
            content_encoding="utf-8",
            delivery_mode=2,
            headers=headers or {},
            mandatory=self.broker.kind == "amqp",  # no queue for it: raise, never drop
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
            **({"confirm_timeout": CONFIRM_TIMEOUT} if self.broker.kind == "amqp" else {}),
            **properties,
        )

    def _send_to_queue(
        self, body: bytes, queue_name: str, headers: dict[str, Any] | None = None, delay: int = 0
    ) -> None:
        """SQS: straight to the queue (created first if it may be and is missing)."""
        admin = self.broker._admin
        assert admin is not None
        admin.ensure(queue_name)
        admin.prime(self._conn)
        properties = {"delay_seconds": delay} if delay > 0 else {}
        self._send(body, "", queue_name, headers, **properties)

    def publish(self, env: messages.Envelope, routing_key: str) -> None:
        self.publish_raw(messages.encode(env), routing_key)

    def publish_raw(self, body: bytes, routing_key: str) -> None:
        if self._sqs:
            self._send_to_queue(body, topology.queue_name_for_key(self.broker.prefix, routing_key))
        else:
            self._send(body, self._exchange, routing_key)

    def job(self, env: messages.Envelope) -> None:
        self.publish(env, topology.JOB_KEY)

    def task(self, env: messages.Envelope, pool: str) -> None:
        """To ``pool``'s task queue, declared first (once per publisher): a pool's queue
        may not exist yet when its first job is fanned out (a worker paired minutes ago
        and not connected yet). SQS creates a missing queue in ``_send_to_queue``."""
        if not self._sqs and pool not in self._pools:
            self.broker.declare_pool(self._conn, pool)
            self._pools.add(pool)
        self.publish(env, topology.task_key(pool))

    def event(self, env: messages.Envelope) -> None:
        self.publish(env, topology.EVENT_KEY)

    def control(self, env: messages.Envelope) -> None:
        """Broadcast to every live worker. On SQS without SQS_CREATE_QUEUES nobody listens:
        the message is dropped (cancellation then works at the dispatcher only)."""
        exchange = topology.control_exchange(self.broker.prefix)
        if not self.broker.broadcasts:
            log.debug("no control broadcast on this broker", extra={"action": "control_skip"})
            return
        if self._sqs and not self._control_declared:  # kombu routes fanouts by local state
            exchange.bind(self._producer.channel).declare()
            self._control_declared = True
        self._send(messages.encode(env), exchange, "")

    def retry(self, message: Message, env: messages.Envelope, delay: float) -> None:
        """Send ``env``'s next attempt back to its queue after ``delay``; settle ``message``.

        On SQS the next attempt is a new message with a per-message delay (at most 15
        minutes: longer delays are cut to that), and the original is deleted. The other way,
        hiding the original longer (ChangeMessageVisibility) and counting attempts by
        ApproximateReceiveCount, would mix retries with crashes: the redrive policy's
        maxReceiveCount would have to allow MAX_ATTEMPTS plus DELIVERY_LIMIT receives (20 for
        the dispatcher's database retries), so a message that kills its consumer would be
        received that many times before it is dead-lettered. A new message keeps
        ``Envelope.attempt`` meaning what it means on RabbitMQ, and the receive count
        counts crashes only. If the delete fails after the publish, the attempt runs twice;
        effects are idempotent."""
        body = messages.encode(env.next_attempt())
        if self._sqs:
            seconds = min(SQS_MAX_DELAY, math.ceil(delay))
            self._send_to_queue(body, _received_from(message), delay=seconds)
        elif self.broker.kind == "memory":
            routing_key = message.delivery_info.get("routing_key") or ""
            timer = threading.Timer(delay, _republish_later, (self.broker, body, routing_key))
            timer.daemon = True
            timer.start()
        else:
            routing_key = message.delivery_info.get("routing_key") or ""
            tier = topology.tier_for(delay)
            self._send(body, topology.retry_exchange(self.broker.prefix, tier), routing_key)
        message.ack()

    def dead_letter(self, message: Message, cause: str) -> None:
        """Move ``message`` as it is to the dead-letter queue with ``cause``; settle it."""
        headers = {CAUSE_HEADER: cause[:2000]}
        if self._sqs:
            self._send_to_queue(message.body, topology.dead_queue(self.broker.prefix).name, headers)
        else:
            routing_key = message.delivery_info.get("routing_key") or ""
            exchange = topology.dead_exchange(self.broker.prefix)
            self._send(message.body, exchange, routing_key, headers)
        message.ack()

    @contextmanager
    def holding(self, message: Message) -> Iterator[None]:
        """Keep ``message``'s lease while this thread works on it and publishes as it goes
        (a fan-out): each publish extends the lease when it is due."""
        self._held = _Held(message, time.monotonic())
        try:
            yield
        finally:
            self._held = None

    def _renew_held(self) -> None:
        interval = self.broker.lease_interval
        held = self._held
        if held is None or interval is None or time.monotonic() - held.renewed < interval:
            return
        self.broker.extend_lease(held.message)
        held.renewed = time.monotonic()


def _received_from(message: Message) -> str:
    """SQS: the name of the queue ``message`` was received from."""
    return str(message.delivery_info["sqs_queue"]).rsplit("/", 1)[-1]


def _republish_later(broker: Broker, body: bytes, routing_key: str) -> None:
    try:
        with broker.connection() as conn:
            Publisher(broker, conn).publish_raw(body, routing_key)
    except Exception:  # the embedded broker is in-process; this only fails at shutdown
        log.exception("retry could not be re-published", extra={"action": "retry_lost"})
