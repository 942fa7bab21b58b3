"""The worker gateway's frames: what a paired worker and the web say over one WebSocket.

A lent machine reaches only the web service (``services/web/gateway.py``): the gateway
consumes the worker's pool queue for it and forwards each task as a ``Task`` frame, and
the worker answers with ``Done``, ``Retry``, ``Dead``, ``Skip`` or ``Progress`` naming the
delivery it was given. The gateway publishes the worker's result with a confirm, and only
then acks the task; it accepts answers only for deliveries this socket holds, so a lent
machine can forge nothing.

Every frame is a msgspec struct in one tagged union, in an envelope with the protocol
version (``v``), under the same evolution rules as ``messages``: a new field gets a
default, a type never changes, a tag is never reused. Frames travel as binary JSON.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from libs.common import messages

#: The version of this protocol. A peer speaking another is closed with ``BAD_FRAME``.
PROTOCOL_VERSION = 1
#: The WebSocket route of the gateway, on the web service.
PATH = "/api/workers/connect"

#: Close codes (RFC 6455 leaves 4000-4999 to applications), each with a reason string.
UNAUTHORIZED = 4401  # missing, unknown or revoked token: pair again
REVOKED = 4403  # revoked while connected: stop, hand back, exit 3
BAD_FRAME = 4400  # malformed, wrong version, or a delivery this socket does not hold
TIMEOUT = 4408  # the worker missed its heartbeats
GOING_AWAY = 1001  # the web is shutting down: connect again (to another instance)
BROKER_LOST = 1011  # the gateway lost the broker: connect again

# Bounded text from the worker: a reason is for people, not a payload.
Reason = Annotated[str, msgspec.Meta(max_length=2000)]
Short = Annotated[str, msgspec.Meta(max_length=255)]


# -- worker -> gateway ------------------------------------------------------------------
class Hello(msgspec.Struct, tag="hello", frozen=True, forbid_unknown_fields=True):
    """The first frame: who this process is, and how many tasks it runs at once."""

    worker_id: Short
    name: Short
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    host: Short = ""
    pid: int = 0
    version: Short = ""
    capabilities: messages.Capabilities = messages.Capabilities()


class Done(msgspec.Struct, tag="done", frozen=True):
    """The task of ``delivery`` finished (its output part is durable): publish ``result``,
    then ack."""

    delivery: int
    result: messages.TaskResult


class Retry(msgspec.Struct, tag="retry", frozen=True):
    """Send the task of ``delivery`` back for another attempt after ``delay`` seconds."""

    delivery: int
    delay: Annotated[float, msgspec.Meta(ge=0, le=86_400)]
    reason: Reason = ""


class Dead(msgspec.Struct, tag="dead", frozen=True):
    """Dead-letter the task of ``delivery`` with ``cause`` (a permanent failure)."""

    delivery: int
    cause: Reason


class Skip(msgspec.Struct, tag="skip", frozen=True):
    """The task of ``delivery`` belongs to a cancelled job: ack it without a result. The
    gateway accepts it only for a job it knows was cancelled."""

    delivery: int


class Progress(msgspec.Struct, tag="progress", frozen=True):
    """A stage of one track of the task of ``delivery``."""

    delivery: int
    track_id: int
    stage: Short


class Beat(msgspec.Struct, tag="beat", frozen=True):
    """The worker's heartbeat; the gateway fills in who it is (pool, pairing, id)."""

    state: Short
    in_flight: int = 0
    processed: int = 0
    failed: int = 0
    items_per_second: float = 0.0
    current_job: Short | None = None
    interval: float = 5.0
    started_at: float = 0.0


class Pause(msgspec.Struct, tag="pause", frozen=True):
    """Send no more tasks (the worker is stopping); those held stay held until settled."""


# -- gateway -> worker ------------------------------------------------------------------
class Welcome(msgspec.Struct, tag="welcome", frozen=True):
    """Accepted: the registry id the worker is listed under, its pool and the beat rate."""

    worker_id: str
    pool: str
    heartbeat_seconds: float
    #: How long the gateway waits without a frame before it drops the worker.
    timeout_seconds: float


class Task(msgspec.Struct, tag="task", frozen=True):
    """A task to run; ``delivery`` names it in the answer."""

    delivery: int
    envelope: messages.Envelope


class Control(msgspec.Struct, tag="control", frozen=True):
    """A broadcast for workers: a job was cancelled, or a worker revoked."""

    envelope: messages.Envelope


FromWorker = Hello | Done | Retry | Dead | Skip | Progress | Beat | Pause
ToWorker = Welcome | Task | Control


class Frame(msgspec.Struct, frozen=True):
    """What crosses the socket: one frame, with the protocol version."""

    body: FromWorker | ToWorker
    v: int = PROTOCOL_VERSION


class FrameError(ValueError):
    """A frame this side cannot accept; ``str()`` is the reason sent with the close."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Frame)


def encode(body: FromWorker | ToWorker) -> bytes:
    return _encoder.encode(Frame(body))


def decode(data: bytes | str) -> FromWorker | ToWorker:
    """The frame's body; ``FrameError`` for anything malformed or of another version."""
    try:
        frame = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FrameError(f"malformed frame: {exc}") from None
    if frame.v != PROTOCOL_VERSION:
        raise FrameError(f"protocol version {frame.v} is not {PROTOCOL_VERSION}")
    return frame.body


def from_worker(data: bytes | str) -> FromWorker:
    body = decode(data)
    if not isinstance(body, FromWorker):
        raise FrameError(f"a worker does not send {type(body).__name__} frames")
    return body


def to_worker(data: bytes | str) -> ToWorker:
    body = decode(data)
    if not isinstance(body, ToWorker):
        raise FrameError(f"the gateway does not send {type(body).__name__} frames")
    return body
