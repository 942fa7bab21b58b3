"""SQLAlchemy 2 models. The schema itself is owned by the Alembic migrations in infra/."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Job states.
QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = (
    "queued",
    "running",
    "completed",
    "failed",
    "cancelled",
)
JOB_FINAL = frozenset({COMPLETED, FAILED, CANCELLED})

# Task states: a task is final once done, dead (dead-lettered) or cancelled.
T_QUEUED, T_DONE, T_DEAD, T_CANCELLED = "queued", "done", "dead", "cancelled"
TASK_FINAL = frozenset({T_DONE, T_DEAD, T_CANCELLED})


def now() -> float:
    return time.time()


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    pool: Mapped[str] = mapped_column(String(64), default="shared")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    source: Mapped[str | None] = mapped_column(Text, default=None)
    source_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    output: Mapped[str | None] = mapped_column(Text, default=None)
    header: Mapped[list[str]] = mapped_column(default=list)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[float] = mapped_column(Float, default=now, index=True)
    started_at: Mapped[float | None] = mapped_column(Float, default=None)
    finished_at: Mapped[float | None] = mapped_column(Float, default=None)
    # Fan-out cursor: where a restarted dispatcher resumes.
    fanout_done: Mapped[bool] = mapped_column(Boolean, default=False)
    cursor_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    cursor_seq: Mapped[int] = mapped_column(Integer, default=0)
    cursor_row: Mapped[int] = mapped_column(BigInteger, default=1)
    # Counters, moved only by task state transitions.
    rows_total: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_done: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_filtered: Mapped[int] = mapped_column(BigInteger, default=0)
    tasks_total: Mapped[int] = mapped_column(Integer, default=0)
    tasks_done: Mapped[int] = mapped_column(Integer, default=0)
    tasks_failed: Mapped[int] = mapped_column(Integer, default=0)
    #: The user who made it (accounts, issue 12); None for rows from before accounts.
    owner_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None, index=True
    )


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=T_QUEUED)
    start: Mapped[int] = mapped_column(BigInteger)
    end: Mapped[int] = mapped_column(BigInteger)
    first_row: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(Integer)
    rows_out: Mapped[int] = mapped_column(Integer, default=0)
    rows_failed: Mapped[int] = mapped_column(Integer, default=0)
    rows_filtered: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    finished_at: Mapped[float | None] = mapped_column(Float, default=None)
    # A track task's tracks (``messages.TrackRef`` fields); None for CSV and canary tasks.
    items: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)


class ItemError(Base):
    __tablename__ = "item_errors"
    __table_args__ = (Index("ix_item_errors_job_row", "job_id", "row"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    task_id: Mapped[str] = mapped_column(String(48))
    row: Mapped[int] = mapped_column(BigInteger)
    column: Mapped[str | None] = mapped_column(String(256), default=None)
    reason: Mapped[str] = mapped_column(Text)


# Track states: waiting for a worker, done, or not to be tried again (no audio to be had).
TR_PENDING, TR_VECTORIZED, TR_UNAVAILABLE, TR_FAILED = (
    "pending",
    "vectorized",
    "unavailable",
    "failed",
)


class Track(Base):
    """A song or an audio file, and its feature vector once a worker has made one.

    Tracks are shared by every job: ``key`` (a normalised "artist - title", or the file's
    URL) is what makes a second job skip what is already vectorized.
    """

    __tablename__ = "tracks"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    key: Mapped[str] = mapped_column(String(1024), unique=True)
    origin: Mapped[str] = mapped_column(String(16))  # "lastfm" or "file"
    artist: Mapped[str] = mapped_column(String(512), default="", index=True)
    title: Mapped[str] = mapped_column(String(512), index=True)
    location: Mapped[str | None] = mapped_column(Text, default=None)
    state: Mapped[str] = mapped_column(String(16), default=TR_PENDING)
    stage: Mapped[str | None] = mapped_column(String(16), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # float32, little-endian; compared only with vectors of the same version.
    vector: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    vector_version: Mapped[int | None] = mapped_column(Integer, default=None, index=True)
    duration: Mapped[float | None] = mapped_column(Float, default=None)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now, index=True)


class Outbox(Base):
    """Messages committed with the state that caused them; a relay publishes them."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    route: Mapped[str] = mapped_column(String(128))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    sent_at: Mapped[float | None] = mapped_column(Float, default=None, index=True)


class Worker(Base):
    """The worker registry: the latest heartbeat of each worker process, by its id.

    ``last_seen`` is when the dispatcher recorded it (the server's clock); ``sent_at`` is
    the worker's own clock, only compared with its own earlier heartbeats. The status
    shown (online, offline…) is computed when read, from ``state``, ``last_seen`` and
    ``interval`` (``services/dispatcher/registry.py``).
    """

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    pool: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(64))
    capabilities: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16))
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
    processed: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    items_per_second: Mapped[float] = mapped_column(Float, default=0.0)
    current_job: Mapped[str | None] = mapped_column(String(32), default=None)
    interval: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float] = mapped_column(Float)
    sent_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float, index=True)
    #: When this worker was revoked (``DELETE /api/workers/{id}``, by either id).
    revoked_at: Mapped[float | None] = mapped_column(Float, default=None)
    #: The ``WorkerToken`` this process runs under; None for an operator-run worker.
    paired_id: Mapped[str | None] = mapped_column(String(128), default=None, index=True)


class Pairing(Base):
    """A one-time pairing code shown in the app; a worker exchanges it for a token.

    Only the code's SHA-256 is stored. ``used_at`` and ``worker_id`` are set when a worker
    paired with it (once: a used code is refused).
    """

    __tablename__ = "pairings"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    pool: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float, default=now)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, default=None)
    worker_id: Mapped[str | None] = mapped_column(String(128), default=None)
    #: The user who made it (accounts, issue 12); None for rows from before accounts.
    owner_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None, index=True
    )


class WorkerToken(Base):
    """A paired worker's credentials: only the HMAC of its token is stored."""

    __tablename__ = "worker_tokens"

    worker_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    pool: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float, default=now)
    revoked_at: Mapped[float | None] = mapped_column(Float, default=None)
    #: The user who made it (accounts, issue 12); None for rows from before accounts.
    owner_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None, index=True
    )


class User(Base):
    """An account: ``libs/common/users.py`` keeps its bookkeeping, ``accounts.py`` its rules.

    ``email`` is stored normalised (lower case). ``session_epoch`` is part of every browser
    session; "log out everywhere" bumps it, so older sessions stop matching.
    """

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float, default=now)
    password_changed_at: Mapped[float] = mapped_column(Float, default=now)
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)
    disabled_at: Mapped[float | None] = mapped_column(Float, default=None)


class ApiToken(Base):
    """A user's personal API token: only its SHA-256 is stored, ``prefix`` is for display."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    last_used_at: Mapped[float | None] = mapped_column(Float, default=None)
    revoked_at: Mapped[float | None] = mapped_column(Float, default=None)


class Invite(Base):
    """A one-time invitation to make an account: only its token's SHA-256 is stored."""

    __tablename__ = "invites"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(254))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[float] = mapped_column(Float, default=now)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, default=None)
