"""Nearest tracks by cosine similarity: brute force over a matrix cached in memory.

Vectors are L2-normalised, so cosine similarity is a dot product, and one matrix-vector
product over every stored vector is exact and fast enough at the sizes we serve (100k
tracks x 72 float32 dimensions is 29 MB and about 2 ms; see ``bench.audio``).
An approximate index (HNSW, IVF) would pay off in the millions, at the cost of a
dependency and of recall; pgvector would tie us to PostgreSQL, and the embedded default
runs on SQLite.

The cache is brought up to date on each query by loading only the rows changed since the
last load (``updated_at``, less a margin for transactions that committed late), so a busy
worker fleet costs one small query per search. Should the count (checked every 30 s) differ from the
table's (clocks skewed beyond the margin), it loads everything again.
Only vectors of the current feature version are loaded: versions are never compared.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from libs.common.audio.layout import FEATURE_VERSION
from libs.common.models import TR_VECTORIZED, Track

DTYPE = np.dtype("<f4")
#: Rows updated this long before the newest one loaded are loaded again: a transaction
#: that stamped its rows earlier but committed later is not missed.
MARGIN_SECONDS = 120.0
#: The table's count (a scan: ~30 ms at 100k) is checked at most this often.
COUNT_EVERY_SECONDS = 30.0


class NoVector(LookupError):
    """The track exists but has no vector of the current version."""


class VectorIndex:
    def __init__(self, sessions: sessionmaker[Session], version: int = FEATURE_VERSION) -> None:
        self.sessions = sessions
        self.version = version
        self._lock = threading.Lock()
        self._ids = np.empty(0, dtype=np.int64)
        self._matrix = np.empty((0, 0), dtype=DTYPE)
        self._row: dict[int, int] = {}
        self._seen = -MARGIN_SECONDS  # the newest updated_at loaded
        self._counted = -math.inf  # monotonic clock of the last count check

    def refresh(self) -> int:
        """Load what changed since the last call; return the number of vectors held."""
        current = (Track.state == TR_VECTORIZED) & (Track.vector_version == self.version)
        with self._lock, self.sessions() as session:
            clock = time.monotonic()
            for since in (self._seen - MARGIN_SECONDS, None):
                if since is None:  # the counts disagree: start again
                    self._reset()
                query = select(Track.id, Track.vector, Track.updated_at).where(current)
                if since is not None:
                    query = query.where(Track.updated_at >= since)
                rows = session.execute(query.order_by(Track.updated_at)).all()
                self._merge([(r[0], r[1]) for r in rows if r[1] is not None])
                if rows:
                    self._seen = max(self._seen, rows[-1][2])
                if clock - self._counted < COUNT_EVERY_SECONDS:
                    break
                self._counted = clock
                total = session.scalar(select(func.count()).where(current)) or 0
                if total == len(self._ids):
                    break
            return len(self._ids)

    def _reset(self) -> None:
        self._ids = np.empty(0, dtype=np.int64)
        self._matrix = np.empty((0, 0), dtype=DTYPE)
        self._row = {}
        self._seen = -MARGIN_SECONDS

    def _merge(self, rows: Sequence[tuple[int, bytes]]) -> None:
        new = [(i, v) for i, v in rows if i not in self._row]
        for track_id, vector in rows:
            if track_id in self._row:  # vectorized again: overwrite in place
                self._matrix[self._row[track_id]] = np.frombuffer(vector, DTYPE)
        if not new:
            return
        block = np.stack([np.frombuffer(v, DTYPE) for _, v in new])
        self._matrix = block if self._matrix.size == 0 else np.vstack([self._matrix, block])
        start = len(self._ids)
        self._ids = np.concatenate([self._ids, np.array([i for i, _ in new], dtype=np.int64)])
        self._row.update((track_id, start + n) for n, (track_id, _) in enumerate(new))

    def nearest(self, track_id: int, k: int) -> list[tuple[int, float]]:
        """The ``k`` other tracks most similar to ``track_id``, best first, with scores."""
        self.refresh()
        with self._lock:
            row = self._row.get(track_id)
            if row is None:
                raise NoVector(track_id)
            return top_k(self._matrix, self._ids, self._matrix[row], k, exclude=row)


def top_k(
    matrix: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int, exclude: int | None = None
) -> list[tuple[int, float]]:
    scores = matrix @ query
    if exclude is not None:
        scores[exclude] = -np.inf
    k = min(k, len(scores) - (exclude is not None))
    if k <= 0:
        return []
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.lexsort((ids[best], -scores[best]))]  # ties: the lower id first
    return [(int(ids[i]), float(scores[i])) for i in best]
