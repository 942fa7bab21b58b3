"""Accounts, the pure parts: password hashing, the email and password rules, roles, tokens.

Passwords are hashed with Argon2id (``argon2.PasswordHasher()``, its recommended
parameters). When those parameters change, ``needs_rehash`` says so and a successful login
rehashes (``users.authenticate``).

API and invite tokens are 32 random bytes (256 bits) from ``secrets``, stored as their
SHA-256. A slow hash protects guessable secrets such as passwords; nobody can guess a
256-bit random token, so one fast hash is enough and keeps the per-request lookup cheap.
Unlike a worker token (``pairing.token_hash``) it needs no server key: a leaked database
gives no usable token.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ADMIN, MEMBER = "admin", "member"
ROLES = frozenset({ADMIN, MEMBER})

EMAIL_MAX = 254
NAME_MAX = 128
PASSWORD_MIN, PASSWORD_MAX = 12, 1024

API_TOKEN_PREFIX = "cvu_"
INVITE_TOKEN_PREFIX = "cvi_"
PREFIX_SHOWN = 8  # "cvu_" and 4 random characters
INVITE_TTL_SECONDS = 7 * 24 * 3600.0

_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+")
_hasher = PasswordHasher()


# AccountError kinds: what went wrong, for a caller to choose its answer (an HTTP status).
INVALID = "invalid"  # a malformed email, a weak password, an unknown role, a long name
DUPLICATE = "duplicate"  # an account with this email exists
DISABLED = "disabled"  # the account is disabled
INVITE_UNKNOWN, INVITE_USED, INVITE_EXPIRED = "invite_unknown", "invite_used", "invite_expired"


class AccountError(ValueError):
    """An account request that cannot be done: ``str()`` is a reason fit for the user (it
    never quotes a password or token), ``kind`` one of the kinds above."""

    def __init__(self, reason: str, kind: str = INVALID) -> None:
        super().__init__(reason)
        self.kind = kind


# ------------------------------------------------------------------------------ passwords


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches ``stored``; False (never an error) for a malformed hash."""
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):  # mismatch, or a hash we cannot read
        return False


def needs_rehash(stored: str) -> bool:
    """Whether ``stored`` was made with other parameters than today's (or is unreadable)."""
    try:
        return _hasher.check_needs_rehash(stored)
    except InvalidHashError:
        return True


@functools.cache
def dummy_hash() -> str:
    """A hash of a random password, made once per process with today's parameters."""
    return _hasher.hash(secrets.token_urlsafe(32))


def verify_nothing(password: str) -> bool:
    """The work of ``verify_password``, for an unknown email: always False, in the same time."""
    verify_password(dummy_hash(), password)
    return False


def check_password(password: str) -> None:
    """Raise AccountError unless ``password`` meets the policy (length only, as NIST advises)."""
    if len(password) < PASSWORD_MIN:
        raise AccountError(f"the password is too short: at least {PASSWORD_MIN} characters")
    if len(password) > PASSWORD_MAX:
        raise AccountError(f"the password is too long: at most {PASSWORD_MAX} characters")


# -------------------------------------------------------------------------- who people are


def normalise_email(raw: str) -> str:
    """``raw`` as stored (stripped, lower case), or AccountError if it is no plausible address."""
    email = raw.strip().lower()
    if not email:
        raise AccountError("an email address is needed")
    if len(email) > EMAIL_MAX:
        raise AccountError(f"the email address is too long: at most {EMAIL_MAX} characters")
    if not _EMAIL.fullmatch(email) or not email.isprintable():
        # Not quoted: people type passwords into email fields, and reasons may be logged.
        raise AccountError("this is not an email address (expected name@example.com)")
    return email


def normalise_name(raw: str, email: str) -> str:
    """A display name: ``raw`` stripped, or the email's local part when empty."""
    name = " ".join(raw.split()) or email.split("@", 1)[0]
    if len(name) > NAME_MAX:
        raise AccountError(f"the name is too long: at most {NAME_MAX} characters")
    return name


def check_role(role: str) -> None:
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r} (use {ADMIN} or {MEMBER})")


# --------------------------------------------------------------------------------- tokens


def new_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_invite_token() -> str:
    return INVITE_TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What is stored of an API or invite token: its SHA-256, in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_prefix(token: str) -> str:
    """How a token is shown after it was made (``cvu_AbCd``): not enough to use it."""
    return token[:PREFIX_SHOWN]
