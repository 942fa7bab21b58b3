"""The pairing API's request and response bodies (``pairing_api``, ``workers_api``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec


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


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
