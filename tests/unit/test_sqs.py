"""The pure parts of SQS support: topology lookups, the SQS_* settings, how a delivery reads."""

from __future__ import annotations

from typing import Any

import pytest
from kombu.message import Message

from libs.common import topology
from libs.common.broker import CAUSE_HEADER, dead_cause, delivery_count
from libs.common.settings import SettingsError, load

PREFIX = "cv"


@pytest.mark.parametrize(
    ("key", "queue"),
    [("job", "cv.jobs"), ("event", "cv.events"), ("task.shared", "cv.tasks.shared"),
     ("task.gpu-1", "cv.tasks.gpu-1")],
)  # fmt: skip
def test_queue_name_for_key_matches_the_bindings(key: str, queue: str) -> None:
    assert topology.queue_name_for_key(PREFIX, key) == queue
    bound = {q.name: q.routing_key for q in topology.all_queues(PREFIX, ("shared", "gpu-1"), 3)}
    assert bound[queue] == key


@pytest.mark.parametrize("key", ["", "task.", "tasks.shared", "dead"])
def test_queue_name_for_an_unrouted_key_raises(key: str) -> None:
    with pytest.raises(ValueError, match="no queue takes"):
        topology.queue_name_for_key(PREFIX, key)


def test_sqs_queue_agrees_with_sqs_queues() -> None:
    listed = topology.sqs_queues(PREFIX, ("shared", "big"), 4, 30)
    names = [q.name for q in topology.all_queues(PREFIX, ("shared", "big"), 4)]
    by_name = {topology.sqs_queue(PREFIX, name, 4, 30) for name in names if "retry" not in name}
    assert by_name == set(listed)
    for queue in listed:  # SQS's own spelling gives the same answer
        assert topology.sqs_queue(PREFIX, queue.name, 4, 30) == queue


def test_control_queues_have_no_redrive() -> None:
    name = topology.control_queue(PREFIX, "host-1-abc").name
    assert topology.is_control_queue(PREFIX, name)
    assert topology.is_control_queue(PREFIX, topology.sqs_name(name))
    assert not topology.is_control_queue(PREFIX, topology.task_queue(PREFIX, "shared", 1).name)
    queue = topology.sqs_queue(PREFIX, name, 4, 30)
    assert (queue.name, queue.dead_letter_to) == ("cv-control-host-1-abc", None)


# --------------------------------------------------------------------------- settings


def test_sqs_defaults() -> None:
    s = load({})
    assert (s.sqs_region, s.sqs_visibility_timeout, s.sqs_wait_seconds) == ("us-east-1", 60, 5)
    assert s.sqs_create_queues is True


def test_sqs_region_falls_back_to_the_aws_variables() -> None:
    assert load({"AWS_DEFAULT_REGION": "eu-west-1"}).sqs_region == "eu-west-1"
    assert load({"AWS_REGION": "eu-north-1", "AWS_DEFAULT_REGION": "x"}).sqs_region == "eu-north-1"
    assert load({"AWS_REGION": "eu-north-1", "SQS_REGION": "ap-south-1"}).sqs_region == "ap-south-1"


@pytest.mark.parametrize(
    ("env", "named"),
    [({"SQS_VISIBILITY_TIMEOUT": "1"}, "SQS_VISIBILITY_TIMEOUT"),
     ({"SQS_VISIBILITY_TIMEOUT": "43201"}, "SQS_VISIBILITY_TIMEOUT"),
     ({"SQS_WAIT_SECONDS": "21"}, "SQS_WAIT_SECONDS"),
     ({"SQS_WAIT_SECONDS": "-1"}, "SQS_WAIT_SECONDS"),
     ({"SQS_WAIT_SECONDS": "10", "SQS_VISIBILITY_TIMEOUT": "30"}, "SQS_WAIT_SECONDS"),
     ({"SQS_CREATE_QUEUES": "maybe"}, "SQS_CREATE_QUEUES")],
)  # fmt: skip
def test_bad_sqs_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load(env)
    assert str(caught.value).startswith(f"{named}: ")
    assert "\n" not in str(caught.value)


def test_an_unquoted_secret_is_caught_and_not_echoed() -> None:
    with pytest.raises(SettingsError) as caught:
        load({"BROKER_URL": "sqs://AKIAEXAMPLE:abc/def+ghi@"})
    message = str(caught.value)
    assert message.startswith("BROKER_URL: ") and "%2F" in message
    assert "abc/def" not in message
    assert load({"BROKER_URL": "sqs://AKIAEXAMPLE:abc%2Fdef%2Bghi@"}).broker_url


# --------------------------------------------------------------------------- deliveries


def _sqs_delivery(
    body_queue: str, received_from: str, receives: int, headers: dict[str, Any] | None = None
) -> Message:
    """A delivery as kombu's SQS transport makes it."""
    return Message(
        body=b"{}",
        headers=headers or {},
        delivery_info={
            "exchange": "",
            "routing_key": body_queue,
            "sqs_queue": f"http://sqs.local/123456789012/{received_from}",
            "sqs_message": {"Attributes": {"ApproximateReceiveCount": str(receives)}},
        },
    )


def test_sqs_delivery_count_is_the_receive_count() -> None:
    assert delivery_count(_sqs_delivery("cv.tasks.shared", "cv-tasks-shared", 1)) == 1
    assert delivery_count(_sqs_delivery("cv.tasks.shared", "cv-tasks-shared", 4)) == 4


def test_dead_cause_on_sqs() -> None:
    redriven = _sqs_delivery("cv.tasks.shared", "cv-dead", 7)
    assert dead_cause(redriven) == (
        "SQS dead-lettered it from cv-tasks-shared: received 6 times without being deleted, "
        "past the delivery limit (its consumers died or gave it back each time)"
    )
    explicit = _sqs_delivery("cv.dead", "cv-dead", 1, {CAUSE_HEADER: "permanent error: x"})
    assert dead_cause(explicit) == "permanent error: x"
    assert dead_cause(_sqs_delivery("cv.dead", "cv-dead", 1)) == (
        "dead-lettered without a recorded cause"
    )
