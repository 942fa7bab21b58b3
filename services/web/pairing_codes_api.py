"""Pairing codes: ``POST /api/pairings`` makes a one-time code (10 minutes, once) for a
worker to trade at ``POST /api/workers/pair`` (``pairing_api``); ``GET`` shows whether
one paired. A pairing, its pool and its worker belong to the user who made the code
(``ownership``): another member's answer 404, and only an admin pairs into ``shared``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, PermissionDeniedException
from litestar.params import Body, FromPath
from sqlalchemy.orm import Session

from libs.common import pairing, pools
from libs.common.models import Pairing, WorkerToken, now
from libs.common.runtime import Components
from services.web import ownership
from services.web.auth import Identity, require_user
from services.web.pairing_api import key_of
from services.web.pairing_schemas import NewPairing, PairingRequest, PairingView, iso

log = logging.getLogger(__name__)


class PairingsController(Controller):
    """A pairing, its pool and its worker belong to the user who made the code."""

    path = "/api/pairings"
    guards = [require_user]

    @post("/", sync_to_thread=True)
    def create_pairing(
        self,
        state: State,
        request: Request[object, object, State],
        data: Annotated[PairingRequest | None, Body()] = None,
    ) -> NewPairing:
        """A one-time code for a worker, valid 10 minutes. The worker serves a new pool of
        its own unless the body names ``shared`` (admins only) or the pool of an earlier
        pairing of the caller's."""
        key_of(state)
        c: Components = state.components
        who = ownership.caller(request)
        wait = state.pairing.codes.attempt(who.id or "local-admin")
        if wait is not None:
            raise HTTPException(
                status_code=429, detail=f"too many pairing codes: try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )  # fmt: skip
        code, at = pairing.new_code(), now()
        wanted = data.pool if data is not None else None
        with c.sessions() as session, session.begin():
            row = Pairing(
                id=uuid.uuid4().hex, code_hash=pairing.code_hash(code),
                pool=_pairing_pool(session, who, wanted), created_at=at,
                expires_at=at + pairing.CODE_TTL_SECONDS, owner_id=who.id,
            )  # fmt: skip
            session.add(row)
        log.info(
            "pairing %s created for pool %s", row.id, row.pool, extra={"action": "pairing_new"}
        )
        return NewPairing(
            id=row.id, code=pairing.display_code(code), pool=row.pool,
            expires_at=iso(row.expires_at) or "", state="waiting",
        )  # fmt: skip

    @get("/{pairing_id:str}", sync_to_thread=True)
    def get_pairing(
        self, state: State, request: Request[object, object, State], pairing_id: FromPath[str]
    ) -> PairingView:
        c: Components = state.components
        with c.sessions() as session:
            row = ownership.pairing(session, ownership.caller(request), pairing_id)
            token = session.get(WorkerToken, row.worker_id) if row.worker_id else None
        worker = {"id": token.worker_id, "name": token.name} if token else None
        return PairingView(row.id, _state(row, now()), row.pool, iso(row.expires_at) or "", worker)


def _state(p: Pairing, at: float) -> str:
    if p.used_at is not None:
        return "connected"
    return "expired" if p.expires_at <= at else "waiting"


def _pairing_pool(session: Session, who: Identity, wanted: str | None) -> str:
    """A new pool, ``shared`` (admins only) or the pool of an earlier pairing of ``who``'s
    (any pairing's for an admin); another user's pool answers as an unknown one (422)."""
    if wanted is None:
        return pairing.new_pool()
    if wanted == pools.SHARED:
        if not who.admin:
            raise PermissionDeniedException(detail="only an admin may pair into the shared pool")
        return wanted
    if ownership.owns_pool(session, who, wanted):
        return wanted
    raise HTTPException(
        status_code=422,
        detail=f"no pairing has pool {wanted!r}: name 'shared', a pool shown by an earlier "
        "pairing, or none (a new pool)",
    )
