"""Unit tests for the retry decision (libs/common/retry.py)."""

from __future__ import annotations

import random

import pytest

from libs.common.retry import (
    DeadLetter,
    PermanentError,
    Retry,
    RetryPolicy,
    TransientError,
    decide,
    describe,
)

POLICY = RetryPolicy(max_attempts=5, base_seconds=1.0, max_seconds=300.0)


def _unicode_error() -> UnicodeDecodeError:
    return UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")


class _PermanentSubclass(PermanentError):
    pass


class _TransientButPermission(TransientError, PermissionError):
    """Explicitly transient wins over a permanent base class."""


class _TransientButMissing(FileNotFoundError, TransientError):
    pass


PERMANENT_ERRORS = [
    PermanentError("bad input"),
    _PermanentSubclass("bad spec"),
    FileNotFoundError(2, "No such file", "uploads/x.csv"),
    IsADirectoryError("uploads"),
    PermissionError("denied"),
    _unicode_error(),
]


@pytest.mark.parametrize("error", PERMANENT_ERRORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("attempt", [1, 2, 4])
def test_permanent_errors_dead_letter_at_once(error: BaseException, attempt: int) -> None:
    decision = decide(attempt, error, POLICY, random.Random(0))
    assert isinstance(decision, DeadLetter)
    assert decision.cause.startswith("permanent error: ")
    assert type(error).__name__ in decision.cause


TRANSIENT_ERRORS = [
    TransientError("429 too many requests"),
    ConnectionError("reset"),
    TimeoutError("slow"),
    OSError("disk hiccup"),
    RuntimeError("boom"),
    ValueError("odd"),
    _TransientButPermission("flaky mount"),
    _TransientButMissing("eventually consistent"),
]


@pytest.mark.parametrize("error", TRANSIENT_ERRORS, ids=lambda e: type(e).__name__)
def test_transient_errors_retry_on_first_attempt(error: BaseException) -> None:
    decision = decide(1, error, POLICY, random.Random(1))
    assert isinstance(decision, Retry)
    assert 0.5 <= decision.delay <= 1.0


@pytest.mark.parametrize(
    ("attempt", "policy", "ceiling"),
    [
        (1, RetryPolicy(5, 1.0, 300.0), 1.0),
        (2, RetryPolicy(5, 1.0, 300.0), 2.0),
        (3, RetryPolicy(5, 1.0, 300.0), 4.0),
        (4, RetryPolicy(5, 1.0, 300.0), 8.0),
        (1, RetryPolicy(10, 3.0, 300.0), 3.0),
        (5, RetryPolicy(10, 3.0, 300.0), 48.0),
        (9, RetryPolicy(10, 3.0, 300.0), 300.0),  # 3 * 256 capped
        (3, RetryPolicy(10, 10.0, 25.0), 25.0),  # 40 capped
        (4, RetryPolicy(10, 0.0, 300.0), 0.0),
    ],
)
def test_transient_delay_is_equal_jitter_under_the_ceiling(
    attempt: int, policy: RetryPolicy, ceiling: float
) -> None:
    rng = random.Random(attempt)
    delays = []
    for _ in range(200):
        decision = decide(attempt, TransientError("later"), policy, rng)
        assert isinstance(decision, Retry)
        delays.append(decision.delay)
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    if ceiling:
        assert len(set(delays)) > 1  # jittered, not constant


def test_delay_extremes_of_the_jitter() -> None:
    class Fixed(random.Random):
        def __init__(self, fraction: float) -> None:
            super().__init__()
            self.fraction = fraction

        def uniform(self, a: float, b: float) -> float:
            return a + (b - a) * self.fraction

    low = decide(3, TransientError(), POLICY, Fixed(0.0))
    high = decide(3, TransientError(), POLICY, Fixed(1.0))
    assert low == Retry(delay=2.0)
    assert high == Retry(delay=4.0)


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "gives_up"),
    [(1, 5, False), (4, 5, False), (5, 5, True), (6, 5, True), (1, 1, True), (2, 3, False)],
)
def test_gives_up_at_max_attempts(attempt: int, max_attempts: int, gives_up: bool) -> None:
    policy = RetryPolicy(max_attempts=max_attempts)
    decision = decide(attempt, ConnectionError("broker gone"), policy, random.Random(0))
    if gives_up:
        assert decision == DeadLetter(
            f"gave up after {attempt} attempts: ConnectionError: broker gone"
        )
    else:
        assert isinstance(decision, Retry)


def test_permanent_beats_max_attempts_in_the_cause() -> None:
    decision = decide(9, PermanentError("corrupt"), RetryPolicy(max_attempts=3))
    assert decision == DeadLetter("permanent error: PermanentError: corrupt")


def test_seeded_rng_gives_reproducible_delays() -> None:
    def run(seed: int) -> list[float]:
        rng = random.Random(seed)
        out = []
        for attempt in range(1, 5):
            decision = decide(attempt, TransientError(), POLICY, rng)
            assert isinstance(decision, Retry)
            out.append(decision.delay)
        return out

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_without_rng_uses_module_random() -> None:
    decision = decide(2, TransientError(), POLICY)
    assert isinstance(decision, Retry)
    assert 1.0 <= decision.delay <= 2.0


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (ValueError("bad value"), "ValueError: bad value"),
        (TransientError(), "TransientError"),
        (KeyError("k"), "KeyError: 'k'"),
        (FileNotFoundError(2, "No such file", "a.csv"), "FileNotFoundError: [Errno 2] No such"),
    ],
)
def test_describe(error: BaseException, text: str) -> None:
    assert describe(error).startswith(text)


def test_gave_up_cause_for_an_error_without_message() -> None:
    decision = decide(5, TimeoutError(), POLICY)
    assert decision == DeadLetter("gave up after 5 attempts: TimeoutError")
