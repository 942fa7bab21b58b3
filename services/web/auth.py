"""Who is calling: browser sessions, API tokens, CSRF checks and the guards on routes.

All of it is Litestar's own machinery, configured:

- **Sessions** are Litestar's client-side (cookie) sessions: AES-GCM, from
  ``cryptography``, under a key derived (HKDF) from ``SESSION_SECRET``. A cookie session
  needs no shared store, so any web instance reads any session, and a server restart
  keeps them. The cookie holds the user's id, their ``session_epoch`` and a random
  session id made at login; a session whose epoch no longer matches the database (log
  out everywhere, a new password, a disabled account) is anonymous. The cookie is
  HttpOnly, SameSite=Lax, ``Secure`` unless ``HOST`` is a loopback address (plain http on
  one machine), and replaced at every login. It lasts 14 days, renewed while in use. The
  price of having no store: ``logout`` deletes this browser's cookie, but a copy taken
  before stays valid until it expires or the user logs out everywhere.
- **API tokens** (``Authorization: Bearer cvu_…``) authenticate as their user. A request
  with a Bearer header is judged by that header alone: its session cookie is ignored.
  Worker tokens (``cvw_…``) are no user's: they open only the worker routes.
- **CSRF**: Litestar's double-submit token (``CSRFConfig``): an unsafe request must echo
  the CSRF cookie in the ``x-csrf-token`` header. Exempt: requests with a Bearer header
  (a browser cannot add one cross-site) and the worker routes (no cookies there). Only
  the header counts, not a form field, so a refused upload is never read.
- **ACCOUNTS=off**: every request is ``LOCAL_ADMIN`` (no account row), nothing is checked
  and no CSRF token is asked for: the app behaves as it did before accounts.

``request.user`` is an ``Identity`` or None (anonymous); ``require_user`` and
``require_admin`` are the guards routes put on. The middleware is in ``auth_middleware``.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler
from sqlalchemy.orm import Session, sessionmaker

from libs.common import accounts, pairing, users
from libs.common.models import User
from libs.common.settings import Settings, is_loopback

log = logging.getLogger(__name__)

#: Per account, this many times LOGIN_ATTEMPTS_PER_MINUTE from all addresses together, so
#: guessing from one address cannot lock the owner out, and from many is still bounded.
ACCOUNT_FACTOR = 10
Connection = ASGIConnection[Any, Any, Any, Any]
ACCOUNTS_OFF = "accounts are off on this server (ACCOUNTS=off): everyone is the local admin"


@dataclass(frozen=True)
class Identity:
    """Who a request is from: an account, or (``id`` None) the implicit local admin."""

    id: str | None
    email: str
    name: str
    role: str

    @classmethod
    def of(cls, user: User) -> Identity:
        return cls(user.id, user.email, user.name, user.role)

    @property
    def admin(self) -> bool:
        return self.role == accounts.ADMIN


#: Everyone, when ACCOUNTS=off: no row in the database, nothing to log in to.
LOCAL_ADMIN = Identity(None, "", "Local admin", accounts.ADMIN)


@dataclass
class Auth:
    """Per app: the accounts mode, the database, the cookie flags and the login throttles."""

    required: bool
    allow_signup: bool
    secure: bool
    secret: bytes
    sessions: sessionmaker[Session]
    by_address: pairing.Throttle
    by_account: pairing.Throttle

    def user_for_token(self, token: str) -> Identity | None:
        with self.sessions() as session, session.begin():
            user = users.user_for_api_token(session, token)
            return Identity.of(user) if user is not None else None

    def user_for_session(self, data: dict[str, Any]) -> Identity | None:
        uid, epoch = data.get("uid"), data.get("epoch")
        if not isinstance(uid, str) or not isinstance(epoch, int):
            return None
        with self.sessions() as session:
            user = session.get(User, uid)
            if user is None or user.disabled_at is not None or user.session_epoch != epoch:
                return None
            return Identity.of(user)

    def throttle(self, client: str, account: str | None = None) -> None:
        """429 with Retry-After once ``client`` (an address) or ``account`` tried too often."""
        wait = self.by_address.attempt(client)
        if wait is None and account is not None:
            wait = self.by_account.attempt(account)
            who = "an account"
        else:
            who = client
        if wait is not None:
            log.warning("login attempts throttled for %s", who, extra={"action": "login_throttled"})
            raise HTTPException(
                status_code=429,
                detail=f"too many attempts: try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )


def auth_state(settings: Settings, sessions: sessionmaker[Session]) -> Auth:
    secret = settings.session_secret.encode() if settings.session_secret else None
    per_minute = settings.login_attempts_per_minute
    return Auth(
        required=settings.accounts_required,
        allow_signup=settings.allow_signup,
        secure=not is_loopback(settings.host),
        secret=secret or secrets.token_bytes(32),  # unset: sessions die with the process
        sessions=sessions,
        by_address=pairing.Throttle(per_minute, None),
        by_account=pairing.Throttle(per_minute * ACCOUNT_FACTOR, None),
    )


def start_session(connection: Connection, user: User) -> None:
    """Log ``user`` in on this browser: a new session (a new id), whatever came before."""
    connection.clear_session()
    connection.set_session(
        {"uid": user.id, "epoch": user.session_epoch, "sid": secrets.token_urlsafe(16)}
    )


# --------------------------------------------------------------------------------- guards


def accounts_on(connection: Connection, _: BaseRouteHandler) -> None:
    """409 with ACCOUNTS=off: there are no logins, tokens or invitations to manage."""
    if not connection.app.state.auth.required:
        raise HTTPException(status_code=409, detail=ACCOUNTS_OFF)


def require_user(connection: Connection, _: BaseRouteHandler) -> None:
    if connection.user is None:
        raise NotAuthorizedException(
            detail="log in first, or send an API token (Authorization: Bearer cvu_…)"
        )


def require_admin(connection: Connection, handler: BaseRouteHandler) -> None:
    require_user(connection, handler)
    if not connection.user.admin:
        raise PermissionDeniedException(detail="only an admin may do this")


def client_address(connection: Connection) -> str:
    """The client's address: the peer, or what a proxy of TRUSTED_PROXIES says it is."""
    return connection.client.host if connection.client else "unknown"
