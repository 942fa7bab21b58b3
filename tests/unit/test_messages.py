"""Unit tests for the wire messages (libs/common/messages.py)."""

from __future__ import annotations

import json

import msgspec
import pytest

from libs.common import messages
from libs.common.messages import (
    SCHEMA_VERSION,
    CsvTask,
    Envelope,
    JobCancelled,
    JobRequested,
    RowError,
    TaskResult,
)

CSV_TASK = CsvTask(
    task_id="job1-000003",
    seq=3,
    source="uploads/job1.csv",
    start=120,
    end=4096,
    first_row=201,
    rows=100,
    header=["id", "name"],
    spec='{"columns": [{"name": "id"}]}',
    output="jobs/job1/parts/00000003.csv",
)
TASK_RESULT = TaskResult(
    task_id="job1-000003",
    seq=3,
    rows_in=100,
    rows_out=97,
    rows_failed=2,
    rows_filtered=1,
    errors=[RowError(205, "age", "'x' is not a valid int"), RowError(260, None, "ragged")],
    errors_truncated=4,
    worker="host-1",
    elapsed=0.25,
)

BODIES = [JobRequested("csv"), CSV_TASK, TASK_RESULT, TaskResult("t", 0, 0, 0, 0), JobCancelled()]


@pytest.mark.parametrize("body", BODIES, ids=lambda b: type(b).__name__)
def test_round_trip_every_body_type(body: messages.Body) -> None:
    env = messages.envelope("job1", body)
    data = messages.encode(env)
    assert isinstance(data, bytes)
    decoded = messages.decode(data)
    assert decoded == env
    assert type(decoded.body) is type(body)
    assert decoded.body == body
    # str input is accepted too
    assert messages.decode(data.decode()) == env


@pytest.mark.parametrize(
    ("body", "tag"),
    [
        (JobRequested("csv"), "job.requested"),
        (CSV_TASK, "task.csv"),
        (TASK_RESULT, "task.result"),
        (JobCancelled(), "job.cancelled"),
    ],
)
def test_body_carries_its_tag(body: messages.Body, tag: str) -> None:
    wire = json.loads(messages.encode(messages.envelope("j", body)))
    assert wire["body"]["type"] == tag


def test_envelope_fields_and_defaults() -> None:
    env = messages.envelope("job1", JobRequested("csv"), message_id="m-1")
    assert env.id == "m-1"
    assert env.job_id == "job1"
    assert env.attempt == 1
    assert env.v == SCHEMA_VERSION
    assert env.sent_at > 0


def test_envelope_generates_unique_ids() -> None:
    ids = {messages.envelope("j", JobCancelled()).id for _ in range(50)}
    assert len(ids) == 50


def test_row_errors_travel_as_arrays() -> None:
    wire = json.loads(messages.encode(messages.envelope("j", TASK_RESULT)))
    assert wire["body"]["errors"] == [[205, "age", "'x' is not a valid int"], [260, None, "ragged"]]


@pytest.mark.parametrize(
    "data",
    [
        b'{"id": "a", "job_id": "j", "body": {"type": "job.exploded"}}',
        b'{"id": "a", "job_id": "j", "body": {"kind": "csv"}}',  # no tag at all
        b'{"id": "a", "job_id": "j"}',  # no body
        b'{"id": 1, "job_id": "j", "body": {"type": "job.cancelled"}}',  # wrong type
        b'{"id": "a", "job_id": "j", "body": {"type": "job.requested"}}',  # missing kind
        b"[1, 2, 3]",
    ],
)
def test_decode_rejects_invalid_envelopes(data: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        messages.decode(data)


@pytest.mark.parametrize("data", [b"garbage", b"", b'{"id": "a"', b"\xff\xfe"])
def test_decode_rejects_garbage(data: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        messages.decode(data)


def test_unknown_tag_error_names_the_tag_path() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"body\.type"):
        messages.decode(b'{"id": "a", "job_id": "j", "body": {"type": "nope"}}')


def test_old_envelope_without_optional_fields_decodes() -> None:
    data = b'{"id": "m1", "job_id": "j1", "body": {"type": "job.requested", "kind": "csv"}}'
    env = messages.decode(data)
    assert env == Envelope(id="m1", job_id="j1", body=JobRequested("csv"))
    assert (env.attempt, env.sent_at, env.v) == (1, 0.0, SCHEMA_VERSION)


def test_old_task_result_without_defaulted_fields_decodes() -> None:
    body = {
        "type": "task.result",
        "task_id": "j1-000000",
        "seq": 0,
        "rows_in": 10,
        "rows_out": 9,
        "rows_failed": 1,
    }
    env = messages.decode(json.dumps({"id": "m", "job_id": "j1", "body": body}))
    result = env.body
    assert isinstance(result, TaskResult)
    assert (result.rows_in, result.rows_out, result.rows_failed) == (10, 9, 1)
    assert result.rows_filtered == 0
    assert result.errors == []
    assert result.errors_truncated == 0
    assert result.worker == ""
    assert result.elapsed == 0.0


def test_newer_message_with_unknown_fields_still_decodes() -> None:
    data = json.dumps(
        {
            "id": "m",
            "job_id": "j",
            "body": {"type": "job.requested", "kind": "csv", "priority": 5},
            "attempt": 2,
            "trace": "abc",
            "v": 2,
        }
    )
    env = messages.decode(data)
    assert env.body == JobRequested("csv")
    assert env.attempt == 2
    assert env.v == 2


def test_default_errors_list_is_not_shared() -> None:
    a = TaskResult("a", 0, 0, 0, 0)
    b = TaskResult("b", 0, 0, 0, 0)
    a.errors.append(RowError(1, None, "x"))
    assert b.errors == []


@pytest.mark.parametrize(
    ("job_id", "seq", "expected"),
    [("abc", 0, "abc-00000000"), ("abc", 7, "abc-00000007"), ("j", 123456, "j-00123456")],
)
def test_task_id_format(job_id: str, seq: int, expected: str) -> None:
    assert messages.task_id(job_id, seq) == expected


def test_task_id_is_deterministic() -> None:
    assert messages.task_id("job", 42) == messages.task_id("job", 42)
    assert messages.task_id("job", 42) != messages.task_id("job", 43)
    assert messages.task_id("job", 1) != messages.task_id("other", 1)


def test_task_ids_sort_by_seq() -> None:
    seqs = [5, 0, 999_999, 10, 100, 1, 99, 12_345]
    ids = [messages.task_id("0123abcd", seq) for seq in seqs]
    assert sorted(ids) == [messages.task_id("0123abcd", seq) for seq in sorted(seqs)]


def test_next_attempt_increments_and_keeps_the_rest() -> None:
    env = Envelope(id="m", job_id="j", body=CSV_TASK, attempt=1, sent_at=0.0)
    second = env.next_attempt()
    third = second.next_attempt()
    assert (env.attempt, second.attempt, third.attempt) == (1, 2, 3)
    assert second.sent_at > env.sent_at
    assert (second.id, second.job_id, second.body, second.v) == (env.id, env.job_id, CSV_TASK, 1)
    assert messages.decode(messages.encode(third)).attempt == 3


def test_structs_are_frozen() -> None:
    env = messages.envelope("j", JobCancelled())
    with pytest.raises(AttributeError):
        env.attempt = 5  # type: ignore[misc]
