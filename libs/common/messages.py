"""Every message on the wire: msgspec structs in a tagged union inside one envelope.

Schema evolution follows msgspec's rules: a new field gets a default, a field's type never
changes, a tag is never reused. Decode once, with the module-level decoder.
"""

from __future__ import annotations

import time
import uuid

import msgspec

SCHEMA_VERSION = 1


class JobRequested(msgspec.Struct, tag="job.requested", frozen=True):
    """The web service recorded a job; the dispatcher fans it out."""

    kind: str


class CsvTask(msgspec.Struct, tag="task.csv", frozen=True):
    """Map rows ``first_row..first_row+rows-1`` found at bytes ``[start, end)`` of ``source``."""

    task_id: str
    seq: int
    source: str
    start: int
    end: int
    first_row: int
    rows: int
    header: list[str]
    spec: str
    output: str


class CanaryTask(msgspec.Struct, tag="task.canary", frozen=True):
    """Hold a worker for ``seconds``: a deployment smoke test, and a lease-settings check."""

    task_id: str
    seq: int
    seconds: float


class TrackRef(msgspec.Struct, frozen=True):
    """One track of a track task: found by search (``artist`` and ``title``) or a file URL."""

    id: int
    row: int
    artist: str
    title: str
    location: str = ""


class TrackTask(msgspec.Struct, tag="task.tracks", frozen=True):
    """Fetch each track's audio (a search, or ``location``), and make its feature vector."""

    task_id: str
    seq: int
    tracks: list[TrackRef]


class TrackProgress(msgspec.Struct, tag="task.progress", frozen=True):
    """A worker's stage on one track: ``searching``, ``downloading`` or ``analysing``."""

    task_id: str
    track_id: int
    stage: str


class TrackOutcome(msgspec.Struct, frozen=True):
    """A vector (float32, little-endian) and a summary, or the reason there is none."""

    id: int
    vector: bytes | None = None
    version: int = 0
    duration: float | None = None
    summary: dict[str, float | str] = {}
    source_url: str | None = None
    error: str | None = None


class RowError(msgspec.Struct, frozen=True, array_like=True):
    row: int
    column: str | None
    reason: str


class TaskResult(msgspec.Struct, tag="task.result", frozen=True):
    """A worker finished a task: its output part is durable before this is sent."""

    task_id: str
    seq: int
    rows_in: int
    rows_out: int
    rows_failed: int
    rows_filtered: int = 0
    errors: list[RowError] = []
    errors_truncated: int = 0
    worker: str = ""
    elapsed: float = 0.0
    tracks: list[TrackOutcome] = []


class JobCancelled(msgspec.Struct, tag="job.cancelled", frozen=True):
    """Broadcast to workers: drop the remaining tasks of this job."""


class WorkerRevoked(msgspec.Struct, tag="worker.revoked", frozen=True):
    """Broadcast to workers: the worker with this registry id, or every worker process
    paired under ``paired_id``, must stop taking work now (its token was revoked)."""

    worker_id: str = ""
    paired_id: str = ""


class Capabilities(msgspec.Struct, frozen=True):
    """What a worker can run: its handlers' names, whether it has ffmpeg, its CPU cores."""

    handlers: list[str] = []
    ffmpeg: bool = False
    cores: int = 0
    concurrency: int = 1


#: A worker's ``Heartbeat.state``: taking tasks, draining before exit, exited cleanly.
W_ONLINE, W_STOPPING, W_STOPPED = "online", "stopping", "stopped"


class Heartbeat(msgspec.Struct, tag="worker.heartbeat", frozen=True):
    """A worker is alive (sent every ``interval`` seconds; the envelope's job id is "").

    ``state`` is ``online``, ``stopping`` (draining) or ``stopped`` (the last one of a clean
    shutdown). ``items_per_second`` counts rows or tracks finished in the last minute.
    """

    worker_id: str
    name: str
    state: str
    host: str = ""
    pid: int = 0
    version: str = ""
    pool: str = ""
    capabilities: Capabilities = Capabilities()
    in_flight: int = 0
    processed: int = 0
    failed: int = 0
    items_per_second: float = 0.0
    current_job: str | None = None
    interval: float = 5.0
    started_at: float = 0.0
    #: The pairing this worker process runs under ("" for an operator-run worker).
    paired_id: str = ""


TaskBody = CsvTask | CanaryTask | TrackTask
Body = (
    JobRequested | CsvTask | CanaryTask | TrackTask | TrackProgress | TaskResult | JobCancelled
    | WorkerRevoked | Heartbeat
)  # fmt: skip


class Envelope(msgspec.Struct, frozen=True):
    id: str
    job_id: str
    body: Body
    attempt: int = 1
    sent_at: float = 0.0
    v: int = SCHEMA_VERSION

    def next_attempt(self) -> Envelope:
        return msgspec.structs.replace(self, attempt=self.attempt + 1, sent_at=time.time())


def envelope(job_id: str, body: Body, *, message_id: str | None = None) -> Envelope:
    return Envelope(
        id=message_id or uuid.uuid4().hex, job_id=job_id, body=body, sent_at=time.time()
    )


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)


def encode(env: Envelope) -> bytes:
    return _encoder.encode(env)


def decode(data: bytes | str) -> Envelope:
    """Raise ``msgspec.ValidationError``/``DecodeError`` for anything that is not an Envelope."""
    return _decoder.decode(data)


def task_id(job_id: str, seq: int) -> str:
    """Deterministic: a re-published chunk has the same id, so its effects are keyed by it."""
    return f"{job_id}-{seq:08d}"
