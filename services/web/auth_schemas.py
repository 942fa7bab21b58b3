"""The accounts API's schemas: requests in, views out (msgspec structs), and how rows
become views. No password or token hash is ever in a view; a token or an invitation link
is shown once, when it is made."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec

from libs.common import accounts
from libs.common.models import ApiToken, User
from services.web.auth import Identity

Email = Annotated[str, msgspec.Meta(max_length=accounts.EMAIL_MAX * 2)]
Password = Annotated[str, msgspec.Meta(max_length=accounts.PASSWORD_MAX)]
Name = Annotated[str, msgspec.Meta(max_length=accounts.NAME_MAX * 2)]
Token = Annotated[str, msgspec.Meta(max_length=128)]


class LoginRequest(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password


class SignupRequest(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password
    name: Name = ""


class RedeemRequest(msgspec.Struct, forbid_unknown_fields=True):
    token: Token
    password: Password
    name: Name = ""


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: Name


class InviteRequest(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    role: str = accounts.MEMBER


class UserView(msgspec.Struct):
    id: str | None  # None: the local admin of ACCOUNTS=off
    email: str
    name: str
    role: str


class AccountView(UserView):
    created_at: str | None
    disabled_at: str | None


class TokenView(msgspec.Struct):
    id: str
    name: str
    prefix: str  # "cvu_AbCd": enough to tell tokens apart, not to use one
    created_at: str | None
    last_used_at: str | None
    revoked_at: str | None


class NewTokenView(TokenView, kw_only=True):
    token: str  # shown once: only its hash is kept


class InviteView(msgspec.Struct):
    id: str
    email: str
    role: str
    expires_at: str | None
    #: The page that redeems it; the token rides in the fragment, which browsers never
    #: send to a server, so no access log holds it. Shown once.
    link: str


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def user_view(who: Identity) -> UserView:
    return UserView(who.id, who.email, who.name, who.role)


def account_view(user: User) -> AccountView:
    return AccountView(
        user.id, user.email, user.name, user.role, iso(user.created_at), iso(user.disabled_at)
    )


def token_view(row: ApiToken) -> TokenView:
    return TokenView(
        row.id, row.name, row.prefix, iso(row.created_at), iso(row.last_used_at),
        iso(row.revoked_at),
    )  # fmt: skip
