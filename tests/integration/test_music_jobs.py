"""Music jobs in the embedded default: the dispatcher and a worker run in the web process.

An audio job over a folder needs no internet and no servers: the demo path. Last.fm
failures go through the real pylast against the stub and must fail the job with a
message a person understands, never crash and never complete with nothing.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests import audiogen
from tests.stubs.lastfm import LastfmStub
from tests.webapp import Conveyor, StartApp

LASTFM = "/api/jobs/lastfm"


def audio_folder(root: Path) -> Path:
    music = root / "music"
    (music / "nested").mkdir(parents=True)
    audiogen.write(music / "a440.wav", audiogen.tone(440.0, 6.0))
    audiogen.write(music / "a440.mp3", audiogen.tone(440.0, 6.0))
    audiogen.write(music / "nested" / "chord.ogg", audiogen.chord([261.63, 329.63, 392.0], 6.0))
    audiogen.write(music / "nested" / "noise.wav", audiogen.noise(6.0, seed=1))
    audiogen.corrupt(music / "broken.mp3")
    (music / "notes.txt").write_text("not audio")
    return music


def tracks_by_title(app: Conveyor) -> dict[str, dict[str, Any]]:
    page = app.client.get("/api/tracks", params={"limit": 100}).json()
    return {t["title"]: t for t in page["items"]}


def test_an_audio_job_over_a_folder_works_on_the_embedded_default(
    start_app: StartApp, tmp_path: Path
) -> None:
    music = audio_folder(tmp_path)
    app = start_app(TRACKS_PER_TASK="2", WORK_DIR=str(tmp_path / "work"))
    response = app.client.post("/api/jobs/audio", json={"prefix": music.as_uri()})
    assert response.status_code == 202, response.text
    job = app.wait_final(response.json()["id"])
    assert job["state"] == "completed", job
    assert job["progress"]["rows"] == {"total": 5, "done": 4, "failed": 1, "filtered": 0}
    assert job["progress"]["tasks"]["total"] == 3

    found = tracks_by_title(app)
    assert set(found) == {"a440.wav", "a440.mp3", "chord.ogg", "noise.wav", "broken.mp3"}
    assert found["broken.mp3"]["state"] == "unavailable"
    assert "decode" in found["broken.mp3"]["error"]
    assert found["chord.ogg"]["location"] == (music / "nested" / "chord.ogg").as_uri()
    errors = app.errors(job["id"])
    assert [e["reason"].split(":")[0] for e in errors["items"]] == ["broken.mp3"]

    similar = app.client.get(f"/api/tracks/{found['a440.wav']['id']}/similar").json()
    assert similar["items"][0]["title"] == "a440.mp3"

    again = app.client.post("/api/jobs/audio", json={"prefix": music.as_uri()}).json()
    rerun = app.wait_final(again["id"])
    assert rerun["state"] == "completed"
    assert (rerun["skipped"], rerun["progress"]["tasks"]["total"]) == (5, 0)
    assert not list((tmp_path / "work").rglob("*.*")), "scratch files are removed"


def test_an_empty_or_missing_folder_fails_with_the_reason(
    start_app: StartApp, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no audio here")
    app = start_app()
    empty = app.client.post("/api/jobs/audio", json={"prefix": (tmp_path / "empty").as_uri()})
    job = app.wait_final(empty.json()["id"])
    assert job["state"] == "failed" and "no audio files under" in job["error"]
    missing = app.client.post("/api/jobs/audio", json={"prefix": (tmp_path / "gone").as_uri()})
    job = app.wait_final(missing.json()["id"])
    assert job["state"] == "failed" and "there is no folder at" in job["error"]


@pytest.fixture
def lastfm() -> Any:
    with LastfmStub(users={"rj": {"loved": [("Nina Simone", "Sinnerman")], "top": []}}) as stub:
        yield stub


def test_an_unknown_user_fails_the_job_naming_the_user(
    start_app: StartApp, lastfm: LastfmStub
) -> None:
    app = start_app(LASTFM_API_KEY=lastfm.api_key, LASTFM_API_URL=lastfm.url)
    response = app.client.post(LASTFM, json={"username": "ghost"})
    job = app.wait_final(response.json()["id"])
    assert job["state"] == "failed"
    assert job["error"] == "Last.fm user 'ghost' does not exist"


def test_a_rejected_api_key_fails_the_job_naming_the_setting(
    start_app: StartApp, lastfm: LastfmStub
) -> None:
    app = start_app(LASTFM_API_KEY="wrong-key", LASTFM_API_URL=lastfm.url)
    job = app.wait_final(app.client.post(LASTFM, json={"username": "rj"}).json()["id"])
    assert job["state"] == "failed" and "LASTFM_API_KEY" in job["error"]


def test_a_user_with_no_tracks_is_not_a_silent_zero(
    start_app: StartApp, lastfm: LastfmStub
) -> None:
    app = start_app(LASTFM_API_KEY=lastfm.api_key, LASTFM_API_URL=lastfm.url)
    job = app.wait_final(app.client.post(LASTFM, json={"username": "rj"}).json()["id"])
    assert job["state"] == "failed"
    assert job["error"] == "Last.fm user 'rj' has no top tracks: nothing to do"


def test_an_unreachable_lastfm_is_retried_then_fails_the_job(start_app: StartApp) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    app = start_app(
        LASTFM_API_KEY="k", LASTFM_API_URL=f"http://127.0.0.1:{port}/2.0/",
        MAX_ATTEMPTS="2", RETRY_BASE_SECONDS="0.1",
    )  # fmt: skip
    job = app.wait_final(app.client.post(LASTFM, json={"username": "rj"}).json()["id"])
    assert job["state"] == "failed"
    assert "could not be fanned out" in job["error"] and "unreachable" in job["error"]
