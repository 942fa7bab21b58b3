"""The workers API: the registry the dispatcher keeps from heartbeats, with live status.

Status is computed at request time from each worker's last heartbeat and its interval, so
a worker that died (or a dispatcher that stopped recording) shows as offline.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import FromPath, Parameter

from libs.common.models import Worker, now
from libs.common.runtime import Components
from services.dispatcher import registry
from services.web.pairing_api import PairedWorkerView, revoke_worker
from services.web.worker_schemas import WorkerPage, WorkerView, worker_view

Limit = Annotated[int, Parameter(ge=1, le=1000)]
Offset = Annotated[int, Parameter(ge=0)]
StatusFilter = Annotated[str | None, Parameter(description="online, stopping, offline or stopped")]


class WorkersController(Controller):
    path = "/api/workers"

    @get("/", sync_to_thread=True)
    def list_workers(
        self, state: State, limit: Limit = 50, offset: Offset = 0, status: StatusFilter = None
    ) -> WorkerPage:
        """Workers, online first, then the most recently seen; `status` filters."""
        if status is not None and status not in registry.STATUSES:
            raise HTTPException(
                status_code=400,
                detail=f"unknown status {status!r}: use one of {', '.join(registry.STATUSES)}",
            )
        c: Components = state.components
        missed = c.settings.offline_after_missed
        at = now()
        with c.sessions() as session:
            rows, total = registry.page(session, at, missed, status, limit, offset)
            counts = registry.counts(session, at, missed)
        items = [worker_view(w, s, at) for w, s in rows]
        return WorkerPage(items, total, limit, offset, counts)

    @get("/{worker_id:str}", sync_to_thread=True)
    def get_worker(self, state: State, worker_id: FromPath[str]) -> WorkerView:
        c: Components = state.components
        with c.sessions() as session:
            worker = session.get(Worker, worker_id)
        if worker is None:
            raise NotFoundException(detail=f"no worker with id {worker_id!r} has sent a heartbeat")
        at = now()
        status = registry.status(
            worker.state, worker.last_seen, worker.interval, at, c.settings.offline_after_missed
        )
        return worker_view(worker, status, at)

    @delete("/{worker_id:str}", status_code=200, sync_to_thread=True)
    def revoke(self, state: State, worker_id: FromPath[str]) -> PairedWorkerView:
        """Revoke a worker (by its pairing's id or a registry id): its token no longer
        pairs or refreshes, and its running processes stop taking work at once."""
        view = revoke_worker(state.components, worker_id)
        state.relay.wake()
        state.gateway.revoked(worker_id, view.id)  # this instance's sockets: at once
        return view
