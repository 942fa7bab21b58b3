"""HTTP schemas: msgspec structs, apart from the wire messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec

from libs.common import jobs
from libs.common.models import Job


class RowCounts(msgspec.Struct):
    total: int
    done: int
    failed: int
    filtered: int


class TaskCounts(msgspec.Struct):
    total: int
    done: int
    failed: int


class ProgressView(msgspec.Struct):
    rows: RowCounts
    tasks: TaskCounts
    percent: float
    rows_per_second: float | None
    eta_seconds: float | None
    fanout_complete: bool


class Links(msgspec.Struct):
    self: str
    output: str
    errors: str


class JobView(msgspec.Struct):
    id: str
    kind: str
    state: str
    filename: str | None
    pool: str
    progress: ProgressView
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    links: Links


class JobPage(msgspec.Struct):
    items: list[JobView]
    total: int
    limit: int
    offset: int


class RowErrorView(msgspec.Struct):
    row: int
    column: str | None
    reason: str


class ErrorPage(msgspec.Struct):
    items: list[RowErrorView]
    total: int
    limit: int
    offset: int


class CanaryRequest(msgspec.Struct, forbid_unknown_fields=True):
    """N tasks that each hold a worker for ``seconds``: a deployment smoke test."""

    tasks: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1
    seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 1.0


class RetryView(msgspec.Struct):
    id: str
    requeued_tasks: int


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def job_view(job: Job) -> JobView:
    p = jobs.progress(job)
    base = f"/api/jobs/{job.id}"
    return JobView(
        id=job.id,
        kind=job.kind,
        state=job.state,
        filename=job.params.get("filename"),
        pool=job.pool,
        progress=ProgressView(
            rows=RowCounts(job.rows_total, job.rows_done, job.rows_failed, job.rows_filtered),
            tasks=TaskCounts(job.tasks_total, job.tasks_done, job.tasks_failed),
            percent=p.percent,
            rows_per_second=None if p.rows_per_second is None else round(p.rows_per_second, 1),
            eta_seconds=None if p.eta_seconds is None else round(p.eta_seconds, 1),
            fanout_complete=job.fanout_done,
        ),
        created_at=_iso(job.created_at) or "",
        started_at=_iso(job.started_at),
        finished_at=_iso(job.finished_at),
        error=job.error,
        links=Links(self=base, output=f"{base}/output", errors=f"{base}/errors"),
    )
