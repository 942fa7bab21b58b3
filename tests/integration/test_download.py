"""download() with the real yt-dlp against the local media server (tests/stubs/media.py)."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import imageio_ffmpeg
import pytest

from libs.common.audio.download import (
    Downloaded,
    DownloadTransient,
    Unavailable,
    clean_stale,
    download,
    search_query,
)
from tests.stubs.media import MediaServer

pytestmark = pytest.mark.integration

MB = 1_000_000


@pytest.fixture(autouse=True)
def no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """yt-dlp honours HTTP(S)_PROXY even for 127.0.0.1: keep the local servers local."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One second of a sine tone as mp3, ogg and wav, made by ffmpeg's lavfi source."""
    folder = tmp_path_factory.mktemp("audio")
    files = {}
    for ext in ("mp3", "ogg", "wav"):
        files[ext] = folder / f"tone-{ext}.{ext}"
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi"]
        command += ["-i", "sine=frequency=440:duration=1", str(files[ext])]
        subprocess.run(command, check=True, timeout=60)
    return files


@pytest.fixture
def media(audio: dict[str, Path]) -> Iterator[MediaServer]:
    tracks = {f"Tone {ext}": path for ext, path in audio.items()}
    with MediaServer(tracks) as server:
        yield server


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "downloads"


def fetch(media: MediaServer, query: str, dest: Path, **overrides: object) -> Downloaded:
    artist, _, title = query.partition(" ")
    arguments: dict[str, object] = {"max_bytes": 5 * MB, "max_duration": 1200}
    arguments.update(overrides)
    return download(artist, title, dest, search_prefix=media.search_prefix, **arguments)  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("ext", ["mp3", "ogg", "wav"])
