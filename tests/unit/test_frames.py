"""The gateway's frames (libs/common/frames.py): round trips, and every refusal."""

from __future__ import annotations

import msgspec
import pytest

from libs.common import frames, messages

TASK = messages.envelope("job1", messages.CanaryTask("job1-00000000", 0, 0.5))
RESULT = messages.TaskResult("job1-00000000", 0, 1, 1, 0)


@pytest.mark.parametrize(
    "frame",
    [
        frames.Hello("w-1", "laptop", concurrency=2, host="h", pid=7, version="0.1.0"),
        frames.Done(3, RESULT),
        frames.Retry(3, 1.5, "network"),
        frames.Dead(3, "bad spec"),
        frames.Skip(3),
        frames.Progress(3, 11, "downloading"),
        frames.Beat("online", in_flight=1, processed=2),
        frames.Pause(),
    ],
)
def test_a_workers_frames_round_trip(frame: frames.FromWorker) -> None:
    assert frames.from_worker(frames.encode(frame)) == frame


@pytest.mark.parametrize(
    "frame",
    [frames.Welcome("p.w-1", "remote-1", 5.0, 15.0), frames.Task(1, TASK), frames.Control(TASK)],
)
def test_the_gateways_frames_round_trip(frame: frames.ToWorker) -> None:
    assert frames.to_worker(frames.encode(frame)) == frame


def test_another_protocol_version_is_refused() -> None:
    data = msgspec.json.encode({"body": {"type": "pause"}, "v": frames.PROTOCOL_VERSION + 1})
    with pytest.raises(frames.FrameError, match="version"):
        frames.from_worker(data)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"{}",
        b'{"body": {"type": "nope"}}',
        b'{"body": {"type": "done", "delivery": "one", "result": {}}}',
        b'{"body": {"type": "hello", "worker_id": "w", "name": "n", "concurrency": 0}}',
        b'{"body": {"type": "hello", "worker_id": "w", "name": "n", "admin": true}}',
        msgspec.json.encode({"body": {"type": "dead", "delivery": 1, "cause": "x" * 2001}}),
        b'{"body": {"type": "retry", "delivery": 1, "delay": -1}}',
    ],
)
def test_malformed_frames_are_refused_with_a_reason(data: bytes) -> None:
    with pytest.raises(frames.FrameError) as caught:
        frames.from_worker(data)
    assert str(caught.value).startswith("malformed frame")


def test_each_side_refuses_the_other_sides_frames() -> None:
    with pytest.raises(frames.FrameError, match="worker does not send"):
        frames.from_worker(frames.encode(frames.Task(1, TASK)))
    with pytest.raises(frames.FrameError, match="gateway does not send"):
        frames.to_worker(frames.encode(frames.Pause()))
