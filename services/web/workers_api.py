"""The workers API: the registry the dispatcher keeps from heartbeats, with live status.

Status is computed at request time from each worker's last heartbeat and its interval, so
a worker that died (or a dispatcher that stopped recording) shows as offline. A member
sees and revokes the workers paired with their own codes; an admin sees every worker
and alone revokes an operator-run one (``ownership``).
"""

from __future__ import annotations

import logging
from typing import Annotated

from litestar import Controller, Request, delete, get
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import FromPath, Parameter
from sqlalchemy import or_, select

from libs.common import messages, outbox
from libs.common.models import Worker, WorkerToken, now
from libs.common.runtime import Components
from services.dispatcher import registry
from services.web import ownership
from services.web.auth import Identity, require_user
from services.web.pairing_schemas import PairedWorkerView, iso
from services.web.worker_schemas import WorkerPage, WorkerView, worker_view

log = logging.getLogger(__name__)
Limit = Annotated[int, Parameter(ge=1, le=1000)]
Offset = Annotated[int, Parameter(ge=0)]
StatusFilter = Annotated[str | None, Parameter(description="online, stopping, offline or stopped")]


class WorkersController(Controller):
    path = "/api/workers"
    guards = [require_user]

    @get("/", sync_to_thread=True)
    def list_workers(
        self, state: State, request: Request, limit: Limit = 50, offset: Offset = 0,
        status: StatusFilter = None,
    ) -> WorkerPage:  # fmt: skip
        """Workers, online first, then the most recently seen; `status` filters. A member
        sees the workers paired with their codes; an admin every worker."""
        if status is not None and status not in registry.STATUSES:
            raise HTTPException(
                status_code=400,
                detail=f"unknown status {status!r}: use one of {', '.join(registry.STATUSES)}",
            )
        c: Components = state.components
        missed = c.settings.offline_after_missed
        at, where = now(), ownership.workers_of(ownership.caller(request))
        with c.sessions() as session:
            rows, total = registry.page(session, at, missed, status, limit, offset, where)
            counts = registry.counts(session, at, missed, where)
        items = [worker_view(w, s, at) for w, s in rows]
        return WorkerPage(items, total, limit, offset, counts)

    @get("/{worker_id:str}", sync_to_thread=True)
    def get_worker(self, state: State, request: Request, worker_id: FromPath[str]) -> WorkerView:
        c: Components = state.components
        missing = f"no worker with id {worker_id!r} has sent a heartbeat"
        with c.sessions() as session:
            ownership.check_worker(session, ownership.caller(request), worker_id, missing)
            worker = session.get(Worker, worker_id)
        if worker is None:  # a paired token whose worker never sent a heartbeat
            raise NotFoundException(detail=missing)
        at = now()
        status = registry.status(
            worker.state, worker.last_seen, worker.interval, at, c.settings.offline_after_missed
        )
        return worker_view(worker, status, at)

    @delete("/{worker_id:str}", status_code=200, sync_to_thread=True)
    def revoke(self, state: State, request: Request, worker_id: FromPath[str]) -> PairedWorkerView:
        """Revoke a worker (by its pairing's id or a registry id): its token no longer
        pairs or refreshes, and its running processes stop taking work at once."""
        view = revoke_worker(state.components, ownership.caller(request), worker_id)
        state.relay.wake()
        state.gateway.revoked(worker_id, view.id)  # this instance's sockets: at once
        return view


def revoke_worker(c: Components, who: Identity, worker_id: str) -> PairedWorkerView:
    """Revoke a worker, by its pairing's id or a registry id: its token stops working, and
    a broadcast tells the running processes to stop taking work (the dispatcher repeats it
    at their next heartbeat, for one that was disconnected)."""
    at = now()
    with c.sessions() as session, session.begin():
        ownership.check_worker(session, who, worker_id, f"no worker with id {worker_id!r}")
        token = session.get(WorkerToken, worker_id)
        worker = session.get(Worker, worker_id)
        paired_id = token.worker_id if token is not None else (worker and worker.paired_id) or ""
        processes = session.scalars(
            select(Worker).where(
                or_(Worker.id == worker_id, Worker.paired_id == (paired_id or worker_id))
            )
        ).all()
        for row in (token, *processes):
            if row is not None and row.revoked_at is None:
                row.revoked_at = at
        if token is not None:
            view = PairedWorkerView(
                token.worker_id, token.name, token.pool, iso(token.created_at),
                iso(token.revoked_at),
            )  # fmt: skip
        else:
            assert worker is not None
            view = PairedWorkerView(
                worker.id, worker.name, worker.pool, None, iso(worker.revoked_at)
            )
        stop = messages.WorkerRevoked(worker_id=worker_id, paired_id=paired_id)
        outbox.add(session, outbox.CONTROL, messages.envelope("", stop))
    log.info("worker %s revoked", worker_id, extra={"action": "worker_revoked"})
    return view
