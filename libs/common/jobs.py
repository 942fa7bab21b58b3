"""The job lifecycle shared by the web service and the dispatcher.

Every function here changes state and writes the messages that follow from it to the
outbox in the same transaction; the caller commits. Counters move only on task state
transitions, so a duplicate message never counts twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from libs.common import messages, outbox, topology
from libs.common.models import (
    CANCELLED,
    FAILED,
    JOB_FINAL,
    QUEUED,
    RUNNING,
    T_CANCELLED,
    T_DEAD,
    T_QUEUED,
    ItemError,
    Job,
    Task,
    now,
)

CSV = "csv"
CANARY = "canary"
LASTFM = "lastfm"  # a Last.fm user's tracks, found by search and downloaded
AUDIO = "audio"  # audio files under a storage URL prefix
TRACK_KINDS = frozenset({LASTFM, AUDIO})


class JobStateError(Exception):
    """The job is not in a state that allows this (HTTP 409)."""


def new_job_id() -> str:
    return uuid.uuid4().hex


def upload_key(job_id: str) -> str:
    return f"uploads/{job_id}.csv"


def part_key(job_id: str, seq: int) -> str:
    return f"jobs/{job_id}/parts/{seq:08d}.csv"


def output_key(job_id: str) -> str:
    return f"jobs/{job_id}/output.csv"


def create_csv_job(
    session: Session,
    *,
    job_id: str,
    source_bytes: int,
    header: list[str],
    spec_json: str,
    filename: str,
    pool: str = "shared",
    owner_id: str | None = None,
) -> Job:
    job = Job(
        id=job_id,
        kind=CSV,
        state=QUEUED,
        pool=pool,
        params={"spec": spec_json, "filename": filename},
        source=upload_key(job_id),
        source_bytes=source_bytes,
        header=header,
        created_at=now(),
        owner_id=owner_id,
    )
    session.add(job)
    outbox.add(session, topology.JOB_KEY, messages.envelope(job_id, messages.JobRequested(CSV)))
    return job


def create_canary_job(
    session: Session, *, job_id: str, tasks: int, seconds: float, pool: str = "shared",
    owner_id: str | None = None,
) -> Job:  # fmt: skip
    job = Job(
        id=job_id, kind=CANARY, state=QUEUED, params={"tasks": tasks, "seconds": seconds},
        created_at=now(), pool=pool, owner_id=owner_id,
    )  # fmt: skip
    session.add(job)
    outbox.add(session, topology.JOB_KEY, messages.envelope(job_id, messages.JobRequested(CANARY)))
    return job


def create_track_job(
    session: Session, *, job_id: str, kind: str, params: dict[str, Any], pool: str = "shared",
    owner_id: str | None = None,
) -> Job:  # fmt: skip
    """A Last.fm or audio-folder job; the dispatcher lists its tracks when it fans it out."""
    if kind not in TRACK_KINDS:
        raise ValueError(f"not a track job kind: {kind!r}")
    job = Job(
        id=job_id, kind=kind, state=QUEUED, params=params, created_at=now(), pool=pool,
        owner_id=owner_id,
    )  # fmt: skip
    session.add(job)
    outbox.add(session, topology.JOB_KEY, messages.envelope(job_id, messages.JobRequested(kind)))
    return job


def task_envelope(job: Job, task: Task) -> messages.Envelope:
    """The task message for ``task``: rebuilt from the database whenever it is needed."""
    if job.kind == CANARY:
        canary = messages.CanaryTask(task.id, task.seq, float(job.params["seconds"]))
        return messages.envelope(job.id, canary, message_id=task.id)
    if job.kind in TRACK_KINDS:
        refs = [msgspec.convert(item, messages.TrackRef) for item in task.items or ()]
        return messages.envelope(
            job.id, messages.TrackTask(task.id, task.seq, refs), message_id=task.id
        )
    body = messages.CsvTask(
        task_id=task.id,
        seq=task.seq,
        source=job.source or "",
        start=task.start,
        end=task.end,
        first_row=task.first_row,
        rows=task.rows,
        header=list(job.header),
        spec=job.params.get("spec", ""),
        output=part_key(job.id, task.seq),
    )
    return messages.envelope(job.id, body, message_id=task.id)


def cancel(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise LookupError(job_id)
    if job.state in JOB_FINAL:
        raise JobStateError(f"job is already {job.state}")
    job.state, job.finished_at = CANCELLED, now()
    session.execute(
        update(Task)
        .where(Task.job_id == job_id, Task.state == T_QUEUED)
        .values(state=T_CANCELLED, finished_at=now())
    )
    outbox.add(session, outbox.CONTROL, messages.envelope(job_id, messages.JobCancelled()))
    return job


def retry_dead(session: Session, job_id: str) -> int:
    """Queue a job's dead-lettered tasks again; return how many."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise LookupError(job_id)
    if job.state not in (FAILED, RUNNING):
        raise JobStateError(f"only a failed or running job can be retried (it is {job.state})")
    dead = session.scalars(select(Task).where(Task.job_id == job_id, Task.state == T_DEAD)).all()
    if not dead:
        raise JobStateError("the job has no dead-lettered tasks to retry")
    session.execute(delete(ItemError).where(ItemError.task_id.in_([t.id for t in dead])))
    for task in dead:
        task.state, task.error, task.finished_at = T_QUEUED, None, None
        job.tasks_failed -= 1
        job.rows_failed -= task.rows
        outbox.add(session, topology.task_key(job.pool), task_envelope(job, task))
    job.state, job.error, job.finished_at = RUNNING, None, None
    return len(dead)


@dataclass(frozen=True)
class Progress:
    rows_processed: int
    rows_per_second: float | None
    eta_seconds: float | None
    percent: float


def progress(job: Job, at: float | None = None) -> Progress:
    processed = job.rows_done + job.rows_failed + job.rows_filtered
    elapsed = ((job.finished_at or at or now()) - job.started_at) if job.started_at else 0.0
    rate = processed / elapsed if elapsed > 0 and processed else None
    eta = None
    if job.state == RUNNING and job.fanout_done and rate:
        eta = max(0.0, (job.rows_total - processed) / rate)
    if job.state == QUEUED or job.rows_total == 0:
        percent = 100.0 if job.state in JOB_FINAL and job.fanout_done else 0.0
    else:
        percent = min(100.0, 100.0 * processed / job.rows_total)
    if not job.fanout_done and job.state == RUNNING:
        percent = min(percent, 99.0)
    return Progress(processed, rate, eta, round(percent, 2))
