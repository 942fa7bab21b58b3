"""Who owns what: the rules the jobs, pairings and workers routes apply to their rows.

- A job, a pairing and a worker token belong to the user who made them (a worker token
  to its pairing's owner): ``owner_id``. Rows made with ACCOUNTS=off have no owner and
  count as the admins'.
- An admin sees and acts on everything. A member sees and acts on their own rows only;
  another user's answers **404**, as a row that does not exist would, so its existence
  is not revealed.
- Pools: ``shared`` is open to every user. A pairing's pool (``remote-…``) is its owner's
  (or an admin's): for anyone else it answers as an unknown pool (422, the same reason).
  Any other pool is an operator's (``--pool``): naming it is for admins (403).
- A worker process belongs to the owner of the worker token it runs under
  (``paired_id``); an operator-run worker (no token) is the admins'.

With ACCOUNTS=off every caller is ``LOCAL_ADMIN``, so nothing here changes what they see.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import HTTPException, NotFoundException
from sqlalchemy import ColumnElement, exists, select, true
from sqlalchemy.orm import QueryableAttribute, Session

from libs.common import pools
from libs.common.models import Job, Pairing, Worker, WorkerToken
from services.web.auth import Identity

#: A pairing's pool: ``pairing.new_pool`` names them so.
REMOTE_PREFIX = "remote-"
OPERATOR_POOL = "only an admin may send jobs to an operator's pool (one without a pairing)"


def caller(request: Request[Any, Any, Any]) -> Identity:
    """The caller of a route guarded by ``require_user`` (never None there)."""
    user = request.user
    assert isinstance(user, Identity), "the route needs the require_user guard"
    return user


def owns(who: Identity, owner_id: str | None) -> bool:
    """May ``who`` see and act on a row of ``owner_id``? (None: an admin's row.)"""
    return who.admin or (owner_id is not None and owner_id == who.id)


def mine(who: Identity, column: QueryableAttribute[str | None]) -> ColumnElement[bool]:
    """The rows of ``column`` (an ``owner_id``) ``who`` may see, for a list's WHERE."""
    return true() if who.admin else column == who.id


def not_found(what: str, key: str) -> NotFoundException:
    return NotFoundException(detail=f"no {what} with id {key!r}")


def job(session: Session, who: Identity, job_id: str) -> Job:
    """The job, if ``who`` may see it; 404 otherwise."""
    row = session.get(Job, job_id)
    if row is None or not owns(who, row.owner_id):
        raise not_found("job", job_id)
    return row


def pairing(session: Session, who: Identity, pairing_id: str) -> Pairing:
    row = session.get(Pairing, pairing_id)
    if row is None or not owns(who, row.owner_id):
        raise not_found("pairing", pairing_id)
    return row


def worker_owner(session: Session, worker_id: str) -> tuple[bool, str | None]:
    """(whether a worker token or registry row has this id, the owner of its token)."""
    token = session.get(WorkerToken, worker_id)
    if token is None:
        worker = session.get(Worker, worker_id)
        if worker is None:
            return False, None
        token = session.get(WorkerToken, worker.paired_id) if worker.paired_id else None
    return True, token.owner_id if token is not None else None


def check_worker(session: Session, who: Identity, worker_id: str, what: str) -> None:
    """404 (``what`` names it) unless the worker exists and ``who`` may see it."""
    found, owner_id = worker_owner(session, worker_id)
    if not found or not owns(who, owner_id):
        raise NotFoundException(detail=what)


def workers_of(who: Identity) -> ColumnElement[bool]:
    """The registry rows ``who`` may list: a member's are their tokens' processes."""
    if who.admin:
        return true()
    tokens = select(WorkerToken.worker_id).where(WorkerToken.owner_id == who.id)
    return Worker.paired_id.in_(tokens)


def remote(pool: str) -> bool:
    return pool.startswith(REMOTE_PREFIX)


def owns_pool(session: Session, who: Identity, pool: str) -> bool:
    """Is ``pool`` a pairing's pool of ``who``'s (of anyone's, for an admin)?"""
    owned = Pairing.pool == pool
    if not who.admin:
        owned = owned & (Pairing.owner_id == who.id)
    return bool(session.scalar(select(exists().where(owned))))


def job_pool(session: Session, who: Identity, pool: str | None) -> str:
    """The pool a job of ``who`` goes to (``shared`` unless named); 403/409/422 if not."""
    if not who.admin and pool not in (None, pools.SHARED):
        assert pool is not None
        if not remote(pool):
            raise HTTPException(status_code=403, detail=OPERATOR_POOL)
        if not owns_pool(session, who, pool):
            raise HTTPException(status_code=422, detail=pools.unserved(pool))
    try:
        return pools.check(session, pool)
    except pools.PoolError as exc:
        raise HTTPException(status_code=exc.status, detail=str(exc)) from None
