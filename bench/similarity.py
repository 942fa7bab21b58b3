"""Similarity search at 100k tracks: ``top_k`` on a matrix, ``VectorIndex`` on PostgreSQL.

Run by ``python -m bench.audio`` (``--only similarity``). ``--vectors`` random unit float32
vectors of ``DIMS`` dimensions (seeded). In memory: ``top_k(matrix, ids, query, 10,
exclude=row)`` with a stored row as the query, the median of ``--queries`` queries,
against the baseline of a full ``np.argsort`` of the same scores (each answer checked
against the baseline's). From PostgreSQL: the vectors inserted as ``tracks`` rows of the
current feature version into a fresh database (``db.upgrade``), stamped one per second up
to now (a library that grew over a day, so the 120 s margin holds ~120 rows), then
``VectorIndex.refresh()``: the first (a full load) and one with nothing new, and
``nearest()`` end to end (its refresh, then ``top_k``). Last, with every row stamped now
(just after a big job), a new index's full load and a refresh with nothing new: the
margin then holds every row.
"""

from __future__ import annotations

import statistics
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from sqlalchemy import Engine, insert, text, update
from sqlalchemy.orm import Session, sessionmaker
from threadpoolctl import threadpool_info

from bench.audio_run import Others, contention
from bench.report import cols, table
from bench.run import create_database
from bench.services import BenchError, say
from libs.common import db, similarity
from libs.common.audio.layout import FEATURE_VERSION
from libs.common.models import TR_VECTORIZED, Track
from tests.servers import PostgresServer

DIMS, K, SEED, BATCH = 72, 10, 20240601, 5000
HEADERS = cols("operation|vectors|runs|median ms|min ms|max ms|vs baseline")


@dataclass
class Row:
    operation: str
    vectors: int
    times: list[float]  # seconds
    baseline: float | None = None  # the median of the row it is compared with

    def cells(self) -> list[str]:
        med = statistics.median(self.times)
        ratio = "-" if self.baseline is None else f"{med / self.baseline:.3f}"
        ms = [f"{1000 * t:,.2f}" for t in (med, min(self.times), max(self.times))]
        return [self.operation, f"{self.vectors:,}", str(len(self.times)), *ms, ratio]


