"""Accounts, the bookkeeping: users, their API tokens and invites, on a SQLAlchemy Session.

Each function works in the caller's transaction (``with sessions() as s, s.begin():``):
it validates with ``accounts``, changes rows, flushes, and logs; the caller commits. An
``AccountError`` leaves the transaction to be rolled back. ``at`` (default: now) is the
time to record, so tests need no clock.

No password or token is ever logged, nor an email typed at a refused login (people type
passwords there): log lines name accounts by id.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from libs.common import accounts
from libs.common.accounts import AccountError
from libs.common.models import ApiToken, Invite, User, new_id, now

log = logging.getLogger(__name__)

#: ``last_used_at`` moves at most this often, so a busy token is not a write per request.
LAST_USED_EVERY_SECONDS = 60.0

_DUPLICATE = "an account with this email address already exists"


# ------------------------------------------------------------------------------ users


def create_user(
    session: Session,
    email: str,
    name: str,
    password: str,
    role: str = accounts.MEMBER,
    *,
    at: float | None = None,
) -> User:
    """A new account; AccountError for an invalid email, role or name, a weak password or
    an email already taken (``kind`` DUPLICATE)."""
    email = accounts.normalise_email(email)
    accounts.check_role(role)
    name = accounts.normalise_name(name, email)
    accounts.check_password(password)
    return _add_user(session, email, name, accounts.hash_password(password), role, at)


def _add_user(
    session: Session, email: str, name: str, password_hash: str, role: str, at: float | None
) -> User:
    at = now() if at is None else at
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise AccountError(_DUPLICATE, accounts.DUPLICATE)
    user = User(
        id=new_id(), email=email, name=name, password_hash=password_hash, role=role,
        created_at=at, password_changed_at=at, session_epoch=0,
    )  # fmt: skip
    session.add(user)
    try:
        session.flush()
    except IntegrityError:  # made by another transaction since the check above
        raise AccountError(_DUPLICATE, accounts.DUPLICATE) from None
    log.info("user %s created (%s)", user.id, role, extra={"action": "user_created"})
    return user


def list_users(session: Session) -> Sequence[User]:
    return session.scalars(select(User).order_by(User.created_at, User.email)).all()


def authenticate(
    session: Session, email: str, password: str, *, at: float | None = None
) -> User | None:
    """The enabled user with this email and password, else None.

    An unknown (or malformed) email costs one Argon2 verification, as a wrong password
    does, so the time does not tell which it was. A hash made with older parameters is
    remade with today's on success.
    """
    try:
        user = session.scalar(select(User).where(User.email == accounts.normalise_email(email)))
    except AccountError:
        user = None
    if user is None:
        log.info("login refused: no such account", extra={"action": "login_refused"})
        accounts.verify_nothing(password)
        return None
    if not accounts.verify_password(user.password_hash, password):
        log.info("login refused for user %s", user.id, extra={"action": "login_refused"})
        return None
    if user.disabled_at is not None:
        log.info("login refused for user %s: disabled", user.id, extra={"action": "login_refused"})
        return None
    if accounts.needs_rehash(user.password_hash):
        user.password_hash = accounts.hash_password(password)
        session.flush()
        log.info("user %s: password rehashed", user.id, extra={"action": "password_rehashed"})
    return user


def set_password(session: Session, user: User, password: str, *, at: float | None = None) -> None:
    """A new password (AccountError if weak); it also ends the user's other sessions."""
    accounts.check_password(password)
    user.password_hash = accounts.hash_password(password)
    user.password_changed_at = now() if at is None else at
    bump_session_epoch(user)
    session.flush()
    log.info("user %s: password changed", user.id, extra={"action": "password_changed"})


def bump_session_epoch(user: User) -> None:
    """Log out everywhere: sessions made under the previous epoch stop matching.

    The increment runs in SQL, so two at once both count; the new value is loaded when
    ``user.session_epoch`` is next read (after the session flushes).
    """
    user.session_epoch = User.session_epoch + 1


def disable_user(session: Session, user: User, *, at: float | None = None) -> None:
    """Refuse the user's logins and API tokens from now on, and end their sessions."""
    if user.disabled_at is None:
        user.disabled_at = now() if at is None else at
        bump_session_epoch(user)
        session.flush()
        log.info("user %s disabled", user.id, extra={"action": "user_disabled"})


# -------------------------------------------------------------------------- API tokens


