"""The retry decision: a pure function of the attempt, the error and the policy."""

from __future__ import annotations

import random
from dataclasses import dataclass


class TransientError(Exception):
    """Worth trying again later: network, rate limit (429), timeouts, 5xx."""


class PermanentError(Exception):
    """Trying again cannot help: the input is missing or malformed as a whole."""


#: Errors that are never retried, whatever their attempt (dramatiq's ``throws``).
PERMANENT: tuple[type[BaseException], ...] = (
    PermanentError,
    FileNotFoundError,
    IsADirectoryError,
    PermissionError,
    UnicodeDecodeError,
)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_seconds: float = 1.0
    max_seconds: float = 300.0


@dataclass(frozen=True)
class Retry:
    delay: float


@dataclass(frozen=True)
class DeadLetter:
    cause: str


def describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if str(error) else text


def decide(
    attempt: int, error: BaseException, policy: RetryPolicy, rng: random.Random | None = None
) -> Retry | DeadLetter:
    """``attempt`` is the one that just failed (1 = first try).

    Permanent errors dead-letter at once. Others back off exponentially with "equal
    jitter" (half fixed, half random) and dead-letter after ``policy.max_attempts``.
    """
    if isinstance(error, PERMANENT) and not isinstance(error, TransientError):
        return DeadLetter(f"permanent error: {describe(error)}")
    if attempt >= policy.max_attempts:
        return DeadLetter(f"gave up after {attempt} attempts: {describe(error)}")
    ceiling = min(policy.max_seconds, policy.base_seconds * 2 ** (attempt - 1))
    jitter = (rng or random).uniform(0, ceiling / 2)
    return Retry(delay=ceiling / 2 + jitter)
