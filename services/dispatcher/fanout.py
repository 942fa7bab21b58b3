"""Fan-out: cut a stored CSV at record boundaries into task messages, resumably.

Per batch of chunks: (1) insert the batch's task rows, counting only rows not already
there; (2) publish their messages with confirms; (3) advance the job's cursor. A
dispatcher that dies anywhere in between resumes from the cursor, re-cuts the same chunks
(chunking is deterministic) and re-publishes at worst one batch, whose task ids are the
same, so its effects are not doubled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import islice

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from libs.common import csvfile, jobs, messages
from libs.common.broker import Publisher
from libs.common.models import JOB_FINAL, QUEUED, RUNNING, T_QUEUED, Job, Task, now
from libs.common.settings import Settings
from libs.common.storage import Storage
from services.dispatcher import tracklist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FanoutConfig:
    rows_per_chunk: int
    max_chunk_bytes: int
    batch: int = 200


def start(sessions: sessionmaker[Session], job_id: str) -> Job | None:
    """Mark the job running; None when there is nothing (more) to fan out."""
    with sessions() as session, session.begin():
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            log.error("job %s not found", job_id, extra={"job_id": job_id, "action": "fanout"})
            return None
        if job.state in JOB_FINAL or job.fanout_done:
            return None
        if job.state == QUEUED:
            job.state, job.started_at = RUNNING, now()
        return job


def fan_out(
    sessions: sessionmaker[Session],
    storage: Storage,
    publisher: Publisher,
    config: FanoutConfig,
    job_id: str,
) -> bool:
    """Publish every remaining task of the job; True when the fan-out is complete."""
    job = start(sessions, job_id)
    if job is None:
        return False
    with ExitStack() as stack:
        chunks = _chunks(job, storage, config, stack)
        while batch := list(islice(chunks, config.batch)):
            tasks = _insert_tasks(sessions, job_id, batch)
            if tasks is None:  # cancelled meanwhile
                return False
            for task in (t for t in tasks if t.state == T_QUEUED):
                publisher.task(jobs.task_envelope(job, task), job.pool)
            _advance_cursor(sessions, job_id, batch[-1])
            log.info(
                "published tasks %d..%d", batch[0].seq, batch[-1].seq,
                extra={"job_id": job_id, "action": "fanout_batch"},
            )  # fmt: skip
    return _complete(sessions, job_id)


def fan_out_tracks(
    sessions: sessionmaker[Session], publisher: Publisher, settings: Settings, job_id: str
) -> bool:
    """List and plan a track job (once), then publish its planned tasks from the cursor."""
    job = start(sessions, job_id)
    if job is None:
        return False
    if not job.params.get("planned"):
        listed = tracklist.list_tracks(job, settings)
        tracklist.plan(sessions, job_id, listed, settings.tracks_per_task)
    while True:
        with sessions() as session:
            job = session.get(Job, job_id)
            if job is None or job.state in JOB_FINAL:
                return False
            batch = session.scalars(
                select(Task)
                .where(Task.job_id == job_id, Task.seq >= job.cursor_seq)
                .order_by(Task.seq)
                .limit(200)
            ).all()
        if not batch:
            break
        for task in (t for t in batch if t.state == T_QUEUED):
            publisher.task(jobs.task_envelope(job, task), job.pool)
        with sessions() as session, session.begin():
            locked = session.get(Job, job_id, with_for_update=True)
            if locked is not None:
                locked.cursor_seq = batch[-1].seq + 1
    return _complete(sessions, job_id)


def _complete(sessions: sessionmaker[Session], job_id: str) -> bool:
    with sessions() as session, session.begin():
        done = session.get(Job, job_id, with_for_update=True)
        if done is None or done.state in JOB_FINAL:
            return False
        done.fanout_done = True
    return True


def _chunks(
    job: Job, storage: Storage, config: FanoutConfig, stack: ExitStack
) -> Iterator[csvfile.Chunk]:
    """The job's remaining chunks from its cursor: cut from its CSV, or one per canary task."""
    if job.kind == jobs.CANARY:
        total = int(job.params["tasks"])
        return (csvfile.Chunk(seq, 0, 0, seq + 1, 1) for seq in range(job.cursor_seq, total))
    stream = stack.enter_context(storage.open_read(job.source or ""))
    return csvfile.iter_chunks(
        stream,
        start=job.cursor_offset or csvfile.read_header(stream)[1],
        first_row=job.cursor_row,
        first_seq=job.cursor_seq,
        rows_per_chunk=config.rows_per_chunk,
        max_chunk_bytes=config.max_chunk_bytes,
    )


def _insert_tasks(
    sessions: sessionmaker[Session], job_id: str, batch: list[csvfile.Chunk]
) -> list[Task] | None:
    with sessions() as session, session.begin():
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.state in JOB_FINAL:
            return None
        ids = [messages.task_id(job_id, chunk.seq) for chunk in batch]
        existing = {t.id: t for t in session.scalars(select(Task).where(Task.id.in_(ids)))}
        tasks = []
        for task_id, chunk in zip(ids, batch, strict=True):
            task = existing.get(task_id)
            if task is None:
                task = Task(
                    id=task_id, job_id=job_id, seq=chunk.seq, start=chunk.start,
                    end=chunk.end, first_row=chunk.first_row, rows=chunk.rows,
                )  # fmt: skip
                session.add(task)
                job.tasks_total += 1
                job.rows_total += chunk.rows
            tasks.append(task)
        return tasks


def _advance_cursor(sessions: sessionmaker[Session], job_id: str, last: csvfile.Chunk) -> None:
    with sessions() as session, session.begin():
        job = session.get(Job, job_id, with_for_update=True)
        if job is not None:
            job.cursor_offset = last.end
            job.cursor_seq = last.seq + 1
            job.cursor_row = last.first_row + last.rows