def create_api_token(
    session: Session, user: User, name: str, *, at: float | None = None
) -> tuple[ApiToken, str]:
    """A new token of ``user``'s: the row, and the token itself (to be shown once, now)."""
    name = " ".join(name.split())
    if not name:
        raise AccountError("a token needs a name (what will use it?)")
    if len(name) > accounts.NAME_MAX:
        raise AccountError(f"the token's name is too long: at most {accounts.NAME_MAX} characters")
    if user.disabled_at is not None:
        raise AccountError("this account is disabled", accounts.DISABLED)
    token = accounts.new_api_token()
    row = ApiToken(
        id=new_id(), user_id=user.id, name=name, prefix=accounts.token_prefix(token),
        token_hash=accounts.token_hash(token), created_at=now() if at is None else at,
    )  # fmt: skip
    session.add(row)
    session.flush()
    log.info(
        "user %s: API token %s (%s) created", user.id, row.id, row.prefix,
        extra={"action": "api_token_created"},
    )  # fmt: skip
    return row, token


def api_tokens(session: Session, user: User) -> Sequence[ApiToken]:
    """The user's tokens, revoked ones too, newest first."""
    query = select(ApiToken).where(ApiToken.user_id == user.id)
    return session.scalars(query.order_by(ApiToken.created_at.desc())).all()


def user_for_api_token(session: Session, token: str, *, at: float | None = None) -> User | None:
    """The owner of ``token`` if the token is live and the owner enabled, else None."""
    if not token.startswith(accounts.API_TOKEN_PREFIX):
        return None
    found = session.execute(
        select(ApiToken, User)
        .join(User, ApiToken.user_id == User.id)
        .where(ApiToken.token_hash == accounts.token_hash(token))
    ).first()
    if found is None:
        return None
    row, user = found
    if row.revoked_at is not None or user.disabled_at is not None:
        return None
    at = now() if at is None else at
    if row.last_used_at is None or at - row.last_used_at >= LAST_USED_EVERY_SECONDS:
        row.last_used_at = at
        session.flush()
    return user


def revoke_api_token(
    session: Session, user: User, token_id: str, *, at: float | None = None
) -> bool:
    """Revoke one of ``user``'s own tokens (once: a second revoke keeps the first time).

    False if ``user`` has no such token: another user's token is not theirs to revoke.
    """
    row = session.scalar(
        select(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user.id)
    )
    if row is None:
        return False
    if row.revoked_at is None:
        row.revoked_at = now() if at is None else at
        session.flush()
        log.info(
            "user %s: API token %s revoked", user.id, row.id, extra={"action": "api_token_revoked"}
        )
    return True


# ------------------------------------------------------------------------------ invites


def create_invite(
    session: Session, email: str, role: str, by: User | None, *, at: float | None = None
) -> tuple[Invite, str]:
    """An invitation for ``email`` to make an account with ``role``, valid for
    ``accounts.INVITE_TTL_SECONDS``: the row, and the token for the link (shown once)."""
    email = accounts.normalise_email(email)
    accounts.check_role(role)
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise AccountError(_DUPLICATE, accounts.DUPLICATE)
    at = now() if at is None else at
    token = accounts.new_invite_token()
    row = Invite(
        id=new_id(), email=email, role=role, token_hash=accounts.token_hash(token),
        created_by=None if by is None else by.id, created_at=at,
        expires_at=at + accounts.INVITE_TTL_SECONDS,
    )  # fmt: skip
    session.add(row)
    session.flush()
    log.info(
        "invite %s (%s) created by %s", row.id, role, row.created_by or "the operator",
        extra={"action": "invite_created"},
    )  # fmt: skip
    return row, token


def redeem_invite(
    session: Session, token: str, name: str, password: str, *, at: float | None = None
) -> User:
    """The account an invitation makes. AccountError (INVITE_UNKNOWN, INVITE_USED,
    INVITE_EXPIRED, or for the name and password) otherwise; an invitation works once,
    even for two redemptions at the same moment."""
    at = now() if at is None else at
    invite = session.scalar(select(Invite).where(Invite.token_hash == accounts.token_hash(token)))
    if invite is None:
        raise AccountError("this invitation is not valid", accounts.INVITE_UNKNOWN)
    if invite.used_at is not None:
        raise AccountError("this invitation was already used", accounts.INVITE_USED)
    if invite.expires_at <= at:
        raise AccountError(
            "this invitation has expired: ask for a new one", accounts.INVITE_EXPIRED
        )
    name = accounts.normalise_name(name, invite.email)
    accounts.check_password(password)  # before the claim: a weak password keeps the invite
    password_hash = accounts.hash_password(password)  # before it too: hold write locks briefly
    _claim_invite(session, invite, at)
    user = _add_user(session, invite.email, name, password_hash, invite.role, at)
    log.info("invite %s redeemed by user %s", invite.id, user.id, extra={"action": "invite_used"})
    return user


def _claim_invite(session: Session, invite: Invite, at: float) -> None:
    """Mark ``invite`` used, unless another transaction did first (the conditional UPDATE
    waits for it: exactly one of two racing redemptions wins)."""
    claimed = session.execute(
        update(Invite).where(Invite.id == invite.id, Invite.used_at.is_(None)).values(used_at=at)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        raise AccountError("this invitation was already used", accounts.INVITE_USED)
