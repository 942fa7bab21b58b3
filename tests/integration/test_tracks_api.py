"""The music API: Last.fm and audio job requests, and the tracks endpoints.

Jobs here are only submitted (their fan-out is tested with real pylast against the stub
and end to end); tracks and their vectors are written straight to the database, so the
browse, similarity and export contracts are tested exactly.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from libs.common.audio.layout import FEATURE_VERSION
from libs.common.models import TR_PENDING, TR_VECTORIZED, Track, now
from tests.webapp import Conveyor, StartApp, detail

LASTFM = "/api/jobs/lastfm"
AUDIO = "/api/jobs/audio"
DIMS = 8


def unit(vector: list[float]) -> bytes:
    v = np.asarray(vector, dtype="<f4")
    return (v / np.linalg.norm(v)).astype("<f4").tobytes()


def add_tracks(app: Conveyor, rows: list[tuple[str, str, list[float] | None]]) -> list[int]:
    """Insert tracks (artist, title, vector or None for pending); return their ids."""
    with app.components.sessions() as session, session.begin():
        tracks = [
            Track(
                key=f"{artist}\u2014{title}",
                origin="lastfm",
                artist=artist,
                title=title,
                state=TR_VECTORIZED if vector else TR_PENDING,
                vector=unit(vector) if vector else None,
                vector_version=FEATURE_VERSION if vector else None,
                duration=30.0 if vector else None,
                summary={"tempo_bpm": 120.0, "key": "A"} if vector else {},
                created_at=now(),
                updated_at=now(),
            )
            for artist, title, vector in rows
        ]
        session.add_all(tracks)
        session.flush()
        return [t.id for t in tracks]


# --------------------------------------------------------------------------- job requests


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "username"),
        ({"username": "x"}, "username"),
        ({"username": "has space"}, "username"),
        ({"username": "rj", "source": "hated"}, "source"),
        ({"username": "rj", "limit": 0}, "limit"),
        ({"username": "rj", "limit": 1001}, "limit"),
        ({"username": "rj", "period": "1week"}, "period"),
        ({"username": "rj", "colour": "blue"}, "colour"),
    ],
)
def test_bad_lastfm_requests_are_400_naming_the_field(
    start_app: StartApp, body: dict[str, object], needle: str
) -> None:
    app = start_app(embedded=False, LASTFM_API_KEY="k")
    response = app.client.post(LASTFM, json=body)
    assert response.status_code == 400, response.text
    assert needle in response.text


def test_period_with_loved_tracks_is_422(start_app: StartApp) -> None:
    app = start_app(embedded=False, LASTFM_API_KEY="k")
    response = app.client.post(LASTFM, json={"username": "rj", "source": "loved", "period": "7day"})
    assert response.status_code == 422
    assert "period" in detail(response) and "'loved'" in detail(response)


def test_lastfm_without_an_api_key_is_503_naming_the_setting(start_app: StartApp) -> None:
    app = start_app(embedded=False)
    response = app.client.post(LASTFM, json={"username": "rj"})
    assert response.status_code == 503
    assert "LASTFM_API_KEY" in detail(response)


def test_a_lastfm_job_is_accepted_and_counted_in_tracks(start_app: StartApp) -> None:
    app = start_app(embedded=False, LASTFM_API_KEY="k")
    response = app.client.post(LASTFM, json={"username": "rj", "source": "top", "limit": 20})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/api/jobs/{job['id']}"
    assert (job["kind"], job["unit"], job["state"]) == ("lastfm", "tracks", "queued")
    assert job["description"] == "Last.fm top tracks of rj (20, overall)"


@pytest.mark.parametrize(
    ("prefix", "needle"),
    [
        ("http://example.com/music/", "file:///dir/ or s3://"),
        ("music/", "file:///dir/ or s3://"),
        ("s3://", "bucket"),
    ],
)
def test_bad_audio_prefixes_are_422(start_app: StartApp, prefix: str, needle: str) -> None:
    app = start_app(embedded=False)
    response = app.client.post(AUDIO, json={"prefix": prefix})
    assert response.status_code == 422, response.text
    assert needle in detail(response)


def test_file_prefixes_need_audio_roots_outside_the_embedded_default(
    start_app: StartApp, tmp_path: Path
) -> None:
    app = start_app(embedded=False, BROKER_URL="memory://")
    response = app.client.post(AUDIO, json={"prefix": tmp_path.as_uri() + "/"})
    assert response.status_code == 422
    assert "AUDIO_ROOTS" in detail(response)


def test_audio_roots_bound_the_prefixes(start_app: StartApp, tmp_path: Path) -> None:
    allowed = tmp_path / "music"
    app = start_app(embedded=False, AUDIO_ROOTS=allowed.as_uri())
    outside = app.client.post(AUDIO, json={"prefix": (tmp_path / "other").as_uri()})
    assert outside.status_code == 422 and "outside AUDIO_ROOTS" in detail(outside)
    escape = app.client.post(AUDIO, json={"prefix": allowed.as_uri() + "/../other/"})
    assert escape.status_code == 422, "a '..' must not climb out of a root"
    inside = app.client.post(AUDIO, json={"prefix": (allowed / "jazz").as_uri()})
    assert inside.status_code == 202, inside.text
    assert inside.json()["description"] == f"audio files under {(allowed / 'jazz').as_uri()}/"


# --------------------------------------------------------------------------- tracks


def test_tracks_are_paged_and_searchable(start_app: StartApp) -> None:
    app = start_app(embedded=False)
    add_tracks(app, [("Nina Simone", "Feeling Good", [1.0] * DIMS),
                     ("Nina Simone", "Sinnerman", None),
                     ("Miles Davis", "So What", [0.5] * DIMS),
                     ("100%_Pure", "50% off", None)])  # fmt: skip
    everything = app.client.get("/api/tracks", params={"limit": 2}).json()
    assert everything["total"] == 4 and len(everything["items"]) == 2
    assert [t["artist"] for t in everything["items"]] == ["100%_Pure", "Miles Davis"]
    nina = app.client.get("/api/tracks", params={"q": "nina"}).json()
    assert sorted(t["title"] for t in nina["items"]) == ["Feeling Good", "Sinnerman"]
    by_title = app.client.get("/api/tracks", params={"title": "WHAT"}).json()
    assert [t["title"] for t in by_title["items"]] == ["So What"]
    literal = app.client.get("/api/tracks", params={"q": "0%"}).json()
    assert [t["title"] for t in literal["items"]] == ["50% off"], "% is a literal, not a wildcard"
    assert app.client.get("/api/tracks", params={"q": "_"}).json()["total"] == 1


def test_a_track_has_its_summary_and_404_when_unknown(start_app: StartApp) -> None:
    app = start_app(embedded=False)
    (track_id,) = add_tracks(app, [("A", "B", [1.0] * DIMS)])
    track = app.client.get(f"/api/tracks/{track_id}").json()
    assert track["summary"] == {"tempo_bpm": 120.0, "key": "A"}
    assert track["state"] == "vectorized" and track["vector_version"] == FEATURE_VERSION
    missing = app.client.get("/api/tracks/999999")
    assert missing.status_code == 404 and "999999" in detail(missing)
    assert app.client.get("/api/tracks/abc").status_code in (400, 404)


def test_similar_ranks_by_cosine_and_excludes_the_track(start_app: StartApp) -> None:
    app = start_app(embedded=False)
    base = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    ids = add_tracks(app, [
        ("q", "query", base),
        ("n", "near", [1.0, 0.1, 0, 0, 0, 0, 0, 0]),
        ("m", "middle", [1.0, 1.0, 0, 0, 0, 0, 0, 0]),
        ("f", "far", [0, 0, 1.0, 0, 0, 0, 0, 0]),
        ("p", "pending", None),
    ])  # fmt: skip
    page = app.client.get(f"/api/tracks/{ids[0]}/similar", params={"k": 10}).json()
    assert [i["title"] for i in page["items"]] == ["near", "middle", "far"]
    scores = [i["score"] for i in page["items"]]
    assert scores[0] == pytest.approx(1 / np.sqrt(1.01), abs=1e-5)
    assert scores[2] == pytest.approx(0.0, abs=1e-6)
    assert set(page["items"][0]) >= {"id", "title", "artist", "score"}
    top1 = app.client.get(f"/api/tracks/{ids[0]}/similar", params={"k": 1}).json()
    assert [i["title"] for i in top1["items"]] == ["near"]
    # A track vectorized after the first search is found by the next one.
    (closer,) = add_tracks(app, [("c", "closest", [1.0, 0.01, 0, 0, 0, 0, 0, 0])])
    again = app.client.get(f"/api/tracks/{ids[0]}/similar", params={"k": 1}).json()
    assert [i["id"] for i in again["items"]] == [closer]


def test_similar_of_a_track_without_a_vector_is_409(start_app: StartApp) -> None:
    app = start_app(embedded=False)
    (pending,) = add_tracks(app, [("p", "pending", None)])
    response = app.client.get(f"/api/tracks/{pending}/similar")
    assert response.status_code == 409 and "pending" in detail(response)
    assert app.client.get(f"/api/tracks/{pending}/similar", params={"k": 0}).status_code == 400


def test_export_as_csv_and_npy_holds_every_current_vector(start_app: StartApp) -> None:
    app = start_app(embedded=False)
    vectors = [[float(i + j) for j in range(DIMS)] for i in range(1, 6)]
    ids = add_tracks(app, [(f"a{i}", f"t{i}", v) for i, v in enumerate(vectors)])
    add_tracks(app, [("p", "pending", None)])
    rows = list(csv.reader(io.StringIO(app.client.get("/api/tracks/export").text)))
    assert rows[0] == ["id", "artist", "title", *(f"v{i}" for i in range(DIMS))]
    assert [int(r[0]) for r in rows[1:]] == ids
    first = np.array([float(x) for x in rows[1][3:]], dtype="<f4")
    assert np.array_equal(first, np.frombuffer(unit(vectors[0]), "<f4"))
    data = app.client.get("/api/tracks/export", params={"format": "npy"}).content
    array = np.load(io.BytesIO(data))
    assert list(array["id"]) == ids
    assert array["vector"].shape == (5, DIMS) and array["vector"].dtype == np.float32
    assert np.array_equal(array["vector"][4], np.frombuffer(unit(vectors[4]), "<f4"))
    assert app.client.get("/api/tracks/export", params={"format": "xls"}).status_code == 400


def test_export_with_no_vectors_is_an_empty_table(start_app: StartApp) -> None:
    app = start_app(embedded=False)
    assert app.client.get("/api/tracks/export").text == "id,artist,title\n"
    array = np.load(io.BytesIO(app.client.get("/api/tracks/export?format=npy").content))
    assert array.shape == (0,)
