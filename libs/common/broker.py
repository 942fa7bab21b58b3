"""Broker access through Kombu. The only module that knows which broker is in use.

``Broker`` opens connections and declares the topology; ``Publisher`` sends envelopes
with publisher confirms and settles a delivery by retrying it later or dead-lettering it.
On RabbitMQ a retry goes through the TTL tier queues and a dead letter through the DLX;
on the embedded ``memory://`` transport (one process, no server) a timer stands in for
the TTL, and the broker is not durable, so the dispatcher re-publishes unfinished work
when it starts.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlsplit

from kombu import Connection, Exchange, Producer
from kombu.message import Message

from libs.common import messages, topology

log = logging.getLogger(__name__)

CAUSE_HEADER = "x-conveyor-cause"
CONTENT_TYPE = "application/json"


class Broker:
    def __init__(self, url: str, prefix: str, delivery_limit: int, heartbeat: int = 30) -> None:
        scheme = urlsplit(url).scheme
        self.kind = {"amqp": "amqp", "amqps": "amqp", "pyamqp": "amqp"}.get(scheme, scheme)
        self.url = url
        self.prefix = prefix
        self.delivery_limit = delivery_limit
        self.heartbeat = heartbeat

    @property
    def durable(self) -> bool:
        """False when messages die with the process (the embedded transport)."""
        return self.kind != "memory"

    def connection(self) -> Connection:
        if self.kind == "memory":
            return Connection("memory://", transport_options={"polling_interval": 0.02})
        return Connection(
            self.url,
            heartbeat=self.heartbeat,
            connect_timeout=10,
            transport_options={"confirm_publish": True},
        )

    def declare(self, conn: Connection, pools: tuple[str, ...] = ("shared",)) -> None:
        channel = conn.default_channel
        for queue in topology.all_queues(self.prefix, pools, self.delivery_limit):
            queue.bind(channel).declare()
        topology.control_exchange(self.prefix).bind(channel).declare()

    def declare_pool(self, conn: Connection, pool: str) -> None:
        topology.task_queue(self.prefix, pool, self.delivery_limit).bind(
            conn.default_channel
        ).declare()

    def ping(self, timeout: float = 3.0) -> None:
        """Raise when the broker cannot be reached within ``timeout`` seconds."""
        with self.connection() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)

    def queue_depth(self, conn: Connection, queue_name: str) -> int:
        channel = conn.default_channel
        if self.kind == "memory":
            return int(channel._size(queue_name))
        return int(channel.queue_declare(queue=queue_name, passive=True).message_count)


def delivery_count(message: Message) -> int:
    """How many times this message has been delivered, this delivery included."""
    headers = message.headers or {}
    if "x-delivery-count" in headers:  # quorum queues count returns and consumer deaths
        return int(headers["x-delivery-count"]) + 1
    return 2 if message.delivery_info.get("redelivered") else 1


def dead_cause(message: Message) -> str:
    """Why a message sits in the dead-letter queue, in words."""
    headers = message.headers or {}
    if headers.get(CAUSE_HEADER):
        return str(headers[CAUSE_HEADER])
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


class Publisher:
    """Publishes envelopes with confirms. Not thread-safe: one per connection-owning thread.

    On RabbitMQ every publish is ``mandatory``: a message no queue would take comes back
    as ``NO_ROUTE`` and raises (a channel error), so the caller retries instead of losing it.
    """

    def __init__(self, broker: Broker, conn: Connection) -> None:
        self.broker = broker
        self._conn = conn
        self._producer = Producer(conn.channel())
        self._exchange = topology.main_exchange(broker.prefix)

    def _send(
        self,
        body: bytes,
        exchange: Exchange,
        routing_key: str,
        headers: dict[str, Any] | None = None,
    ) -> None:
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
        )

    def publish(self, env: messages.Envelope, routing_key: str) -> None:
        self._send(messages.encode(env), self._exchange, routing_key)

    def publish_raw(self, body: bytes, routing_key: str) -> None:
        self._send(body, self._exchange, routing_key)

    def job(self, env: messages.Envelope) -> None:
        self.publish(env, topology.JOB_KEY)

    def task(self, env: messages.Envelope, pool: str) -> None:
        self.publish(env, topology.task_key(pool))

    def event(self, env: messages.Envelope) -> None:
        self.publish(env, topology.EVENT_KEY)

    def control(self, env: messages.Envelope) -> None:
        self._send(messages.encode(env), topology.control_exchange(self.broker.prefix), "")

    def retry(self, message: Message, env: messages.Envelope, delay: float) -> None:
        """Send ``env``'s next attempt back to its queue after ``delay``; settle ``message``."""
        routing_key = message.delivery_info.get("routing_key") or ""
        body = messages.encode(env.next_attempt())
        if self.broker.kind == "memory":
            timer = threading.Timer(delay, _republish_later, (self.broker, body, routing_key))
            timer.daemon = True
            timer.start()
        else:
            tier = topology.tier_for(delay)
            self._send(body, topology.retry_exchange(self.broker.prefix, tier), routing_key)
        message.ack()

    def dead_letter(self, message: Message, cause: str) -> None:
        """Move ``message`` as it is to the dead-letter queue with ``cause``; settle it."""
        routing_key = message.delivery_info.get("routing_key") or ""
        headers = {CAUSE_HEADER: cause[:2000]}
        self._send(message.body, topology.dead_exchange(self.broker.prefix), routing_key, headers)
        message.ack()


def _republish_later(broker: Broker, body: bytes, routing_key: str) -> None:
    try:
        with broker.connection() as conn:
            Publisher(broker, conn).publish_raw(body, routing_key)
    except Exception:  # the embedded broker is in-process; this only fails at shutdown
        log.exception("retry could not be re-published", extra={"action": "retry_lost"})
