"""Fan-in: record task outcomes idempotently and finish a job once every task is final.

A task moves out of ``queued`` at most once (a conditional UPDATE), and the job's
counters and row errors are written in that same transaction only when it did. So a
duplicate or late event changes nothing, and the caller acks after the commit.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from libs.common import csvfile, jobs, mapping, messages
from libs.common.models import (
    COMPLETED,
    FAILED,
    RUNNING,
    T_DEAD,
    T_DONE,
    T_QUEUED,
    TR_FAILED,
    TR_PENDING,
    TR_UNAVAILABLE,
    TR_VECTORIZED,
    ItemError,
    Job,
    Task,
    Track,
    now,
)
from libs.common.storage import Storage

log = logging.getLogger(__name__)


def _transition(session: Session, job_id: str, task_id: str, **values: object) -> Task | None:
    """Move a queued task to a final state; None when it was not queued (a duplicate).

    Locks the job row first, the order every writer uses (job, then its tasks), so a
    cancel or retry racing with results waits instead of deadlocking.
    """
    session.execute(select(Job.id).where(Job.id == job_id).with_for_update())
    moved = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.state == T_QUEUED)
        .values(finished_at=now(), attempts=Task.attempts + 1, **values)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.get(Task, task_id)


def record_result(session: Session, job_id: str, result: messages.TaskResult) -> bool:
    task = _transition(
        session, job_id, result.task_id, state=T_DONE, worker=result.worker,
        rows_out=result.rows_out, rows_failed=result.rows_failed,
        rows_filtered=result.rows_filtered,
    )  # fmt: skip
    if task is None:
        return False
    done = result.rows_in - result.rows_failed - result.rows_filtered
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            tasks_done=Job.tasks_done + 1,
            rows_done=Job.rows_done + done,
            rows_failed=Job.rows_failed + result.rows_failed,
            rows_filtered=Job.rows_filtered + result.rows_filtered,
        )
    )
    if result.tracks:
        _record_tracks(session, result.tracks)
    if result.errors:
        session.execute(
            insert(ItemError),
            [
                {"job_id": job_id, "task_id": task.id, "row": e.row, "column": e.column,
                 "reason": e.reason}
                for e in result.errors
            ],
        )  # fmt: skip
    return True


def _record_tracks(session: Session, outcomes: list[messages.TrackOutcome]) -> None:
    """Keep each vector, or the reason there is none (the track is then not tried again)."""
    for outcome in outcomes:
        values: dict[str, object] = {"stage": None, "updated_at": now()}
        if outcome.vector is not None:
            values.update(
                state=TR_VECTORIZED, vector=outcome.vector, vector_version=outcome.version,
                duration=outcome.duration, summary=dict(outcome.summary), error=None,
            )  # fmt: skip
            if outcome.source_url:
                values["location"] = outcome.source_url
        else:
            values.update(state=TR_UNAVAILABLE, error=outcome.error or "no audio")
        session.execute(update(Track).where(Track.id == outcome.id).values(**values))


def record_progress(session: Session, progress: messages.TrackProgress) -> None:
    """A worker's stage on a track, shown while the track is pending."""
    session.execute(
        update(Track)
        .where(Track.id == progress.track_id, Track.state == TR_PENDING)
        .values(stage=progress.stage[:16])
    )


def record_dead(session: Session, job_id: str, task_id: str, cause: str) -> bool:
    task = _transition(session, job_id, task_id, state=T_DEAD, error=cause)
    if task is None:
        return False
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(tasks_failed=Job.tasks_failed + 1, rows_failed=Job.rows_failed + task.rows)
    )
    last = task.first_row + task.rows - 1
    unit = "tracks" if task.items is not None else "rows"
    session.add(
        ItemError(
            job_id=job_id, task_id=task_id, row=task.first_row, column=None,
            reason=f"{unit} {task.first_row}-{last} were not processed: {cause}",
        )
    )  # fmt: skip
    if task.items:  # failed, not unavailable: a later job tries them again
        ids = [int(item["id"]) for item in task.items]
        session.execute(
            update(Track)
            .where(Track.id.in_(ids), Track.state == TR_PENDING)
            .values(state=TR_FAILED, stage=None, error=cause, updated_at=now())
        )
    return True


def fail_job(session: Session, job_id: str, error: str) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(("queued", RUNNING)))
        .values(state=FAILED, error=error, finished_at=now())
    )


def finish_if_complete(sessions: sessionmaker[Session], storage: Storage, job_id: str) -> bool:
    """Compose the output and complete the job once all tasks are final; True if it finished."""
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.state != RUNNING or not job.fanout_done:
            return False
        if job.tasks_done + job.tasks_failed < job.tasks_total:  # the counters say: not yet
            return False
        open_tasks = session.scalar(
            select(func.count()).where(Task.job_id == job_id, Task.state == T_QUEUED)
        )
        if open_tasks:
            return False
        seqs = session.scalars(
            select(Task.seq).where(Task.job_id == job_id).order_by(Task.seq)
        ).all()
    if job.tasks_failed:
        _finish(sessions, job_id, FAILED, error=_dead_summary(sessions, job))
        return True
    if job.kind != jobs.CSV:
        _finish(sessions, job_id, COMPLETED)
        return True
    spec = mapping.parse_spec(job.params.get("spec"))
    header = csvfile.header_line(mapping.Mapper(spec, list(job.header)).output_header)
    size = storage.compose(
        jobs.output_key(job_id), header, (jobs.part_key(job_id, s) for s in seqs)
    )
    _finish(sessions, job_id, COMPLETED, output=jobs.output_key(job_id))
    log.info(
        "job completed: %d tasks, output %d bytes", len(seqs), size,
        extra={"job_id": job_id, "action": "job_completed"},
    )  # fmt: skip
    return True


def _finish(sessions: sessionmaker[Session], job_id: str, state: str, **values: object) -> None:
    with sessions() as session, session.begin():
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == RUNNING)
            .values(state=state, finished_at=now(), **values)
        )


def _dead_summary(sessions: sessionmaker[Session], job: Job) -> str:
    with sessions() as session:
        first = session.scalar(
            select(Task.error).where(Task.job_id == job.id, Task.state == T_DEAD).order_by(Task.seq)
        )
    return (
        f"{job.tasks_failed} of {job.tasks_total} tasks were dead-lettered; first cause: {first}. "
        f"Retry them with POST /api/jobs/{job.id}/retry."
    )