def unit_vectors(count: int, seed: int = SEED) -> np.ndarray:
    matrix = np.random.default_rng(seed).standard_normal((count, DIMS)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _argsort_top(matrix: np.ndarray, ids: np.ndarray, row: int) -> list[tuple[int, float]]:
    scores = matrix @ matrix[row]
    scores[row] = -np.inf
    order = np.argsort(-scores, kind="stable")[:K]  # ties: the lower row (= id) first
    return [(int(ids[i]), float(scores[i])) for i in order]


def in_memory(matrix: np.ndarray, ids: np.ndarray, queries: int) -> list[Row]:
    rows = np.random.default_rng(SEED + 1).integers(0, len(ids), queries)
    for row in rows[:5]:  # warm-up
        similarity.top_k(matrix, ids, matrix[row], K, exclude=int(row))
    base, fast, scores = [], [], []
    for row in map(int, rows):
        query = matrix[row]
        base.append(_timed(partial(_argsort_top, matrix, ids, row)))
        fast.append(_timed(partial(similarity.top_k, matrix, ids, query, K, exclude=row)))
        scores.append(_timed(partial(np.matmul, matrix, query)))
        got = similarity.top_k(matrix, ids, matrix[row], K, exclude=row)
        if got != _argsort_top(matrix, ids, row):
            raise BenchError(f"top_k differs from the full sort for row {row}")
    median = statistics.median(base)
    return [
        Row("scores only (matrix @ q)", len(ids), scores, median),
        Row("top_k, k=10 (argpartition)", len(ids), fast, median),
        Row("baseline: full argsort", len(ids), base, median),
    ]


def from_database(pg: PostgresServer, matrix: np.ndarray, ids: np.ndarray) -> list[Row]:
    engine = db.make_engine(create_database(pg.url, "bench_similarity"))
    try:
        db.upgrade(engine)
        sessions = db.sessions(engine)
        newest = time.time()
        started = time.perf_counter()
        with engine.begin() as conn:
            for start in range(0, len(ids), BATCH):
                batch = range(start, min(start + BATCH, len(ids)))
                conn.execute(insert(Track), [_track(ids, matrix, i, newest) for i in batch])
        say(f"  inserted {len(ids):,} tracks in {time.perf_counter() - started:.1f}s")
        _vacuum(engine)
        out = _index_rows(sessions, matrix, ids, "stamped 1/s")
        with engine.begin() as conn:
            conn.execute(update(Track).values(updated_at=time.time()))
        _vacuum(engine)
        return out + _index_rows(sessions, matrix, ids, "all stamped now", nearest=0)
    finally:
        engine.dispose()


def _vacuum(engine: Engine) -> None:
    """What autovacuum would do soon: fresh statistics, no dead rows."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE tracks"))


def _track(ids: np.ndarray, matrix: np.ndarray, i: int, newest: float) -> dict[str, object]:
    return {
        "id": int(ids[i]), "key": f"bench:{ids[i]}", "origin": "file", "artist": "",
        "title": f"track {ids[i]}", "state": TR_VECTORIZED, "vector_version": FEATURE_VERSION,
        "vector": matrix[i].astype("<f4").tobytes(), "summary": {},
        "created_at": newest - (len(ids) - i), "updated_at": newest - (len(ids) - i),
    }  # fmt: skip


def _index_rows(sessions: sessionmaker[Session], matrix: np.ndarray, ids: np.ndarray,
                label: str, nearest: int = 50) -> list[Row]:  # fmt: skip
    index = similarity.VectorIndex(sessions)
    full = _timed(index.refresh)
    held = index.refresh()
    if held != len(ids):
        raise BenchError(f"the index holds {held} vectors, expected {len(ids)}")
    again = [_timed(index.refresh) for _ in range(5)]
    rows = [Row(f"refresh(), first: full load ({label})", held, [full]),
            Row(f"refresh(), nothing new ({label})", held, again)]  # fmt: skip
    if nearest:
        picks = np.random.default_rng(SEED + 2).integers(0, len(ids), nearest)
        times = []
        for row in map(int, picks):
            started = time.perf_counter()
            got = index.nearest(int(ids[row]), K)
            times.append(time.perf_counter() - started)
            want = similarity.top_k(matrix, ids, matrix[row], K, exclude=row)
            if [i for i, _ in got] != [i for i, _ in want] or not np.allclose(
                [s for _, s in got], [s for _, s in want], rtol=0, atol=1e-6
            ):
                raise BenchError(f"nearest({ids[row]}) differs from top_k on the matrix")
        rows.append(Row("nearest(), k=10, end to end", held, times))
    return rows


def measure(pg: PostgresServer, vectors: int, queries: int) -> tuple[list[Row], list[str]]:
    """The table's rows, and a NOTE per part during which other processes were busy."""
    matrix = unit_vectors(vectors)
    ids = np.arange(1, vectors + 1, dtype=np.int64)
    say(f"similarity: {queries} queries over {vectors:,} vectors in memory")
    started, others = time.perf_counter(), Others()
    rows = in_memory(matrix, ids, queries)
    notes = contention("the in-memory queries", others.seconds(), time.perf_counter() - started)
    say("similarity: VectorIndex on PostgreSQL")
    started, others = time.perf_counter(), Others(servers=[pg])
    rows += from_database(pg, matrix, ids)
    notes += contention("the database part", others.seconds(), time.perf_counter() - started)
    return rows, notes


def render(rows: list[Row], notes: list[str]) -> list[str]:
    pools = ", ".join(
        sorted({f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info()})
    )
    return [
        f"Similarity: {DIMS}-dim unit float32 vectors, k={K}; thread pools: {pools or 'none'}",
        *table(HEADERS, [r.cells() for r in rows]),
        *textwrap.wrap(
            "(vs baseline = median / the full argsort's median; refresh() and nearest() read"
            " PostgreSQL over TCP on this machine; stamped 1/s: updated_at one second apart up"
            " to now, so the 120 s margin holds 120 rows; all stamped now: every row updated"
            " at once, then VACUUM, so the margin holds them all)",
            width=100,
        ),
        *notes,
    ]
