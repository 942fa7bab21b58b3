"""Accounts over HTTP: log in and out, sign up, redeem an invitation, API tokens, and the
admin's users and invitations. The rules live in ``libs/common/users.py``; ``auth.py``
says who is calling. With ACCOUNTS=off every route here but ``me`` and ``logout``
answers 409: everyone is the local admin and there is nothing to log in to.

No password or token is logged, nor an email typed at a login (people type passwords
there): log lines name accounts by id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotAuthorizedException, NotFoundException
from litestar.params import Body, FromPath
from sqlalchemy.orm import Session

from libs.common import accounts, users
from libs.common.accounts import AccountError
from libs.common.models import User
from services.web.auth import (
    Auth,
    Identity,
    accounts_on,
    client_address,
    require_admin,
    require_user,
    start_session,
)
from services.web.auth_schemas import (
    AccountView,
    InviteRequest,
    InviteView,
    LoginRequest,
    NewTokenView,
    RedeemRequest,
    SignupRequest,
    TokenRequest,
    TokenView,
    UserView,
    account_view,
    iso,
    token_view,
    user_view,
)

log = logging.getLogger(__name__)
WRONG_LOGIN = "wrong email or password"

#: What each AccountError kind answers.
STATUS = {
    accounts.INVALID: 422,
    accounts.DUPLICATE: 409,
    accounts.DISABLED: 403,
    accounts.INVITE_UNKNOWN: 404,
    accounts.INVITE_USED: 409,
    accounts.INVITE_EXPIRED: 410,
}

AnyRequest = Request[Any, Any, State]


@contextmanager
def answers() -> Iterator[None]:
    """An AccountError (the transaction already rolled back) as its HTTP status."""
    try:
        yield
    except AccountError as exc:
        raise HTTPException(status_code=STATUS.get(exc.kind, 422), detail=str(exc)) from None


def _account(session: Session, who: Identity) -> User:
    user = session.get(User, who.id) if who.id is not None else None
    if user is None:  # deleted since the request was authenticated
        raise NotAuthorizedException(detail="log in first")
    return user


# ---------------------------------------------------------------------------- handlers


class AuthController(Controller):
    path = "/api/auth"

    @post("/login", status_code=200, guards=[accounts_on], sync_to_thread=True)
    def login(
        self, state: State, request: AnyRequest, data: Annotated[LoginRequest, Body()]
    ) -> UserView:
        """Log in: the session cookie. 401 alike for an unknown email and a wrong password."""
        auth: Auth = state.auth
        auth.throttle(client_address(request), "login:" + data.email.strip().lower())
        with auth.sessions() as session, session.begin():
            user = users.authenticate(session, data.email, data.password)
            if user is None:
                raise NotAuthorizedException(detail=WRONG_LOGIN)
            start_session(request, user)
            who = Identity.of(user)
        log.info("user %s logged in", who.id, extra={"action": "login"})
        return user_view(who)

    @post("/logout", status_code=204, sync_to_thread=False)
    def logout(self, request: AnyRequest) -> None:
        """End this browser's session (nothing to do when there is none)."""
        request.clear_session()

    @post("/logout-all", status_code=204, guards=[accounts_on, require_user], sync_to_thread=True)
    def logout_all(self, state: State, request: AnyRequest) -> None:
        """End every session of this user, on every browser (API tokens stay valid)."""
        auth: Auth = state.auth
        with auth.sessions() as session, session.begin():
            users.bump_session_epoch(_account(session, request.user))
        request.clear_session()
        log.info("user %s logged out everywhere", request.user.id, extra={"action": "logout_all"})

    @get("/me", guards=[require_user], sync_to_thread=False)
    def me(self, request: AnyRequest) -> UserView:
        return user_view(request.user)

    @post("/signup", status_code=201, guards=[accounts_on], sync_to_thread=True)
    def signup(
        self, state: State, request: AnyRequest, data: Annotated[SignupRequest, Body()]
    ) -> UserView:
        """A member account, logged in at once; 403 unless ALLOW_SIGNUP."""
        auth: Auth = state.auth
        if not auth.allow_signup:
            raise HTTPException(
                status_code=403, detail="sign-up is closed here: ask an admin for an invitation"
            )
        auth.throttle(client_address(request))
        with answers(), auth.sessions() as session, session.begin():
            user = users.create_user(session, data.email, data.name, data.password)
            start_session(request, user)
            who = Identity.of(user)
        return user_view(who)

    @post("/invites/redeem", status_code=201, guards=[accounts_on], sync_to_thread=True)
    def redeem(
        self, state: State, request: AnyRequest, data: Annotated[RedeemRequest, Body()]
    ) -> UserView:
        """The account an invitation makes, logged in at once."""
        auth: Auth = state.auth
        auth.throttle(client_address(request), "invite:" + accounts.token_hash(data.token))
        with answers(), auth.sessions() as session, session.begin():
            user = users.redeem_invite(session, data.token, data.name, data.password)
            start_session(request, user)
            who = Identity.of(user)
        return user_view(who)


