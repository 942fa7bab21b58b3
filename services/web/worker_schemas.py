"""HTTP schemas of the worker registry: a worker as people see it, and a page of them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from libs.common.models import Worker


class WorkerView(msgspec.Struct):
    id: str
    name: str
    pool: str
    status: str  # online, stopping, offline or stopped (computed when read)
    last_seen: str
    seconds_since_seen: float
    started_at: str
    host: str
    pid: int
    version: str
    capabilities: dict[str, Any]
    current_job: str | None
    in_flight: int
    processed: int
    failed: int
    items_per_second: float
    heartbeat_seconds: float
    #: The pairing it runs under (``DELETE /api/workers/{paired_id}`` revokes all its
    #: processes); None for an operator-run worker.
    paired_id: str | None = None
    revoked_at: str | None = None


class WorkerPage(msgspec.Struct):
    items: list[WorkerView]
    total: int
    limit: int
    offset: int
    #: Every worker known, by status (not only this page's).
    counts: dict[str, int]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def worker_view(worker: Worker, status: str, at: float) -> WorkerView:
    return WorkerView(
        id=worker.id, name=worker.name, pool=worker.pool, status=status,
        last_seen=_iso(worker.last_seen),
        seconds_since_seen=round(max(0.0, at - worker.last_seen), 1),
        started_at=_iso(worker.started_at), host=worker.host, pid=worker.pid,
        version=worker.version, capabilities=dict(worker.capabilities or {}),
        current_job=worker.current_job, in_flight=worker.in_flight,
        processed=worker.processed, failed=worker.failed,
        items_per_second=worker.items_per_second, heartbeat_seconds=worker.interval,
        paired_id=worker.paired_id,
        revoked_at=None if worker.revoked_at is None else _iso(worker.revoked_at),
    )  # fmt: skip
