"""Pools: which workers a job's tasks go to.

Every job names one pool, and its tasks go to that pool's queue (``topology.task_queue``).
``shared`` is served by the hosted (or operator-run) workers. Each pairing code gets a
pool of its own (``remote-…``), so jobs submitted in the app's remote worker mode run
only on the machines paired with that code. An operator-run worker serves any pool it
is started with (``--pool``).

``check`` is what the API asks before it accepts a job for a pool: a pool nobody serves
would hold the job's tasks forever, so it answers 422 for an unknown pool and 409 for
one whose only workers were revoked.
"""

from __future__ import annotations

import re

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from libs.common.models import Pairing, Worker, WorkerToken, now

SHARED = "shared"
#: Pool names: lower-case letters, digits, ``-`` and ``_`` (they become queue names).
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class PoolError(ValueError):
    """A job cannot go to this pool: ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def check(session: Session, pool: str | None) -> str:
    """The pool a job goes to (``shared`` when none is named); PoolError if no worker
    serves it or could: a pairing that is waiting or has a live token, or a worker that
    has sent heartbeats from that pool and was not revoked."""
    if pool is None or pool == SHARED:
        return SHARED
    if not NAME.match(pool):
        raise PoolError(422, f"invalid pool {pool!r}: use lower-case letters, digits, '-' and '_'")
    at = now()
    waiting = exists().where(
        Pairing.pool == pool, Pairing.used_at.is_(None), Pairing.expires_at > at
    )
    paired = exists().where(WorkerToken.pool == pool, WorkerToken.revoked_at.is_(None))
    running = exists().where(
        Worker.pool == pool, Worker.revoked_at.is_(None), Worker.paired_id.is_(None)
    )
    if session.scalar(select(waiting | paired | running)):
        return pool
    revoked = exists().where(WorkerToken.pool == pool)
    if session.scalar(select(revoked)):
        raise PoolError(
            409,
            f"every worker paired into pool {pool!r} was revoked: pair a machine with a new "
            "code, or submit to the shared pool",
        )
    raise PoolError(422, unserved(pool))


def unserved(pool: str) -> str:
    """Why a job cannot go to a pool nobody serves (or, to a member, someone else's)."""
    return (
        f"no worker serves pool {pool!r}: pair a machine with a code from the app, or start "
        f"a worker with --pool {pool}"
    )
