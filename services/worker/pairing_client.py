"""Pairing with a hosted Conveyor: a short code (or a saved token) for connection settings.

``pair`` exchanges the code the app shows for a worker token and the broker settings;
``refresh`` exchanges the saved token for fresh settings. Every failure is a
``PairingError`` whose ``str()`` is one line for the terminal. Secrets never appear in
clear in a message: ``mask`` shows their first few characters only.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

CODE_LENGTH = 8
TIMEOUT_SECONDS = 15.0
_HINT = "get a new code in the app"


class PairingError(Exception):
    """Pairing or refreshing failed; ``status``: the server's HTTP status, if it answered."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def revoked(self) -> bool:
        """The server no longer accepts the token (refresh answered 401)."""
        return self.status == 401


class CodeError(PairingError):
    """What was typed cannot be a pairing code (checked before asking the server)."""


class Connection(msgspec.Struct, frozen=True):
    """The server's answer: who this worker is and how to reach the broker."""

    worker_id: str
    name: str
    pool: str
    broker_url: str
    queue_prefix: str
    storage_url: str | None = None
    heartbeat_seconds: float = 5.0
    token: str | None = None  # only in the answer to ``pair``
    #: CSV tasks read and write through presigned URLs asked of the server (task_urls.py).
    task_urls: bool = False
    #: ``gateway``: tasks over a WebSocket to the server (no broker credentials);
    #: ``broker``: straight from ``broker_url`` (servers before the gateway say nothing).
    transport: str = "broker"

    @property
    def through_gateway(self) -> bool:
        return self.transport == "gateway"


class _Detail(msgspec.Struct):
    detail: Any = None


def mask(secret: str) -> str:
    """``cvw_ab…``: at most 6 characters and at most a quarter of the secret, then ``…``."""
    return secret[: min(6, len(secret) // 4)] + "…"


def normalise_code(raw: str) -> str:
    """What a person typed (``abcd-1234``, `` ABCD 1234 ``) as the server's ``ABCD1234``."""
    code = re.sub(r"[\s\-]+", "", raw).upper()
    if len(code) != CODE_LENGTH or not code.isascii() or not code.isalnum():
        raise CodeError(
            f"a pairing code is {CODE_LENGTH} letters or digits, like ABCD-1234 "
            f"(got {len(code)} characters)"
        )
    return code


def check_server(raw: str) -> str:
    """The server's base URL; plain http:// only to loopback or private addresses."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise PairingError(f"--server: expected https://host (got {raw!r})")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise PairingError("--server: give the app's address only, like https://app.example")
    if parts.scheme == "http" and not _is_local(parts.hostname):
        raise PairingError(
            f"--server: refusing plain http:// to {parts.hostname}: the worker token would "
            "cross the internet in clear. Use https:// (http:// is only for loopback and "
            "private addresses)"
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _is_local(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: it may resolve anywhere
    return address.is_loopback or address.is_private or address.is_link_local


def pair(
    server: str, code: str, name: str, host: str, *, timeout: float = TIMEOUT_SECONDS
) -> Connection:
    """Exchange a pairing code for a token and connection settings."""
    body = {"code": normalise_code(code), "name": name, "host": host}
    answer = _post(server, "pair", body, {}, timeout, secrets=(code, body["code"]))
    if not answer.token:
        raise PairingError(f"{server} paired this worker but sent no token")
    return answer


def refresh(
    server: str, token: str, name: str, host: str, *, timeout: float = TIMEOUT_SECONDS
) -> Connection:
    """Exchange a saved token for fresh connection settings."""
    headers = {"Authorization": f"Bearer {token}"}
    return _post(
        server, "refresh", {"name": name, "host": host}, headers, timeout, secrets=(token,)
    )


def _post(
    server: str,
    action: str,
    body: dict[str, str],
    headers: dict[str, str],
    timeout: float,
    secrets: tuple[str, ...],
) -> Connection:
    base = check_server(server)
    where = urlsplit(base).netloc
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            response = client.post(f"{base}/api/workers/{action}", json=body, headers=headers)
    except httpx.TimeoutException:
        raise PairingError(f"{where} did not answer within {timeout:g} s") from None
    except httpx.ConnectError as exc:
        if _tls_error(exc):
            raise PairingError(f"no secure connection to {where}: {_reason(exc)}") from None
        raise PairingError(f"cannot reach {where}: {_reason(exc)}") from None
    except httpx.HTTPError as exc:
        raise PairingError(f"the connection to {where} failed: {_reason(exc)}") from None
    if response.status_code == 200:
        return _decode(response, where)
    raise PairingError(
        _status_message(response, action, where, secrets), status=response.status_code
    )


def _decode(response: httpx.Response, where: str) -> Connection:
    try:
        return msgspec.json.decode(response.content, type=Connection)
    except msgspec.ValidationError as exc:
        raise PairingError(f"{where} sent an unexpected answer: {exc}") from None
    except msgspec.DecodeError:
        raise PairingError(
            f"{where} did not answer with JSON (is --server the Conveyor app's address?)"
        ) from None


def _status_message(
    response: httpx.Response, action: str, where: str, secrets: tuple[str, ...]
) -> str:
    status = response.status_code
    detail = _detail(response, secrets)
    because = f" ({detail})" if detail else ""
    if status == 401:
        return f"{where} no longer accepts this worker's token: it was revoked{because}"
    if action == "pair" and status == 403:
        return f"the pairing code was not accepted{because}: check it, or {_HINT}"
    if action == "pair" and status == 410:
        return f"the pairing code has expired{because}: {_HINT}"
    if action == "pair" and status == 409:
        return f"the pairing code was already used{because}: {_HINT}"
    if status == 429:
        return f"too many pairing attempts{because}: try again {_retry_after(response)}"
    if status == 404:
        return f"{where} has no worker pairing here (is --server the Conveyor app's address?)"
    if 300 <= status < 400:
        target = response.headers.get("location", "elsewhere")
        return f"{where} redirects to {target}: give that address to --server"
    return f"{where} answered HTTP {status} {response.reason_phrase}{because}"


def _detail(response: httpx.Response, secrets: tuple[str, ...]) -> str:
    try:
        detail = msgspec.json.decode(response.content, type=_Detail).detail
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""
    text = " ".join(str(detail or "").split())[:200]
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, mask(secret))
    return text


def _retry_after(response: httpx.Response) -> str:
    raw = response.headers.get("retry-after", "").strip()
    return f"in {int(raw)} s" if raw.isdigit() else "later"


def _tls_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "SSL" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return re.sub(r"^\[Errno -?\d+\] ", "", text) or type(exc).__name__
