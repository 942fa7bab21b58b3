"""Unit tests for the queue topology (libs/common/topology.py): pure data, no broker."""

from __future__ import annotations

from typing import Any

import pytest
from kombu import Queue

from libs.common import topology
from libs.common.topology import RETRY_TIERS

PREFIX = "cv"


def args(queue: Queue) -> dict[str, Any]:
    """kombu sets ``queue_arguments`` dynamically (None when not given)."""
    return getattr(queue, "queue_arguments", None) or {}


def test_routing_keys() -> None:
    assert topology.JOB_KEY == "job"
    assert topology.EVENT_KEY == "event"
    assert topology.task_key("shared") == "task.shared"
    assert topology.task_key("gpu") == "task.gpu"


@pytest.mark.parametrize("prefix", ["conveyor", "cv", "test-123_x"])
def test_exchange_names_derive_from_the_prefix(prefix: str) -> None:
    assert (topology.main_exchange(prefix).name, topology.main_exchange(prefix).type) == (
        prefix,
        "topic",
    )
    assert (topology.dead_exchange(prefix).name, topology.dead_exchange(prefix).type) == (
        f"{prefix}.dlx",
        "fanout",
    )
    assert topology.retry_exchange(prefix, 8).name == f"{prefix}.retry.8s"
    assert topology.retry_exchange(prefix, 8).type == "topic"
    assert topology.control_exchange(prefix).name == f"{prefix}.control"
    assert topology.control_exchange(prefix).type == "fanout"
    for exchange in (
        topology.main_exchange(prefix),
        topology.dead_exchange(prefix),
        topology.retry_exchange(prefix, 1),
        topology.control_exchange(prefix),
    ):
        assert exchange.durable


@pytest.mark.parametrize(
    ("queue", "name", "key"),
    [
        (topology.job_queue(PREFIX, 7), "cv.jobs", "job"),
        (topology.event_queue(PREFIX, 7), "cv.events", "event"),
        (topology.task_queue(PREFIX, "shared", 7), "cv.tasks.shared", "task.shared"),
        (topology.task_queue(PREFIX, "big", 7), "cv.tasks.big", "task.big"),
    ],
    ids=lambda v: v.name if isinstance(v, Queue) else None,
)
def test_work_queues_are_quorum_with_delivery_limit_and_dlx(
    queue: Queue, name: str, key: str
) -> None:
    assert queue.name == name
    assert queue.routing_key == key
    assert queue.exchange.name == PREFIX
    assert queue.exchange.type == "topic"
    assert queue.durable
    assert args(queue) == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 7,
        "x-dead-letter-exchange": "cv.dlx",
    }


def test_dead_queue_binds_the_dead_exchange() -> None:
    queue = topology.dead_queue(PREFIX)
    assert queue.name == "cv.dead"
    assert queue.exchange.name == "cv.dlx"
    assert queue.exchange.type == "fanout"
    assert queue.durable
    assert not args(queue)


@pytest.mark.parametrize("tier", RETRY_TIERS)
def test_retry_queue_ttl_and_dead_letter_back_to_main(tier: int) -> None:
    queue = topology.retry_queue(PREFIX, tier)
    assert queue.name == f"cv.retry.{tier}s"
    assert queue.exchange.name == f"cv.retry.{tier}s"
    assert queue.exchange.type == "topic"
    assert queue.routing_key == "#"  # every key: the tier's one queue
    assert queue.durable
    arguments = args(queue)
    assert arguments["x-message-ttl"] == tier * 1000
    assert arguments["x-dead-letter-exchange"] == PREFIX
    # The original routing key must survive: no override.
    assert "x-dead-letter-routing-key" not in arguments


def test_control_queue_is_private_and_transient() -> None:
    queue = topology.control_queue(PREFIX, "worker-1")
    assert queue.name == "cv.control.worker-1"
    assert queue.exchange.name == "cv.control"
    assert queue.exclusive
    assert queue.auto_delete
    assert not queue.durable
    assert topology.control_queue(PREFIX, "worker-2").name != queue.name


def test_a_server_named_control_queue_declares_nothing_but_itself() -> None:
    queue = topology.control_queue(PREFIX, "worker-1", server_named=True)
    assert queue.name == ""  # RabbitMQ names it amq.gen-…
    assert queue.exchange.name == "cv.control" and queue.exchange.no_declare
    assert queue.exclusive and queue.auto_delete and not queue.durable


def test_retry_tiers_are_increasing_powers_of_two() -> None:
    assert list(RETRY_TIERS) == sorted(set(RETRY_TIERS))
    assert all(tier & (tier - 1) == 0 for tier in RETRY_TIERS)
    assert RETRY_TIERS[0] == 1


@pytest.mark.parametrize(
    ("delay", "tier"),
    [
        (0.0, 1),
        (0.1, 1),
        (0.999, 1),
        (1, 1),
        (1.5, 1),
        (2, 2),
        (3.9, 2),
        (4, 4),
        (7.99, 4),
        (8, 8),
        (150, 128),
        (300, 256),
        (511.9, 256),
        (512, 512),
        (10_000, 512),
    ],
)
def test_tier_for(delay: float, tier: int) -> None:
    assert topology.tier_for(delay) == tier


def test_tier_for_never_exceeds_the_delay_above_the_smallest_tier() -> None:
    for tenth in range(10, 6000):
        delay = tenth / 10
        chosen = topology.tier_for(delay)
        assert chosen in RETRY_TIERS
        assert chosen <= delay
        bigger = [t for t in RETRY_TIERS if t > chosen]
        assert not bigger or bigger[0] > delay


@pytest.mark.parametrize("pools", [("shared",), ("shared", "big", "gpu"), ()])
def test_all_queues(pools: tuple[str, ...]) -> None:
    queues = topology.all_queues(PREFIX, pools, 5)
    names = [q.name for q in queues]
    assert len(names) == len(set(names))
    assert {"cv.jobs", "cv.events", "cv.dead"} <= set(names)
    for pool in pools:
        assert f"cv.tasks.{pool}" in names
    assert len([n for n in names if n.startswith("cv.tasks.")]) == len(pools)
    for tier in RETRY_TIERS:
        assert f"cv.retry.{tier}s" in names
    assert len(queues) == 3 + len(pools) + len(RETRY_TIERS)
    assert all(q.name.startswith("cv.") for q in queues)
    work = [q for q in queues if args(q).get("x-queue-type") == "quorum"]
    assert {q.name for q in work} == {"cv.jobs", "cv.events"} | {f"cv.tasks.{p}" for p in pools}
    assert all(args(q)["x-delivery-limit"] == 5 for q in work)


def test_prefixes_do_not_collide() -> None:
    a = {q.name for q in topology.all_queues("a", ("shared",), 5)}
    b = {q.name for q in topology.all_queues("b", ("shared",), 5)}
    assert not a & b
