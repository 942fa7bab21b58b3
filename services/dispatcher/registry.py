"""The worker registry: each worker's latest heartbeat, and the status people are shown.

``record`` is one upsert per heartbeat (``INSERT … ON CONFLICT DO UPDATE … WHERE``): a
heartbeat sent before the stored one (by the worker's own clock, ``sent_at``) changes
nothing, so late or duplicate deliveries never overwrite a newer state. ``last_seen`` is
the server's clock when it was recorded, so a worker's clock does not matter.

The status is computed when read, never stored, so it is right even while the dispatcher
is down: ``stopped`` after a clean shutdown; ``offline`` once ``OFFLINE_AFTER_MISSED``
heartbeats are overdue; ``stopping`` while it drains; else ``online``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from libs.common import messages
from libs.common.models import Worker, WorkerToken, now

ONLINE, STOPPING, OFFLINE, STOPPED = "online", "stopping", "offline", "stopped"
STATUSES = (ONLINE, STOPPING, OFFLINE, STOPPED)


def record(session: Session, beat: messages.Heartbeat, sent_at: float) -> bool:
    """Keep ``beat`` unless a heartbeat sent after it is already stored. True when the
    worker has been revoked (by its registry id or its pairing) and is still running: the
    caller tells it again to stop, in case it missed the broadcast sent at revocation."""
    values: dict[str, Any] = {
        "name": beat.name[:128], "pool": beat.pool[:64], "host": beat.host[:255],
        "pid": beat.pid, "version": beat.version[:64],
        "capabilities": _capabilities(beat.capabilities), "state": beat.state[:16],
        "in_flight": beat.in_flight, "processed": beat.processed, "failed": beat.failed,
        "items_per_second": beat.items_per_second, "current_job": beat.current_job,
        "interval": beat.interval, "started_at": beat.started_at, "sent_at": sent_at,
        "last_seen": now(), "paired_id": beat.paired_id[:128] or None,
    }  # fmt: skip
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(Worker).values(id=beat.worker_id[:128], **values)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["id"],
            set_={k: statement.excluded[k] for k in values},
            where=Worker.sent_at < statement.excluded.sent_at,
        )
    )
    return beat.state != messages.W_STOPPED and _revoked(session, beat)


def _revoked(session: Session, beat: messages.Heartbeat) -> bool:
    worker = session.get(Worker, beat.worker_id[:128])
    if worker is None:
        return False
    if worker.revoked_at is None and beat.paired_id:
        token = session.get(WorkerToken, beat.paired_id[:128])
        if token is not None and token.revoked_at is not None:
            worker.revoked_at = token.revoked_at  # a process started after the revocation
    return worker.revoked_at is not None


def _capabilities(caps: messages.Capabilities) -> dict[str, Any]:
    return {"handlers": list(caps.handlers), "ffmpeg": caps.ffmpeg, "cores": caps.cores,
            "concurrency": caps.concurrency}  # fmt: skip


def status(state: str, last_seen: float, interval: float, at: float, missed: int) -> str:
    """The status at time ``at`` (the same rule as ``status_column``, in SQL)."""
    if state == messages.W_STOPPED:
        return STOPPED
    if at - last_seen > interval * missed:
        return OFFLINE
    return STOPPING if state == messages.W_STOPPING else ONLINE


def status_column(at: float, missed: int) -> ColumnElement[str]:
    return case(
        (Worker.state == messages.W_STOPPED, STOPPED),
        (Worker.last_seen < at - Worker.interval * missed, OFFLINE),
        (Worker.state == messages.W_STOPPING, STOPPING),
        else_=ONLINE,
    )


def page(
    session: Session, at: float, missed: int, wanted: str | None, limit: int, offset: int,
    where: ColumnElement[bool] | None = None,
) -> tuple[list[tuple[Worker, str]], int]:  # fmt: skip
    """(workers with their status, online first then most recently seen; how many match).
    ``where`` limits the workers (a member's own)."""
    column = status_column(at, missed)
    rows = select(Worker, column.label("status"))
    total = select(func.count()).select_from(Worker)
    if where is not None:
        rows, total = rows.where(where), total.where(where)
    if wanted is not None:
        rows, total = rows.where(column == wanted), total.where(column == wanted)
    rows = rows.order_by(case((column == ONLINE, 0), else_=1), Worker.last_seen.desc(), Worker.id)
    found = session.execute(rows.limit(limit).offset(offset)).all()
    return [(w, s) for w, s in found], session.scalar(total) or 0


def counts(
    session: Session, at: float, missed: int, where: ColumnElement[bool] | None = None
) -> dict[str, int]:
    """How many workers have each status (every status present, zeros included)."""
    column = status_column(at, missed)
    query = select(column, func.count()).select_from(Worker).group_by(column)
    if where is not None:
        query = query.where(where)
    found = {s: n for s, n in session.execute(query)}
    return {s: int(found.get(s, 0)) for s in STATUSES}