def test_a_direct_file_is_downloaded_as_served(
    media: MediaServer,
    audio: dict[str, Path],
    dest: Path,
    ext: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    got = fetch(media, f"TONE   {ext}", dest)  # case and spacing do not matter to the server
    assert got.path.parent == dest
    assert got.path.suffix == f".{ext}"
    assert got.path.read_bytes() == audio[ext].read_bytes()
    assert list(dest.iterdir()) == [got.path]  # no working folder, no .part left
    assert got.source_url.startswith(media.search_prefix)
    assert got.duration is None  # a direct file: yt-dlp cannot know it without ffprobe
    assert capfd.readouterr() == ("", "")


def test_a_redirect_to_the_file_is_followed(audio: dict[str, Path], dest: Path) -> None:
    with MediaServer({"tone ogg": audio["ogg"]}, redirect=True) as media:
        got = fetch(media, "tone ogg", dest)
        paths = [r.path for r in media.logged("tone ogg")]
    assert got.path.read_bytes() == audio["ogg"].read_bytes()
    assert got.title == "tone-ogg"
    assert paths[0] == "/search" and paths[-1] == "/files/tone-ogg.ogg"


def test_a_known_duration_is_reported_and_checked(
    media: MediaServer, audio: dict[str, Path], dest: Path
) -> None:
    media.add("short one", audio["mp3"], duration=1)
    media.add("long one", audio["mp3"], duration=1500)
    got = fetch(media, "short one", dest)
    assert got.duration == 1.0
    assert got.path.read_bytes() == audio["mp3"].read_bytes()
    before = len(media.requests)
    with pytest.raises(Unavailable, match=r"^too long \(1500 s > 1200 s\)$"):
        fetch(media, "long one", dest)
    assert [r.path for r in media.requests[before:]] == ["/search"]  # never fetched the file
    assert list(dest.iterdir()) == [got.path]


def test_an_unknown_song_is_not_found_and_leaves_nothing(
    media: MediaServer, dest: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(Unavailable, match=r"^not found$"):
        fetch(media, "Nobody Nothing", dest)
    assert list(dest.iterdir()) == []
    assert capfd.readouterr() == ("", "")


def test_a_file_announced_too_big_is_not_downloaded(media: MediaServer, dest: Path) -> None:
    media.claim_size("tone wav", 10**10)
    with pytest.raises(Unavailable, match=r"^too big \(over 5 MB\)$"):
        fetch(media, "tone wav", dest)
    assert list(dest.iterdir()) == []


def test_a_file_without_length_is_cut_off_at_the_limit(
    media: MediaServer, audio: dict[str, Path], dest: Path
) -> None:
    media.hide_length("tone wav")
    assert audio["wav"].stat().st_size > 20_000
    with pytest.raises(Unavailable, match=r"^too big"):
        fetch(media, "tone wav", dest, max_bytes=20_000)
    assert list(dest.iterdir()) == []
    got = fetch(media, "tone wav", dest)  # within the limit it arrives whole
    assert got.path.read_bytes() == audio["wav"].read_bytes()


def test_server_errors_while_downloading_are_retried(
    media: MediaServer, audio: dict[str, Path], dest: Path
) -> None:
    media.fail("tone mp3", status=500, times=2, after=1)  # the file fetch, not the lookup
    got = fetch(media, "tone mp3", dest, retries=3)
    assert got.path.read_bytes() == audio["mp3"].read_bytes()
    assert len(media.logged("tone mp3")) == 4  # lookup, 2 failures, success


def test_a_server_error_when_looking_up_is_transient_and_may_work_later(
    media: MediaServer, audio: dict[str, Path], dest: Path
) -> None:
    media.fail("tone mp3", status=503)
    with pytest.raises(DownloadTransient, match="503"):
        fetch(media, "tone mp3", dest)
    assert list(dest.iterdir()) == []
    assert fetch(media, "tone mp3", dest).path.read_bytes() == audio["mp3"].read_bytes()


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_server_errors_outlasting_the_retries_are_transient(media: MediaServer, dest: Path) -> None:
    media.fail("tone mp3", status=500, times=10, after=1)
    with pytest.raises(DownloadTransient, match="HTTP Error 500") as caught:
        fetch(media, "tone mp3", dest, retries=1)
    assert "Giving up after 1 retries" in str(caught.value)
    assert list(dest.iterdir()) == []
    # yt-dlp keeps the failed responses' sockets in a reference cycle when it gives up;
    # collect them here, where their ResourceWarning is expected, not in a later test.
    del caught
    gc.collect()


def test_rate_limiting_is_transient(media: MediaServer, dest: Path) -> None:
    media.fail("tone mp3", status=429)
    with pytest.raises(DownloadTransient, match="429"):
        fetch(media, "tone mp3", dest)


def test_a_missing_file_after_the_lookup_is_unavailable(media: MediaServer, dest: Path) -> None:
    media.fail("tone mp3", status=404, after=1)
    with pytest.raises(Unavailable, match=r"^download failed: HTTP 404$"):
        fetch(media, "tone mp3", dest)
    assert list(dest.iterdir()) == []


def test_a_refused_connection_is_transient(dest: Path, capfd: pytest.CaptureFixture[str]) -> None:
    prefix = f"http://127.0.0.1:{closed_port()}/search?q="
    with pytest.raises(DownloadTransient, match=r"^network error: .*[Cc]onnection refused"):
        download("a", "b", dest, search_prefix=prefix, max_bytes=MB, max_duration=60)
    assert list(dest.iterdir()) == []
    assert capfd.readouterr() == ("", "")


def test_a_server_that_does_not_answer_times_out_as_transient(
    media: MediaServer, dest: Path
) -> None:
    media.stall("tone mp3", 30)
    started = time.monotonic()
    with pytest.raises(DownloadTransient, match=r"^network error: .*timed out"):
        fetch(media, "tone mp3", dest, socket_timeout=0.5)
    assert time.monotonic() - started < 10
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("ytsearch1:", "ytsearch1:Sigur Rós Hoppípolla"),
        ("http://h:1/search?q=", "http://h:1/search?q=Sigur%20R%C3%B3s%20Hopp%C3%ADpolla"),
    ],
)
def test_the_search_query(prefix: str, expected: str) -> None:
    assert search_query("Sigur Rós", "Hoppípolla", prefix) == expected


def test_clean_stale_removes_only_old_leftovers_of_downloads(tmp_path: Path) -> None:
    working = tmp_path / ".dl-abc123"
    working.mkdir()
    (working / "audio.mp3.part").write_bytes(b"half")
    (tmp_path / "dl-def456.mp3").write_bytes(b"whole")
    (tmp_path / "keep.txt").write_text("not ours")
    assert clean_stale(tmp_path, older_than=3600) == 0  # all fresh
    hours_ago = time.time() - 2 * 3600
    for entry in tmp_path.iterdir():
        os.utime(entry, (hours_ago, hours_ago))
    assert clean_stale(tmp_path, older_than=3600) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    assert clean_stale(tmp_path / "missing") == 0


def test_the_media_server_answers_range_requests(
    media: MediaServer, audio: dict[str, Path]
) -> None:
    url = media.search_prefix + "tone%20mp3"
    data = audio["mp3"].read_bytes()
    request = urllib.request.Request(url, headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 206
        assert response.headers["Content-Type"] == "audio/mpeg"
        assert response.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
        assert response.read() == data[10:20]
