"""HTTP schemas: msgspec structs, apart from the wire messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from libs.common import jobs
from libs.common.models import Job, Track


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
    unit: str  # what the progress counts: "rows" or "tracks"
    description: str
    skipped: int | None  # track jobs: tracks already vectorized or known to have no audio
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


#: Which workers run the job: "shared" (the default) or a pairing's pool (remote worker mode).
Pool = Annotated[str, msgspec.Meta(max_length=64)] | None


class CanaryRequest(msgspec.Struct, forbid_unknown_fields=True):
    """N tasks that each hold a worker for ``seconds``: a deployment smoke test."""

    tasks: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1
    seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 1.0
    pool: Pool = None


Username = Annotated[str, msgspec.Meta(min_length=2, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class LastfmRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Vectorize a Last.fm user's top, loved or recent tracks."""

    username: Username
    source: Literal["top", "loved", "recent"] = "top"
    period: Literal["overall", "7day", "1month", "3month", "6month", "12month"] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50
    pool: Pool = None


class AudioRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Vectorize every audio file under a storage URL prefix (file:// or s3://)."""

    prefix: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    limit: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 10_000
    pool: Pool = None


class TrackView(msgspec.Struct):
    id: int
    artist: str
    title: str
    origin: str
    state: str
    stage: str | None
    error: str | None
    location: str | None
    duration_seconds: float | None
    vector_version: int | None
    summary: dict[str, Any]
    similar: str


class TrackPage(msgspec.Struct):
    items: list[TrackView]
    total: int
    limit: int
    offset: int


class SimilarTrack(msgspec.Struct):
    id: int
    title: str
    artist: str
    score: float
    origin: str
    duration_seconds: float | None


class SimilarPage(msgspec.Struct):
    track: TrackView
    k: int
    items: list[SimilarTrack]


def track_view(track: Track) -> TrackView:
    return TrackView(
        id=track.id, artist=track.artist, title=track.title, origin=track.origin,
        state=track.state, stage=track.stage, error=track.error, location=track.location,
        duration_seconds=track.duration, vector_version=track.vector_version,
        summary=dict(track.summary or {}), similar=f"/api/tracks/{track.id}/similar",
    )  # fmt: skip


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
        unit="tracks" if job.kind in jobs.TRACK_KINDS else "rows",
        description=describe(job),
        skipped=job.params.get("skipped") if job.kind in jobs.TRACK_KINDS else None,
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


def describe(job: Job) -> str:
    """One line a person reads in a job list."""
    p = job.params
    if job.kind == jobs.LASTFM:
        period = f", {p.get('period') or 'overall'}" if p.get("source") == "top" else ""
        return f"Last.fm {p.get('source')} tracks of {p.get('username')} ({p.get('limit')}{period})"
    if job.kind == jobs.AUDIO:
        return f"audio files under {p.get('prefix')}"
    if job.kind == jobs.CANARY:
        return f"canary: {p.get('tasks')} tasks of {p.get('seconds')} s"
    return f"CSV {p.get('filename') or ''}".strip()
