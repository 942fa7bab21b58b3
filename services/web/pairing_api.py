"""Worker pairing: the app shows a one-time code; a worker exchanges it for a token.

``POST /api/pairings`` makes a code (10 minutes, once: ``pairing_codes_api``);
``POST /api/workers/pair`` trades it for a worker token and connection settings;
``POST /api/workers/refresh`` trades the token for fresh settings;
``DELETE /api/workers/{id}`` (``workers_api``) revokes the token. Codes and tokens are
never stored or logged in clear (``libs/common/pairing.py``). A worker token belongs to
its pairing's owner.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass
from typing import Annotated

import msgspec
from litestar import Controller, Request, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import Body
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from libs.common import pairing
from libs.common.models import Pairing, WorkerToken, now
from libs.common.runtime import Components
from libs.common.settings import Settings
from services.web.pairing_schemas import (
    BROKER,
    GATEWAY,
    ConnectionView,
    PairedView,
    PairRequest,
    RefreshRequest,
)

log = logging.getLogger(__name__)
NOT_CONFIGURED = "pairing is not configured: set WORKER_TOKEN_KEY"


@dataclass
class PairingState:
    """Per app: the token key (None: pairing refused), the attempt throttle of code
    exchanges (per address), and the throttle of new codes (per user)."""

    key: bytes | None
    throttle: pairing.Throttle
    codes: pairing.Throttle


def pairing_state(settings: Settings, embedded: bool) -> PairingState:
    if settings.worker_token_key:
        key: bytes | None = settings.worker_token_key.encode()
    else:  # the all-in-one may use a key of its own: its tokens die with the process
        key = secrets.token_bytes(32) if embedded else None
    per_minute = settings.pairing_attempts_per_minute
    # With accounts, only logged-in users make codes (a few a minute each), and a code of
    # 20**8 cannot be guessed at PAIRING_ATTEMPTS_PER_MINUTE per address: no global cap,
    # which bogus attempts from anywhere could fill to lock out every real code.
    total = None if settings.accounts_required else settings.pairing_attempts_global_per_minute
    return PairingState(
        key, pairing.Throttle(per_minute, total), pairing.Throttle(per_minute, None)
    )


def _connection(c: Components, worker_id: str, name: str, pool: str) -> ConnectionView:
    settings = c.settings
    direct = settings.worker_broker_url is not None
    return ConnectionView(
        worker_id=worker_id, name=name, pool=pool,
        broker_url=settings.worker_broker_url or "",
        queue_prefix=settings.queue_prefix, storage_url=settings.worker_storage_url,
        heartbeat_seconds=settings.heartbeat_seconds,
        task_urls=settings.worker_storage_url is None,
        transport=BROKER if direct else GATEWAY,
    )  # fmt: skip


def key_of(state: State) -> bytes:
    key: bytes | None = state.pairing.key
    if key is None:
        raise HTTPException(status_code=503, detail=NOT_CONFIGURED)
    return key


def bearer(request: Request[object, object, State]) -> str:
    """The worker token of ``Authorization: Bearer …``; 401 without one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(status_code=401, detail="a worker token is required (Bearer)")
    return token.strip()


def token_row(session: Session, key: bytes, token: str) -> WorkerToken:
    """The live (unrevoked) token row for ``token``; 401 otherwise."""
    row = session.scalar(
        select(WorkerToken).where(WorkerToken.token_hash == pairing.token_hash(key, token))
    )
    if row is None or row.revoked_at is not None:
        raise HTTPException(status_code=401, detail="this worker token is not valid")
    return row


def _client(request: Request[object, object, State]) -> str:
    return request.client.host if request.client else "unknown"


# ---------------------------------------------------------------------------- handlers


class PairedWorkersController(Controller):
    path = "/api/workers"

    @post("/pair", status_code=200, sync_to_thread=True)
    def pair(
        self,
        state: State,
        request: Request[object, object, State],
        data: Annotated[PairRequest, Body()],
    ) -> PairedView:
        """Exchange a pairing code for a worker token and the broker settings."""
        key = key_of(state)
        client = _client(request)
        wait = state.pairing.throttle.attempt(client)
        if wait is not None:
            log.warning(
                "pairing attempts from %s throttled", client, extra={"action": "pairing_throttled"}
            )
            raise HTTPException(
                status_code=429,
                detail=f"too many pairing attempts: try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        c: Components = state.components
        digest = pairing.code_hash(data.code)
        at = now()
        token = pairing.new_token()
        worker_id = uuid.uuid4().hex
        with c.sessions() as session, session.begin():
            row = session.scalar(select(Pairing).where(Pairing.code_hash == digest))
            refusal = _refusal(row, at)
            if refusal is None and row is not None:
                claimed = session.execute(
                    update(Pairing)
                    .where(Pairing.id == row.id, Pairing.used_at.is_(None))
                    .values(used_at=at, worker_id=worker_id)
                )
                if getattr(claimed, "rowcount", 0) != 1:  # another worker won the race
                    refusal = (409, "this pairing code was already used")
            if refusal is not None or row is None:
                status, reason = refusal or (403, "this pairing code is not valid")
                log.info(
                    "pairing refused (%s) for %s",
                    status,
                    client,
                    extra={"action": "pairing_refused"},
                )
                raise HTTPException(status_code=status, detail=reason)
            name = data.name.strip() or f"worker-{worker_id[:6]}"
            session.add(
                WorkerToken(
                    worker_id=worker_id, token_hash=pairing.token_hash(key, token), name=name,
                    pool=row.pool, created_at=at, owner_id=row.owner_id,
                )
            )  # fmt: skip
        log.info(
            "worker %s (%s) paired into pool %s", worker_id, name, row.pool,
            extra={"action": "worker_paired"},
        )  # fmt: skip
        _declare_pool(c, row.pool)
        view = _connection(c, worker_id, name, row.pool)
        return PairedView(**msgspec.structs.asdict(view), token=token)

    @post("/refresh", status_code=200, sync_to_thread=True)
    def refresh(
        self,
        state: State,
        request: Request[object, object, State],
        data: Annotated[RefreshRequest, Body()],
    ) -> ConnectionView:
        """Exchange a worker token (``Authorization: Bearer``) for fresh settings."""
        key, token = key_of(state), bearer(request)
        c: Components = state.components
        with c.sessions() as session, session.begin():
            row = token_row(session, key, token)
            if data.name.strip():
                row.name = data.name.strip()
        _declare_pool(c, row.pool)
        return _connection(c, row.worker_id, row.name, row.pool)


def _declare_pool(c: Components, pool: str) -> None:
    """Make sure the pool's task queue exists before its worker consumes it: a paired
    worker declares nothing (its broker user may not). Best effort: if the broker is down
    now, the first task published to the pool declares it too, and the worker retries."""
    try:
        with c.broker.connection() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
            c.broker.declare_pool(conn, pool)
    except Exception as exc:
        log.warning(
            "could not declare the queue of pool %s: %s", pool, exc,
            extra={"action": "pool_declare"},
        )  # fmt: skip


def _refusal(row: Pairing | None, at: float) -> tuple[int, str] | None:
    if row is None:
        return 403, "this pairing code is not valid"
    if row.used_at is not None:
        return 409, "this pairing code was already used"
    if row.expires_at <= at:
        return 410, "this pairing code has expired"
    return None
