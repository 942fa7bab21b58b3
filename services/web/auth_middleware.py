"""The app's middleware for accounts: the client's address, the session cookie, the CSRF
check and ``request.user``. What each does and why is in ``auth.py``'s docstring."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, cast

import anyio.to_thread
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import Headers
from litestar.exceptions import PermissionDeniedException
from litestar.middleware import DefineMiddleware
from litestar.middleware.authentication import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
)
from litestar.middleware.csrf import CSRFMiddleware
from litestar.middleware.session.client_side import CookieBackendConfig
from litestar.types import ASGIApp, HTTPScope, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from libs.common.settings import Settings
from services.web import access
from services.web.auth import LOCAL_ADMIN, Auth, Connection

SESSION_COOKIE = "conveyor_session"
CSRF_COOKIE, CSRF_HEADER = "conveyor_csrf", "x-csrf-token"
SESSION_MAX_AGE = 14 * 24 * 3600


def derive_key(secret: bytes, purpose: str) -> bytes:
    """A 256-bit key for one purpose (the session cookie, CSRF tokens) from the secret."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(
        secret
    )


def session_config(auth: Auth) -> CookieBackendConfig:
    return CookieBackendConfig(
        secret=derive_key(auth.secret, "conveyor session cookie"),
        key=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE,
        secure=auth.secure,
        httponly=True,
        samesite="lax",
    )


def middleware(settings: Settings, auth: Auth) -> list[DefineMiddleware]:
    """The app's middleware, outermost first: the client's address from trusted proxies,
    the session cookie and the CSRF check (accounts on only), then who the caller is."""
    stack = []
    if settings.trusted_proxies:  # uvicorn's own parser, run inside the app (tests too)
        proxies: Callable[..., ASGIApp] = cast(Any, ProxyHeadersMiddleware)
        stack.append(DefineMiddleware(proxies, trusted_hosts=list(settings.trusted_proxies)))
    if auth.required:
        stack.append(session_config(auth).middleware)
        csrf = CSRFConfig(
            secret=derive_key(auth.secret, "conveyor csrf").hex(),
            cookie_name=CSRF_COOKIE,
            header_name=CSRF_HEADER,
            cookie_secure=auth.secure,
            cookie_samesite="lax",
        )
        stack.append(DefineMiddleware(Csrf, config=csrf))
    stack.append(DefineMiddleware(Authenticate, auth=auth, exclude=WORKER_PATHS))
    return stack


def _worker_paths() -> list[str]:
    """Regexes of the routes a worker token or a pairing code opens (``access.RULES``)."""
    rules = {access.WORKER_TOKEN, access.PAIRING_CODE}
    paths = sorted({path for (_, path), rule in access.RULES.items() if rule in rules})
    return ["^" + re.sub(r"\\\{.*?\\\}", "[^/]+", re.escape(path)) + "$" for path in paths]


WORKER_PATHS = _worker_paths()
_WORKER_PATH = re.compile("|".join(WORKER_PATHS))


def bearer_token(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class Csrf(CSRFMiddleware):
    """Litestar's CSRF check, for the requests a browser's cookies could authenticate."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._exempt(scope):
            await self.app(scope, receive, send)
            return
        unsafe = cast("HTTPScope", scope)["method"] not in self.config.safe_methods
        if unsafe and CSRF_HEADER not in Headers.from_scope(scope):
            raise PermissionDeniedException(detail=f"a CSRF token is required ({CSRF_HEADER})")
        await super().__call__(scope, receive, send)

    @staticmethod
    def _exempt(scope: Scope) -> bool:
        if _WORKER_PATH.match(scope["path"]):
            return True
        return bearer_token(Headers.from_scope(scope)) is not None


class Authenticate(AbstractAuthenticationMiddleware):
    """Sets ``request.user``: the Bearer token's user, else the session's, else None."""

    def __init__(self, app: ASGIApp, auth: Auth, exclude: list[str]) -> None:
        super().__init__(app, exclude=exclude)
        self.auth = auth

    async def authenticate_request(self, connection: Connection) -> AuthenticationResult:
        if not self.auth.required:
            return AuthenticationResult(LOCAL_ADMIN, "local")
        token = bearer_token(connection.headers)
        if token is not None:
            user = await anyio.to_thread.run_sync(self.auth.user_for_token, token)
            return AuthenticationResult(user, "token" if user else None)
        data = connection.scope.get("session")
        if not isinstance(data, dict) or not data:
            return AuthenticationResult(None, None)
        user = await anyio.to_thread.run_sync(self.auth.user_for_session, data)
        if user is None:  # logged out everywhere, disabled, or deleted: drop the cookie
            connection.clear_session()
        return AuthenticationResult(user, "session" if user else None)
