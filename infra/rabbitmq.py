"""RabbitMQ for Conveyor: the topology as importable definitions, with a least-privilege
user for workers on machines you don't run (lent laptops, other people's servers).

    python -m infra.rabbitmq [--prefix conveyor] [--pool shared …] [--vhost /]
                             [--worker-user NAME] > definitions.json
    rabbitmqctl import_definitions definitions.json

With ``--worker-user`` the definitions create that user, with the password read from
``WORKER_BROKER_PASSWORD`` (stored as RabbitMQ's salted SHA-256, never in clear), and its
rights. Import them on a running broker, or at boot (``load_definitions``). The services
declare the same topology themselves at start; the definitions make it exist before any
worker that may not declare it connects.

What the worker user may do (regular expressions over names, and topic permissions over
routing keys):

- read: the task queues ``{p}.tasks.*`` (consume), the control fanout ``{p}.control``
  (bind its own queue) and server-named queues ``amq.gen-*`` (its control queue);
- write: the main exchange with routing key ``event`` only (results, progress,
  heartbeats), the retry exchanges with ``task.*`` keys only, the dead-letter exchange,
  and ``amq.gen-*`` (binding its control queue);
- configure: ``amq.gen-*`` only, the queue the broker names for it.

So it cannot read the job, event or dead queues, publish a job or a task, or create a
named queue or an exchange. ``tests/integration/test_rabbitmq_worker_user.py`` proves it
against a real broker.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import sys
from dataclasses import dataclass
from typing import Any

from kombu import Queue

from libs.common import topology

PASSWORD_ENV = "WORKER_BROKER_PASSWORD"
SERVER_NAMED = r"amq\.gen-.*"


@dataclass(frozen=True)
class Rights:
    """One user's permissions on a vhost: three regular expressions over names."""

    configure: str
    write: str
    read: str


def _either(*patterns: str) -> str:
    return "^(" + "|".join(patterns) + ")$"


def worker_rights(prefix: str) -> Rights:
    p = re.escape(prefix)
    return Rights(
        configure=_either(SERVER_NAMED),
        write=_either(SERVER_NAMED, p, rf"{p}\.retry\.[0-9]+s", rf"{p}\.dlx"),
        read=_either(SERVER_NAMED, rf"{p}\.tasks\..+", rf"{p}\.control"),
    )


def worker_topic_rights(prefix: str) -> list[tuple[str, str, str]]:
    """(exchange, write, read) per topic exchange: which routing keys the worker may use."""
    rights = [(topology.main_exchange(prefix).name, f"^{topology.EVENT_KEY}$", "^$")]
    for tier in topology.RETRY_TIERS:
        exchange = topology.retry_exchange(prefix, tier).name
        rights.append((exchange, rf"^{re.escape(topology.task_key(''))}.+$", "^$"))
    return rights


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + pw))."""
    salt = secrets.token_bytes(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def _exchanges(prefix: str) -> list[Any]:
    main = [topology.main_exchange(prefix), topology.dead_exchange(prefix)]
    main.append(topology.control_exchange(prefix))
    return main + [topology.retry_exchange(prefix, tier) for tier in topology.RETRY_TIERS]


def definitions(
    prefix: str,
    pools: tuple[str, ...],
    delivery_limit: int,
    *,
    vhost: str = "/",
    worker_user: str | None = None,
    worker_password: str | None = None,
) -> dict[str, Any]:
    """The topology the services declare (``topology.all_queues``), as definitions."""
    queues: list[Queue] = topology.all_queues(prefix, pools, delivery_limit)
    doc: dict[str, Any] = {
        "vhosts": [{"name": vhost}],
        "exchanges": [
            {"name": e.name, "vhost": vhost, "type": e.type, "durable": True,
             "auto_delete": False, "internal": False, "arguments": {}}
            for e in _exchanges(prefix)
        ],
        "queues": [
            {"name": q.name, "vhost": vhost, "durable": True, "auto_delete": False,
             "arguments": dict(q.queue_arguments or {})}
            for q in queues
        ],
        "bindings": [
            {"source": q.exchange.name, "vhost": vhost, "destination": q.name,
             "destination_type": "queue", "routing_key": q.routing_key or "",
             "arguments": {}}
            for q in queues
        ],
    }  # fmt: skip
    if worker_user is not None:
        if not worker_password:
            raise ValueError(f"the worker user {worker_user!r} needs a password")
        rights = worker_rights(prefix)
        doc["users"] = [
            {"name": worker_user, "password_hash": password_hash(worker_password),
             "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}
        ]  # fmt: skip
        doc["permissions"] = [
            {"user": worker_user, "vhost": vhost, "configure": rights.configure,
             "write": rights.write, "read": rights.read}
        ]  # fmt: skip
        doc["topic_permissions"] = [
            {"user": worker_user, "vhost": vhost, "exchange": exchange, "write": write,
             "read": read}
            for exchange, write, read in worker_topic_rights(prefix)
        ]  # fmt: skip
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.rabbitmq",
        description="Print RabbitMQ definitions (JSON) for Conveyor's topology, optionally "
        f"with a least-privilege worker user (password from {PASSWORD_ENV}). Import them "
        "with: rabbitmqctl import_definitions FILE",
    )
    parser.add_argument("--prefix", default="conveyor", help="QUEUE_PREFIX (default conveyor)")
    parser.add_argument(
        "--pool", action="append", help="a pool whose task queue to define (default: shared)"
    )
    parser.add_argument("--delivery-limit", type=int, default=5, help="DELIVERY_LIMIT")
    parser.add_argument("--vhost", default="/", help="the virtual host (default /)")
    parser.add_argument("--worker-user", help="also define this least-privilege worker user")
    args = parser.parse_args(argv)
    password = os.environ.get(PASSWORD_ENV)
    if args.worker_user and not password:
        parser.error(f"--worker-user needs its password in {PASSWORD_ENV}")
    doc = definitions(
        args.prefix, tuple(args.pool or ["shared"]), args.delivery_limit, vhost=args.vhost,
        worker_user=args.worker_user, worker_password=password,
    )  # fmt: skip
    json.dump(doc, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
