"""Worker pairing: the app shows a one-time code; a worker exchanges it for a token.

``POST /api/pairings`` makes a code (10 minutes, once); ``POST /api/workers/pair`` trades
it for a worker token and connection settings; ``POST /api/workers/refresh`` trades the
token for fresh settings; ``DELETE /api/workers/{id}`` (routed in ``workers_api``) revokes
the token. Codes and tokens are never stored or logged in clear (``libs/common/pairing.py``).
"""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import Body, FromPath
from sqlalchemy import exists, or_, select, update
from sqlalchemy.orm import Session

from libs.common import messages, outbox, pairing, pools
from libs.common.models import Pairing, Worker, WorkerToken, now
from libs.common.runtime import Components
from libs.common.settings import Settings

log = logging.getLogger(__name__)
NOT_CONFIGURED = "pairing is not configured: set WORKER_TOKEN_KEY"


@dataclass
class PairingState:
    """Per app: the token key (None: pairing refused) and the attempt throttle."""

    key: bytes | None
    throttle: pairing.Throttle


def pairing_state(settings: Settings, embedded: bool) -> PairingState:
    if settings.worker_token_key:
        key: bytes | None = settings.worker_token_key.encode()
    else:  # the all-in-one may use a key of its own: its tokens die with the process
        key = secrets.token_bytes(32) if embedded else None
    throttle = pairing.Throttle(
        settings.pairing_attempts_per_minute, settings.pairing_attempts_global_per_minute
    )
    return PairingState(key, throttle)


# ------------------------------------------------------------------------------ schemas


class PairingView(msgspec.Struct):
    id: str
    state: str  # waiting, connected or expired
    pool: str
    expires_at: str
    worker: dict[str, str] | None = None


class NewPairing(msgspec.Struct):
    id: str
    code: str  # XXXX-XXXX: shown once, never stored in clear
    pool: str
    expires_at: str
    state: str


class PairingRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Which pool the paired worker serves: a new private pool (the default), ``shared``,
    or the pool of an earlier pairing (two machines for one remote worker mode)."""

    pool: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class PairRequest(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(max_length=64)]
    name: Annotated[str, msgspec.Meta(max_length=128)] = ""
    host: Annotated[str, msgspec.Meta(max_length=255)] = ""


class RefreshRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=128)] = ""
    host: Annotated[str, msgspec.Meta(max_length=255)] = ""


#: How a paired worker takes tasks: over a WebSocket to the web (``gateway``, the
#: default: it needs only the app's address), or straight from the broker (``broker``,
#: only when the operator sets ``WORKER_BROKER_URL`` for machines they trust).
GATEWAY, BROKER = "gateway", "broker"


class ConnectionView(msgspec.Struct):
    worker_id: str
    name: str
    pool: str
    #: Empty for gateway workers: no broker credential leaves the server.
    broker_url: str
    queue_prefix: str
    storage_url: str | None
    heartbeat_seconds: float
    #: Task inputs and outputs: ask ``POST /api/workers/tasks/{id}/urls`` for URLs
    #: (presigned on S3, else served by the web), rather than use ``storage_url``.
    task_urls: bool
    transport: str = GATEWAY


class PairedView(ConnectionView, kw_only=True):
    token: str


class PairedWorkerView(msgspec.Struct):
    id: str
    name: str
    pool: str
    paired_at: str | None
    revoked_at: str | None


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _state(p: Pairing, at: float) -> str:
    if p.used_at is not None:
        return "connected"
    return "expired" if p.expires_at <= at else "waiting"


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


class PairingsController(Controller):
    path = "/api/pairings"

    @post("/", sync_to_thread=True)
    def create_pairing(
        self, state: State, data: Annotated[PairingRequest | None, Body()] = None
    ) -> NewPairing:
        """A one-time code for a worker, valid 10 minutes. The worker serves a new pool of
        its own unless the body names ``shared`` or an earlier pairing's pool."""
        key_of(state)
        c: Components = state.components
        code, at = pairing.new_code(), now()
        wanted = data.pool if data is not None else None
        with c.sessions() as session, session.begin():
            row = Pairing(
                id=uuid.uuid4().hex, code_hash=pairing.code_hash(code),
                pool=_pairing_pool(session, wanted), created_at=at,
                expires_at=at + pairing.CODE_TTL_SECONDS,
            )  # fmt: skip
            session.add(row)
        log.info(
            "pairing %s created for pool %s", row.id, row.pool, extra={"action": "pairing_new"}
        )
        return NewPairing(
            id=row.id, code=pairing.display_code(code), pool=row.pool,
            expires_at=_iso(row.expires_at) or "", state="waiting",
        )  # fmt: skip

    @get("/{pairing_id:str}", sync_to_thread=True)
    def get_pairing(self, state: State, pairing_id: FromPath[str]) -> PairingView:
        c: Components = state.components
        with c.sessions() as session:
            row = session.get(Pairing, pairing_id)
            token = session.get(WorkerToken, row.worker_id) if row and row.worker_id else None
        if row is None:
            raise NotFoundException(detail=f"no pairing with id {pairing_id!r}")
        worker = {"id": token.worker_id, "name": token.name} if token else None
        return PairingView(row.id, _state(row, now()), row.pool, _iso(row.expires_at) or "", worker)


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
                    pool=row.pool, created_at=at,
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


def revoke_worker(c: Components, worker_id: str) -> PairedWorkerView:
    """Revoke a worker, by its pairing's id or a registry id: its token stops working, and
    a broadcast tells the running processes to stop taking work (the dispatcher repeats it
    at their next heartbeat, for one that was disconnected)."""
    at = now()
    with c.sessions() as session, session.begin():
        token = session.get(WorkerToken, worker_id)
        worker = session.get(Worker, worker_id)
        if token is None and worker is None:
            raise NotFoundException(detail=f"no worker with id {worker_id!r}")
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
                token.worker_id, token.name, token.pool, _iso(token.created_at),
                _iso(token.revoked_at),
            )  # fmt: skip
        else:
            assert worker is not None
            view = PairedWorkerView(
                worker.id, worker.name, worker.pool, None, _iso(worker.revoked_at)
            )
        stop = messages.WorkerRevoked(worker_id=worker_id, paired_id=paired_id)
        outbox.add(session, outbox.CONTROL, messages.envelope("", stop))
    log.info("worker %s revoked", worker_id, extra={"action": "worker_revoked"})
    return view


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


def _pairing_pool(session: Session, wanted: str | None) -> str:
    if wanted is None:
        return pairing.new_pool()
    if wanted == pools.SHARED:
        return wanted
    if session.scalar(select(exists().where(Pairing.pool == wanted))):
        return wanted
    raise HTTPException(
        status_code=422,
        detail=f"no pairing has pool {wanted!r}: name 'shared', a pool shown by an earlier "
        "pairing, or none (a new pool)",
    )


def _refusal(row: Pairing | None, at: float) -> tuple[int, str] | None:
    if row is None:
        return 403, "this pairing code is not valid"
    if row.used_at is not None:
        return 409, "this pairing code was already used"
    if row.expires_at <= at:
        return 410, "this pairing code has expired"
    return None
