"""Queue topology as data: pure functions of names, no I/O.

One topic exchange routes the three kinds of work by routing key (exact keys, so it
routes as a direct exchange would; topic, so that RabbitMQ's topic permissions can let
the least-privilege worker user of ``infra/rabbitmq.py`` publish ``event`` and nothing
else):

    job           -> {p}.jobs            jobs to fan out (dispatcher)
    task.{pool}   -> {p}.tasks.{pool}    task batches (workers of that pool)
    event         -> {p}.events          results and progress (dispatcher)

Retries go through one delay queue per tier: a topic exchange ``{p}.retry.{n}s`` (every
key, ``#``, goes to its one queue) feeds a queue whose ``x-message-ttl`` is n seconds and
which dead-letters back to the main exchange with the message's original routing key.
(A per-message TTL would block behind the head of a shared queue.) Dead letters go to
the fanout ``{p}.dlx`` and queue ``{p}.dead``. Work queues are quorum queues with
``x-delivery-limit``: a message whose consumer dies on it again and again is
dead-lettered by the broker. ``{p}.control`` is a fanout that reaches every live worker
(cancellations, revocations); on RabbitMQ each worker's queue on it is server-named
(``amq.gen-…``), so a worker needs no right to name queues.

Virtual transports (the embedded ``memory://``) ignore queue arguments; the broker module
stands in for TTL and DLX there.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass

from kombu import Exchange, Queue

#: Retry delay tiers in seconds; a delay is rounded down to one of these.
RETRY_TIERS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

JOB_KEY = "job"
EVENT_KEY = "event"


def task_key(pool: str) -> str:
    return f"task.{pool}"


def main_exchange(prefix: str) -> Exchange:
    return Exchange(prefix, type="topic", durable=True)


def dead_exchange(prefix: str) -> Exchange:
    return Exchange(f"{prefix}.dlx", type="fanout", durable=True)


def retry_exchange(prefix: str, tier: int) -> Exchange:
    return Exchange(f"{prefix}.retry.{tier}s", type="topic", durable=True)


def control_exchange(prefix: str) -> Exchange:
    return Exchange(f"{prefix}.control", type="fanout", durable=True)


def _work_queue(
    prefix: str, name: str, key: str, delivery_limit: int, *, declare: bool = True
) -> Queue:
    return Queue(
        name,
        exchange=main_exchange(prefix),
        routing_key=key,
        durable=True,
        no_declare=not declare,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": dead_exchange(prefix).name,
        },
    )


def job_queue(prefix: str, delivery_limit: int) -> Queue:
    return _work_queue(prefix, f"{prefix}.jobs", JOB_KEY, delivery_limit)


def task_queue(prefix: str, pool: str, delivery_limit: int, *, declare: bool = True) -> Queue:
    """``declare=False``: consumed as it is (it must exist), never declared."""
    name = f"{prefix}.tasks.{pool}"
    return _work_queue(prefix, name, task_key(pool), delivery_limit, declare=declare)


def event_queue(prefix: str, delivery_limit: int) -> Queue:
    return _work_queue(prefix, f"{prefix}.events", EVENT_KEY, delivery_limit)


def dead_queue(prefix: str) -> Queue:
    return Queue(f"{prefix}.dead", exchange=dead_exchange(prefix), durable=True)


def retry_queue(prefix: str, tier: int) -> Queue:
    return Queue(
        f"{prefix}.retry.{tier}s",
        exchange=retry_exchange(prefix, tier),
        routing_key="#",
        durable=True,
        queue_arguments={
            "x-message-ttl": tier * 1000,
            "x-dead-letter-exchange": main_exchange(prefix).name,
        },
    )


def control_queue(prefix: str, worker_id: str, *, server_named: bool = False) -> Queue:
    """Each worker's private queue on the control fanout; gone when the worker is.

    ``server_named`` (RabbitMQ): the broker names it (``amq.gen-…``) and the exchange is
    not declared, so a worker with the least rights can make it. SQS needs the name."""
    exchange = control_exchange(prefix)
    if server_named:
        exchange = Exchange(exchange.name, type=exchange.type, durable=True, no_declare=True)
    return Queue(
        "" if server_named else f"{prefix}.control.{worker_id}",
        exchange=exchange,
        durable=False,
        exclusive=True,
        auto_delete=True,
    )


def tier_for(delay: float) -> int:
    """The largest tier not above ``delay`` (the smallest tier for shorter delays)."""
    chosen = RETRY_TIERS[0]
    for tier in RETRY_TIERS:
        if tier <= delay:
            chosen = tier
    return chosen


def all_queues(prefix: str, pools: tuple[str, ...], delivery_limit: int) -> list[Queue]:
    """Everything a fresh broker needs, for provisioning and for start-up declaration."""
    return [
        job_queue(prefix, delivery_limit),
        event_queue(prefix, delivery_limit),
        dead_queue(prefix),
        *(task_queue(prefix, pool, delivery_limit) for pool in pools),
        *(retry_queue(prefix, tier) for tier in RETRY_TIERS),
    ]


# --------------------------------------------------------------------------- SQS

#: kombu's SQS transport names a queue this way; provisioning must use the same names.
_SQS_TABLE = {ord(c): ord("_") for c in string.punctuation if c not in "-_."}
_SQS_TABLE[ord(".")] = ord("-")


def sqs_name(name: str) -> str:
    """The SQS queue name kombu uses for the queue called ``name`` in this module."""
    return name.translate(_SQS_TABLE)


@dataclass(frozen=True)
class SqsQueue:
    """One SQS queue: its name, its attributes, and where its dead letters go (if anywhere)."""

    name: str
    visibility_timeout: int
    dead_letter_to: str | None = None
    max_receive_count: int = 0


def sqs_attributes(queue: SqsQueue, dead_letter_arn: str | None) -> dict[str, str]:
    """The exact attributes ``queue`` is created with, by the services and by provisioning.

    CreateQueue is idempotent only when the attributes match to the letter, so both build
    them here (the redrive count is a string, as SQS returns it).
    """
    attributes = {"VisibilityTimeout": str(queue.visibility_timeout)}
    if queue.dead_letter_to is not None:
        policy = {
            "deadLetterTargetArn": dead_letter_arn or f"(the ARN of {queue.dead_letter_to})",
            "maxReceiveCount": str(queue.max_receive_count),
        }
        attributes["RedrivePolicy"] = json.dumps(policy)
    return attributes


def sqs_queues(
    prefix: str, pools: tuple[str, ...], delivery_limit: int, visibility_timeout: int
) -> list[SqsQueue]:
    """The SQS counterpart of ``all_queues``: work queues redrive to the dead queue after
    ``delivery_limit + 1`` receives (as a quorum queue's ``x-delivery-limit`` does).
    Delays need no queues of their own on SQS."""
    dead = sqs_name(dead_queue(prefix).name)
    work = [job_queue(prefix, delivery_limit), event_queue(prefix, delivery_limit)]
    work += [task_queue(prefix, pool, delivery_limit) for pool in pools]
    return [
        SqsQueue(dead, visibility_timeout),
        *(SqsQueue(sqs_name(q.name), visibility_timeout, dead, delivery_limit + 1) for q in work),
    ]


def queue_name_for_key(prefix: str, routing_key: str) -> str:
    """The queue the main exchange routes ``routing_key`` to (brokers without exchanges
    publish to it directly). ValueError for a key this module never routes."""
    if routing_key == JOB_KEY:
        return job_queue(prefix, 1).name
    if routing_key == EVENT_KEY:
        return event_queue(prefix, 1).name
    pool = routing_key.removeprefix(task_key(""))
    if pool != routing_key and pool:
        return task_queue(prefix, pool, 1).name
    raise ValueError(f"no queue takes routing key {routing_key!r}")


def is_control_queue(prefix: str, name: str) -> bool:
    """Whether ``name`` (in this module's or SQS's spelling) is a worker's control queue."""
    return sqs_name(name).startswith(sqs_name(f"{control_exchange(prefix).name}."))


def sqs_queue(prefix: str, name: str, delivery_limit: int, visibility_timeout: int) -> SqsQueue:
    """The SQS queue behind the queue called ``name`` here, as ``sqs_queues`` lists it: a
    work queue redrives to the dead queue; the dead queue and control queues do not."""
    dead = sqs_name(dead_queue(prefix).name)
    if sqs_name(name) == dead or is_control_queue(prefix, name):
        return SqsQueue(sqs_name(name), visibility_timeout)
    return SqsQueue(sqs_name(name), visibility_timeout, dead, delivery_limit + 1)
