"""Track jobs' fan-out: list the tracks, skip the known ones, cut the rest into tasks.

A Last.fm job lists a user's tracks with pylast; an audio job lists the files under its
prefix. Each listed track becomes (or matches) a row of ``tracks`` by its key, so a track
already vectorized with the current feature version, or known to have no audio, is
skipped and the job says how many. The rest are cut into tasks of ``TRACKS_PER_TASK``.

Planning is one transaction: the tracks, the tasks and the job's counters commit
together, so a dispatcher that dies before it commits plans again from scratch, and one
that dies after it publishes the planned tasks (``fanout.publish_planned``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import msgspec
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from libs.common import jobs, lastfm, messages
from libs.common.audio import layout, sources
from libs.common.models import (
    JOB_FINAL,
    TR_PENDING,
    TR_UNAVAILABLE,
    TR_VECTORIZED,
    Job,
    Task,
    Track,
    now,
)
from libs.common.retry import TransientError
from libs.common.settings import Settings

log = logging.getLogger(__name__)


class PlanError(Exception):
    """The job cannot be planned, for a reason the user must see (the job fails)."""


@dataclass(frozen=True)
class Listed:
    key: str
    origin: str
    artist: str
    title: str
    location: str | None = None


def list_tracks(job: Job, settings: Settings) -> list[Listed]:
    """The job's tracks, in the source's order; PlanError or TransientError otherwise."""
    params = job.params
    if job.kind == jobs.LASTFM:
        return _lastfm(params, settings)
    try:
        files = sources.list_audio(params["prefix"], limit=int(params["limit"]))
    except FileNotFoundError:
        raise PlanError(f"there is no folder at {params['prefix']}") from None
    except OSError as exc:
        raise TransientError(f"cannot list {params['prefix']}: {exc}") from exc
    if not files:
        extensions = ", ".join(sorted(sources.AUDIO_EXTENSIONS))
        raise PlanError(f"no audio files under {params['prefix']} (looked for {extensions})")
    return [Listed(f"file:{f.url}", "file", "", f.name, f.url) for f in files]


def _lastfm(params: dict[str, object], settings: Settings) -> list[Listed]:
    if not settings.lastfm_api_key:
        raise PlanError("Last.fm is not configured on the dispatcher: LASTFM_API_KEY is not set")
    username, source = str(params["username"]), str(params["source"])
    try:
        found = lastfm.fetch_tracks(
            api_key=settings.lastfm_api_key, username=username, source=source,
            limit=int(str(params["limit"])), period=str(params.get("period") or "overall"),
            api_url=settings.lastfm_api_url,
        )  # fmt: skip
    except lastfm.LastfmError as exc:
        if exc.transient:
            raise TransientError(str(exc)) from exc
        raise PlanError(str(exc)) from None
    if not found:
        raise PlanError(f"Last.fm user {username!r} has no {source} tracks: nothing to do")
    return [Listed(t.key, "lastfm", t.artist, t.title) for t in found]


def plan(sessions: sessionmaker[Session], job_id: str, listed: list[Listed], per_task: int) -> bool:
    """Record the tracks and the tasks; False when the job was planned or ended meanwhile."""
    with sessions() as session, session.begin():
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.state in JOB_FINAL or job.params.get("planned"):
            return False
        listed = _first_of_each_key(listed)
        known = _upsert(session, listed)
        todo: list[messages.TrackRef] = []
        vectorized = unavailable = 0
        for row, item in enumerate(listed, start=1):
            track = known[item.key]
            if track.state == TR_VECTORIZED and track.vector_version == layout.FEATURE_VERSION:
                vectorized += 1
            elif track.state == TR_UNAVAILABLE:
                unavailable += 1
            else:
                ref = messages.TrackRef(
                    track.id, row, track.artist, track.title, item.location or ""
                )
                todo.append(ref)
        for seq, start in enumerate(range(0, len(todo), per_task)):
            batch = todo[start : start + per_task]
            session.add(
                Task(
                    id=messages.task_id(job_id, seq), job_id=job_id, seq=seq, start=0, end=0,
                    first_row=batch[0].row, rows=len(batch),
                    items=[msgspec.structs.asdict(ref) for ref in batch],
                )
            )  # fmt: skip
            job.tasks_total += 1
            job.rows_total += len(batch)
        job.params = {
            **job.params, "planned": True, "listed": len(listed),
            "skipped": vectorized + unavailable, "skipped_vectorized": vectorized,
            "skipped_unavailable": unavailable,
        }  # fmt: skip
    log.info(
        "planned %d tracks in %d tasks; skipped %d vectorized and %d unavailable",
        len(todo), -(-len(todo) // per_task), vectorized, unavailable,
        extra={"job_id": job_id, "action": "plan"},
    )  # fmt: skip
    return True


def _first_of_each_key(listed: list[Listed]) -> list[Listed]:
    seen: set[str] = set()
    unique = []
    for item in listed:
        if item.key not in seen:
            seen.add(item.key)
            unique.append(item)
    return unique


def _upsert(session: Session, listed: list[Listed]) -> dict[str, Track]:
    """Insert the tracks not yet known (racing jobs insert each key once); return all."""
    rows: list[dict[str, object]] = [
        {"key": i.key, "origin": i.origin, "artist": i.artist, "title": i.title,
         "location": i.location, "state": TR_PENDING, "summary": {}, "created_at": now(),
         "updated_at": now()}
        for i in listed
    ]  # fmt: skip
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for start in range(0, len(rows), 500):
        statement = insert(Track).values(rows[start : start + 500])
        session.execute(statement.on_conflict_do_nothing(index_elements=["key"]))
    keys = [i.key for i in listed]
    found: dict[str, Track] = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        found.update((t.key, t) for t in session.scalars(select(Track).where(Track.key.in_(chunk))))
    return found