class TokensController(Controller):
    """The caller's own API tokens."""

    path = "/api/auth/tokens"
    guards = [accounts_on, require_user]

    @get("/", sync_to_thread=True)
    def list_tokens(self, state: State, request: AnyRequest) -> list[TokenView]:
        """The caller's tokens, revoked ones too, newest first, by prefix."""
        auth: Auth = state.auth
        with auth.sessions() as session:
            rows = users.api_tokens(session, _account(session, request.user))
            return [token_view(t) for t in rows]

    @post("/", status_code=201, sync_to_thread=True)
    def create_token(
        self, state: State, request: AnyRequest, data: Annotated[TokenRequest, Body()]
    ) -> NewTokenView:
        """A new token, shown this once."""
        auth: Auth = state.auth
        with answers(), auth.sessions() as session, session.begin():
            row, token = users.create_api_token(session, _account(session, request.user), data.name)
            view = token_view(row)
        return NewTokenView(**msgspec.structs.asdict(view), token=token)

    @delete("/{token_id:str}", status_code=204, sync_to_thread=True)
    def revoke_token(self, state: State, request: AnyRequest, token_id: FromPath[str]) -> None:
        """Revoke one of the caller's tokens; 404 for any other id."""
        auth: Auth = state.auth
        with auth.sessions() as session, session.begin():
            if not users.revoke_api_token(session, _account(session, request.user), token_id):
                raise NotFoundException(detail=f"you have no API token with id {token_id!r}")


class UsersController(Controller):
    """Accounts, for admins."""

    path = "/api/users"
    guards = [accounts_on, require_admin]

    @get("/", sync_to_thread=True)
    def list_users(self, state: State) -> list[AccountView]:
        auth: Auth = state.auth
        with auth.sessions() as session:
            return [account_view(u) for u in users.list_users(session)]

    @post("/invites", status_code=201, sync_to_thread=True)
    def invite(
        self, state: State, request: AnyRequest, data: Annotated[InviteRequest, Body()]
    ) -> InviteView:
        """A one-time invitation link, valid for a week: give it to the person."""
        auth: Auth = state.auth
        with answers(), auth.sessions() as session, session.begin():
            by = _account(session, request.user)
            row, token = users.create_invite(session, data.email, data.role, by)
            view = InviteView(row.id, row.email, row.role, iso(row.expires_at), f"/invite#{token}")
        return view

    @delete("/{user_id:str}", status_code=200, sync_to_thread=True)
    def disable(self, state: State, request: AnyRequest, user_id: FromPath[str]) -> AccountView:
        """Disable an account: its logins, sessions and API tokens stop working."""
        auth: Auth = state.auth
        if user_id == request.user.id:
            raise HTTPException(status_code=409, detail="you cannot disable your own account")
        with auth.sessions() as session, session.begin():
            user = session.get(User, user_id)
            if user is None:
                raise NotFoundException(detail=f"no account with id {user_id!r}")
            users.disable_user(session, user)
            return account_view(user)
