"""Worker pairing, the pure parts: codes, tokens, their hashes, and the attempt throttle.

A pairing code is 8 characters from a 20-letter alphabet without vowels (no words, no
0/O or 1/I confusion), shown as ``XXXX-XXXX``: 20**8 (about 2.6e10) codes. Only hashes
are stored: SHA-256 of the normalised code (it lives 10 minutes and works once), and
HMAC-SHA256 of a worker token under ``WORKER_TOKEN_KEY``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable

ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
CODE_LENGTH = 8
CODE_TTL_SECONDS = 600.0
TOKEN_PREFIX = "cvw_"
WINDOW_SECONDS = 60.0


def new_code() -> str:
    """A random code, normalised (``BCDFGHJK``)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def display_code(code: str) -> str:
    """``BCDF-GHJK``: how people see and type it."""
    return f"{code[:4]}-{code[4:]}"


def normalise_code(raw: str) -> str:
    """What was typed (``bcdf-ghjk``, `` BCDF GHJK ``) as stored: no spaces or dashes, upper."""
    return re.sub(r"[\s\-]+", "", raw).upper()


def code_hash(code: str) -> str:
    return hashlib.sha256(normalise_code(code).encode()).hexdigest()


def new_pool() -> str:
    return f"remote-{secrets.token_hex(4)}"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(key: bytes, token: str) -> str:
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


#: Keys kept before idle ones are dropped, for a throttle without a global cap.
MAX_IDLE_KEYS = 10_000


class Throttle:
    """Sliding-window limits on attempts: ``per_key`` per key (a client address, an
    account), ``total`` for all keys together (None: no global cap).

    ``attempt(key)`` records the attempt and returns None when it is allowed, else the
    seconds until one would be (refused attempts are not recorded, so hammering does not
    extend the wait). Memory: at most ``per_key`` timestamps per key seen within the
    window; keys idle for a window are dropped.
    """

    def __init__(
        self,
        per_key: int,
        total: int | None,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_key, self.total, self.window, self.clock = per_key, total, window, clock
        self._max_keys = MAX_IDLE_KEYS if total is None else 4 * total
        self._keys: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._lock = threading.Lock()

    def attempt(self, key: str) -> int | None:
        with self._lock:
            at = self.clock()
            horizon = at - self.window
            _expire(self._all, horizon)
            if len(self._keys) > self._max_keys:  # forget keys idle for a window
                for k in [k for k, q in self._keys.items() if not q or q[-1] <= horizon]:
                    del self._keys[k]
            mine = self._keys.setdefault(key, deque())
            _expire(mine, horizon)
            for seen, cap in ((mine, self.per_key), (self._all, self.total)):
                if cap is not None and len(seen) >= cap:
                    return max(1, math.ceil(seen[0] + self.window - at))
            mine.append(at)
            if self.total is not None:
                self._all.append(at)
            return None


def _expire(seen: deque[float], horizon: float) -> None:
    while seen and seen[0] <= horizon:
        seen.popleft()
