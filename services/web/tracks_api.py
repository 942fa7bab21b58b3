"""The tracks API: browse vectorized tracks, find similar ones, export every vector."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Annotated, Literal

import numpy as np
from litestar import Controller, get
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import FromPath, FromQuery, Parameter
from litestar.response import Stream
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from libs.common.audio.layout import FEATURE_VERSION
from libs.common.models import TR_VECTORIZED, Track
from libs.common.runtime import Components
from libs.common.similarity import DTYPE, NoVector, VectorIndex
from services.web import schemas
from services.web.auth import require_user

Limit = Annotated[int, Parameter(ge=1, le=1000)]
Offset = Annotated[int, Parameter(ge=0)]
K = Annotated[int, Parameter(ge=1, le=100)]
Search = Annotated[str | None, Parameter(max_length=200)]
EXPORT_BATCH = 2000


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _track(c: Components, track_id: int) -> Track:
    with c.sessions() as session:
        track = session.get(Track, track_id)
    if track is None:
        raise NotFoundException(detail=f"no track with id {track_id}")
    return track


class TracksController(Controller):
    """The track library (public songs' vectors) is shared by every logged-in user."""

    path = "/api/tracks"
    guards = [require_user]

    @get("/", sync_to_thread=True)
    def list_tracks(
        self, state: State, q: Search = None, artist: Search = None, title: Search = None,
        limit: Limit = 50, offset: Offset = 0,
    ) -> schemas.TrackPage:  # fmt: skip
        """Tracks by artist and title; `q` matches either (case-insensitive substring)."""
        c: Components = state.components
        query = select(Track)
        if q:
            query = query.where(
                or_(Track.artist.ilike(_like(q), "\\"), Track.title.ilike(_like(q), "\\"))
            )
        if artist:
            query = query.where(Track.artist.ilike(_like(artist), "\\"))
        if title:
            query = query.where(Track.title.ilike(_like(title), "\\"))
        with c.sessions() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(
                query.order_by(Track.artist, Track.title, Track.id).limit(limit).offset(offset)
            ).all()
        return schemas.TrackPage([schemas.track_view(t) for t in rows], total, limit, offset)

    @get("/{track_id:int}", sync_to_thread=True)
    def get_track(self, state: State, track_id: FromPath[int]) -> schemas.TrackView:
        """A track, its state and its feature summary."""
        return schemas.track_view(_track(state.components, track_id))

    @get("/{track_id:int}/similar", sync_to_thread=True)
    def similar(self, state: State, track_id: FromPath[int], k: K = 10) -> schemas.SimilarPage:
        """The `k` tracks that sound most like this one, by cosine similarity of vectors."""
        c: Components = state.components
        track = _track(c, track_id)
        index: VectorIndex = state.vectors
        try:
            nearest = index.nearest(track_id, k)
        except NoVector:
            raise HTTPException(
                status_code=409,
                detail=f"track {track_id} has no vector of version {FEATURE_VERSION} "
                f"(it is {track.state})",
            ) from None
        with c.sessions() as session:
            found = {t.id: t for t in session.scalars(
                select(Track).where(Track.id.in_([i for i, _ in nearest]))
            )}  # fmt: skip
        items = [
            schemas.SimilarTrack(
                id=i,
                title=found[i].title,
                artist=found[i].artist,
                score=round(score, 6),
                origin=found[i].origin,
                duration_seconds=found[i].duration,
            )
            for i, score in nearest
            if i in found
        ]
        return schemas.SimilarPage(schemas.track_view(track), k, items)

    @get("/export", sync_to_thread=True)
    def export(self, state: State, format: FromQuery[Literal["csv", "npy"]] = "csv") -> Stream:
        """Every vector of the current version: CSV (id, artist, title, v0..), or a .npy
        structured array with fields `id` (int64) and `vector` (float32[dims])."""
        c: Components = state.components
        if format == "csv":
            return Stream(
                _csv(c.sessions), media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": 'attachment; filename="vectors.csv"'},
            )  # fmt: skip
        return Stream(
            _npy(c.sessions), media_type="application/octet-stream",
            headers={"Content-Disposition": 'attachment; filename="vectors.npy"'},
        )  # fmt: skip


def _vectors(sessions: sessionmaker[Session]) -> Iterator[tuple[int, str, str, np.ndarray]]:
    """(id, artist, title, vector) in id order, a batch of rows per query."""
    last = -1
    while True:
        with sessions() as session:
            rows = session.execute(
                select(Track.id, Track.artist, Track.title, Track.vector)
                .where(Track.state == TR_VECTORIZED, Track.vector_version == FEATURE_VERSION)
                .where(Track.id > last)
                .order_by(Track.id)
                .limit(EXPORT_BATCH)
            ).all()
        if not rows:
            return
        for track_id, artist, title, vector in rows:
            if vector is not None:
                yield track_id, artist, title, np.frombuffer(vector, DTYPE)
        last = rows[-1][0]


def _csv(sessions: sessionmaker[Session]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header_written = False
    for track_id, artist, title, vector in _vectors(sessions):
        if not header_written:
            writer.writerow(["id", "artist", "title", *(f"v{i}" for i in range(len(vector)))])
            header_written = True
        writer.writerow([track_id, artist, title, *(repr(float(x)) for x in vector)])
        if buffer.tell() > 1 << 16:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    if not header_written:
        writer.writerow(["id", "artist", "title"])
    yield buffer.getvalue().encode()


def _npy(sessions: sessionmaker[Session]) -> Iterator[bytes]:
    """A .npy needs its row count up front: count first, then stream the records."""
    with sessions() as session:
        count = session.scalar(
            select(func.count()).where(
                Track.state == TR_VECTORIZED, Track.vector_version == FEATURE_VERSION
            )
        ) or 0  # fmt: skip
        first = session.scalar(
            select(Track.vector).where(
                Track.state == TR_VECTORIZED, Track.vector_version == FEATURE_VERSION
            ).limit(1)
        )  # fmt: skip
    dims = len(first) // DTYPE.itemsize if first else 0
    dtype = np.dtype([("id", "<i8"), ("vector", DTYPE, (dims,))])
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": (count,)},
    )  # fmt: skip
    yield header.getvalue()
    sent = 0
    for track_id, _, _, vector in _vectors(sessions):
        if sent == count:  # rows that arrived after the count wait for the next export
            break
        record = np.zeros(1, dtype)
        record["id"], record["vector"] = track_id, vector
        yield record.tobytes()
        sent += 1
    if sent < count:  # rows removed meanwhile: pad, so the file stays loadable
        yield np.zeros(count - sent, dtype).tobytes()
