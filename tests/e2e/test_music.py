"""The music workload end to end: a Last.fm job on RabbitMQ + PostgreSQL, no internet.

The real pylast (in the dispatcher process) pages through a Last.fm stub; the real yt-dlp
(in two worker processes) downloads generated audio from a local media server; librosa
makes the vectors; the web service answers for tracks and similarity.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import audiogen
from tests.e2e.harness import Services
from tests.servers import RabbitMQServer
from tests.stubs.lastfm import LastfmStub
from tests.stubs.media import MediaServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

USER = "listener"
#: (artist, title, file served for its search, or None: the search finds nothing)
SONGS: list[tuple[str, str, str | None]] = [
    ("Tone", "Concert A", "a440.wav"),
    ("Tone Copy", "Concert A Again", "a440.mp3"),  # the same clip, re-encoded
    ("Twin", "Same Bytes One", "chord.ogg"),
    ("Twin", "Same Bytes Two", "chord.ogg"),  # the very same file
    ("Static", "White Noise", "noise.wav"),
    ("Drummer", "Four On The Floor", "beats.mp3"),
    ("Band", "A Song", "song.ogg"),
    ("Nobody", "Missing Song", None),
    ("Broken", "Garbage", "garbage.mp3"),
]
#: Vectors of different sounds are at most this similar (features measure up to ~0.6).
FAR = 0.9


def make_audio(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    seconds = 12.0
    clips = {
        "a440.wav": audiogen.tone(440.0, seconds),
        "a440.mp3": audiogen.tone(440.0, seconds),
        "chord.ogg": audiogen.chord([261.63, 329.63, 392.0], seconds),
        "noise.wav": audiogen.noise(seconds, seed=3),
        "beats.mp3": audiogen.beats(120.0, seconds),
        "song.ogg": audiogen.song(seconds, seed=5),
    }
    files = {name: audiogen.write(folder / name, y) for name, y in clips.items()}
    files["garbage.mp3"] = audiogen.corrupt(folder / "garbage.mp3")
    return files


@pytest.fixture
def music(
    tmp_path: Path, rabbitmq: RabbitMQServer, pg_url: str
) -> Iterator[tuple[Services, LastfmStub, MediaServer]]:
    files = make_audio(tmp_path / "audio")
    songs = [(artist, title) for artist, title, _ in SONGS]
    with LastfmStub(users={USER: {"top": songs}}) as lastfm, MediaServer() as media:
        for artist, title, name in SONGS:
            if name is not None:
                media.add(f"{artist} {title}", files[name])
        svc = Services.configure(
            tmp_path, BROKER_URL=rabbitmq.url, DATABASE_URL=pg_url,
            LASTFM_API_KEY=lastfm.api_key, LASTFM_API_URL=lastfm.url,
            AUDIO_SEARCH_PREFIX=media.search_prefix, TRACKS_PER_TASK="3",
            WORK_DIR=str(tmp_path / "work"),
        )  # fmt: skip
        try:
            yield svc, lastfm, media
        finally:
            svc.stop_all()


def submit(svc: Services, body: dict[str, Any]) -> str:
    response = svc.client.post("/api/jobs/lastfm", json=body, timeout=30)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def tracks(svc: Services) -> dict[str, dict[str, Any]]:
    page = svc.client.get("/api/tracks", params={"limit": 100}, timeout=30).json()
    return {t["title"]: t for t in page["items"]}


def vectors(svc: Services) -> dict[int, np.ndarray]:
    data = svc.client.get("/api/tracks/export", params={"format": "npy"}, timeout=30)
    assert data.status_code == 200, data.text
    array = np.load(io.BytesIO(data.content))
    return {int(r["id"]): r["vector"] for r in array}


def test_a_lastfm_job_vectorizes_every_track_or_says_why(
    music: tuple[Services, LastfmStub, MediaServer], tmp_path: Path
) -> None:
    svc, lastfm, media = music
    svc.start_pipeline(workers=2)
    job_id = submit(svc, {"username": USER, "source": "top", "limit": 50})
    job = svc.wait_state(job_id, {"completed", "failed"}, timeout=300)
    assert job["state"] == "completed", (job, svc.logs())
    assert job["unit"] == "tracks" and job["skipped"] == 0
    assert job["progress"]["rows"] == {"total": 9, "done": 7, "failed": 2, "filtered": 0}
    assert job["progress"]["tasks"] == {"total": 3, "done": 3, "failed": 0}
    (call,) = lastfm.calls("user.getTopTracks")
    assert call.params["limit"] == "50" and call.params["user"] == USER

    # Every track has a vector or a reason, on the track and in the job's errors.
    found = tracks(svc)
    assert set(found) == {title for _, title, _ in SONGS}
    for track in found.values():
        assert (track["state"] == "vectorized") != bool(track["error"]), track
    assert "not found" in found["Missing Song"]["error"]
    assert found["Garbage"]["state"] == "unavailable" and found["Garbage"]["error"]
    errors = svc.client.get(f"/api/jobs/{job_id}/errors", timeout=30).json()
    assert sorted(e["row"] for e in errors["items"]) == [8, 9]
    assert all(e["column"] == "track" for e in errors["items"])
    assert found["Concert A"]["summary"]["key"] == "A"

    # Identical audio, identical vectors; different sounds, far apart.
    vec = vectors(svc)
    ids = {title: track["id"] for title, track in found.items()}
    assert np.array_equal(vec[ids["Same Bytes One"]], vec[ids["Same Bytes Two"]])
    different = ["Concert A", "Same Bytes One", "White Noise", "Four On The Floor", "A Song"]
    for i, a in enumerate(different):
        for b in different[i + 1 :]:
            score = float(vec[ids[a]] @ vec[ids[b]])
            assert score < FAR, f"{a} and {b} are too similar: {score:.3f}"

    # /similar ranks the re-encoded copy first.
    similar = svc.client.get(f"/api/tracks/{ids['Concert A']}/similar", params={"k": 3})
    items = similar.json()["items"]
    assert items[0]["title"] == "Concert A Again", items
    assert items[0]["score"] > 0.99 and items[1]["score"] < FAR

    # A rerun publishes nothing new: everything is known (vectorized, or unavailable).
    searches = len(media.requests)
    rerun = submit(svc, {"username": USER, "source": "top", "limit": 50})
    again = svc.wait_state(rerun, {"completed", "failed"}, timeout=120)
    assert again["state"] == "completed", again
    assert again["skipped"] == 9 and again["progress"]["tasks"]["total"] == 0
    assert len(media.requests) == searches, "no track was searched for again"
    codes = svc.stop_all()
    assert codes == dict.fromkeys(codes, 0), svc.logs()
    assert not any((tmp_path / "work").rglob("*.*")), "downloads are removed"


def test_an_unknown_user_fails_the_job_with_a_clear_message(
    music: tuple[Services, LastfmStub, MediaServer],
) -> None:
    svc, _, _ = music
    svc.start_pipeline(workers=1)
    job_id = submit(svc, {"username": "nobody-here", "source": "loved"})
    job = svc.wait_state(job_id, {"completed", "failed"}, timeout=120)
    assert job["state"] == "failed"
    assert "nobody-here" in job["error"] and "does not exist" in job["error"], job["error"]
