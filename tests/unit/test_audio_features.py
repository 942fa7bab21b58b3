"""Decoding with ffmpeg and the feature vectors: lengths, errors, determinism, robustness to
lossy re-encoding, separation of different sounds, and the summary.

The clips are generated (``tests/audiogen.py``) at 44.1 kHz, as real files are, so decoding
resamples them to 22,050 Hz. Thresholds are the figures measured in docs/audio-features.md
with a margin.
"""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from libs.common.audio import features
from libs.common.audio.decode import DecodeError, decode, find_ffmpeg
from tests import audiogen

SR = features.SAMPLE_RATE
SOURCE_SR = 44100
LOSSY = ("mp3", "ogg", "opus", "m4a")
REENCODED_MIN_COSINE = 0.995  # measured: 0.9985 worst (5 s clips, all four codecs)
DIFFERENT_MAX_COSINE = 0.7  # measured: 0.50 highest (440 Hz tone vs C-major chord)


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    found = find_ffmpeg()
    if found is None:
        pytest.fail("no ffmpeg: neither on PATH nor from imageio-ffmpeg")
    return found


@pytest.fixture(scope="module")
def song_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("song")
    y = audiogen.song(6.0, seed=2, sr=SOURCE_SR)
    return {fmt: audiogen.write(folder / f"song.{fmt}", y, SOURCE_SR) for fmt in ("wav", *LOSSY)}


def _peak_hz(y: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    return float(np.argmax(spectrum) * SR / y.size)


# --------------------------------------------------------------------------- decode


@pytest.mark.parametrize("fmt", ["wav", "mp3", "ogg", "opus", "webm", "m4a", "flac"])
def test_decode_gives_mono_float32_at_22050(tmp_path: Path, ffmpeg: str, fmt: str) -> None:
    path = audiogen.write(tmp_path / f"a.{fmt}", audiogen.tone(440.0, 3.0, SOURCE_SR), SOURCE_SR)
    y = decode(path, ffmpeg=ffmpeg)
    assert y.dtype == np.float32 and y.ndim == 1 and y.flags.writeable
    assert abs(y.size - 3 * SR) <= 0.02 * SR  # encoders may pad a frame
    assert _peak_hz(y) == pytest.approx(440.0, abs=1.0)  # resampled, not just relabelled


def test_decode_downmixes_stereo_and_stops_at_max_seconds(tmp_path: Path, ffmpeg: str) -> None:
    left, right = audiogen.tone(440.0, 4.0, SOURCE_SR), audiogen.tone(660.0, 4.0, SOURCE_SR)
    path = audiogen.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), SOURCE_SR)
    y = decode(path, ffmpeg=ffmpeg, max_seconds=1.5)
    assert y.shape == (round(1.5 * SR),)
    spectrum = np.abs(np.fft.rfft(y))
    freqs = np.fft.rfftfreq(y.size, 1 / SR)
    for hz in (440.0, 660.0):  # both channels are in the mono mix
        assert spectrum[np.abs(freqs - hz) < 3].max() > 0.2 * spectrum.max()


@pytest.mark.parametrize("name", ["song.mp3", "a"])
def test_garbage_is_a_one_line_decode_error(
    tmp_path: Path, ffmpeg: str, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.chdir(tmp_path)
    audiogen.corrupt(tmp_path / name)
    with pytest.raises(DecodeError) as caught:
        decode(name, ffmpeg=ffmpeg)
    message = str(caught.value)
    assert message == "ffmpeg cannot decode this file: Invalid data found when processing input"
    assert "\n" not in message and str(tmp_path) not in message


def test_missing_file_and_video_without_audio(tmp_path: Path, ffmpeg: str) -> None:
    with pytest.raises(DecodeError, match="No such file or directory"):
        decode(tmp_path / "gone.mp3", ffmpeg=ffmpeg)
    video = tmp_path / "video.mkv"
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc=duration=1:size=64x64:rate=5", "-c:v", "mpeg4", str(video)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with pytest.raises(DecodeError, match=r"^no audio in the file$"):
        decode(video, ffmpeg=ffmpeg)


def _children() -> set[str]:
    """PIDs of this process's living children (Linux)."""
    return {pid for task in Path("/proc/self/task").iterdir()
            for pid in (task / "children").read_text().split()}  # fmt: skip


def test_decode_timeout_kills_ffmpeg(tmp_path: Path, ffmpeg: str) -> None:
    path = audiogen.write(tmp_path / "long.wav", audiogen.noise(20.0, sr=SOURCE_SR), SOURCE_SR)
    before = _children()
    with pytest.raises(DecodeError, match=r"longer than 0\.001 s"):
        decode(path, ffmpeg=ffmpeg, timeout=0.001)
    assert _children() == before  # killed and reaped, not left running


def test_find_ffmpeg(tmp_path: Path, ffmpeg: str) -> None:
    assert find_ffmpeg(ffmpeg) == ffmpeg
    with pytest.raises(ValueError, match="not found or not executable"):
        find_ffmpeg(str(tmp_path / "no-ffmpeg"))
    not_executable = tmp_path / "ffmpeg"
    not_executable.write_text("")
    with pytest.raises(ValueError, match="not found or not executable"):
        find_ffmpeg(str(not_executable))


# --------------------------------------------------------------------------- features


def test_layout_covers_the_vector() -> None:
    assert [start for _n, start, _s in features.LAYOUT] == [0] + [
        stop for _n, _s, stop in features.LAYOUT[:-1]
    ]
    assert features.LAYOUT[-1][2] == features.DIMS
    assert len({name for name, _s, _e in features.LAYOUT}) == len(features.LAYOUT)


def test_vector_shape_norm_and_determinism() -> None:
    y = audiogen.song(5.0, seed=1)
    first, second = features.extract(y), features.extract(y.copy())
    assert first.vector.dtype == np.float32 and first.vector.shape == (features.DIMS,)
    assert np.linalg.norm(first.vector) == pytest.approx(1.0, abs=1e-5)
    assert np.array_equal(first.vector, second.vector)
    assert first.summary == second.summary


def test_vector_ignores_the_level() -> None:
    y = audiogen.song(5.0, seed=1)
    quiet = features.extract((0.05 * y).astype(np.float32)).vector
    assert features.cosine(features.extract(y).vector, quiet) > 0.9999


@pytest.mark.parametrize("fmt", LOSSY)
def test_reencoded_clip_keeps_its_vector(
    song_files: dict[str, Path], ffmpeg: str, fmt: str
) -> None:
    reference = features.extract(decode(song_files["wav"], ffmpeg=ffmpeg)).vector
    reencoded = features.extract(decode(song_files[fmt], ffmpeg=ffmpeg)).vector
    assert features.cosine(reference, reencoded) >= REENCODED_MIN_COSINE


def test_different_sounds_are_far_apart() -> None:
    seconds = 5.0
    sounds = {
        "tone 440 Hz": audiogen.tone(440.0, seconds),
        "tone 660 Hz": audiogen.tone(660.0, seconds),
        "C-major chord": audiogen.chord([261.63, 329.63, 392.0], seconds),
        "white noise": audiogen.noise(seconds, seed=3),
        "drums at 120 bpm": audiogen.beats(120.0, seconds),
    }
    vectors = {name: features.extract(y).vector for name, y in sounds.items()}
    for a, b in itertools.combinations(vectors, 2):
        assert features.cosine(vectors[a], vectors[b]) < DIFFERENT_MAX_COSINE, (a, b)


def test_summary_of_a_tone_and_of_drums() -> None:
    tone = features.extract(audiogen.tone(440.0, 5.0)).summary
    assert tone["key"] == "A"
    assert tone["duration_seconds"] == 5.0
    assert tone["spectral_centroid_hz"] == pytest.approx(440.0, abs=5.0)
    assert tone["rms"] == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    assert tone["zero_crossing_rate"] == pytest.approx(2 * 440 / SR, rel=0.01)
    assert tone["tempo_bpm"] == 0.0 and tone["pulse"] == 0.0
    drums = features.extract(audiogen.beats(120.0, 8.0)).summary
    assert drums["tempo_bpm"] == pytest.approx(120.0, abs=5.0)  # the lag grid is ~2.5 bpm wide
    assert float(drums["pulse"]) > 0.3
    noise = features.extract(audiogen.noise(5.0)).summary
    assert float(noise["spectral_flatness"]) > 0.3 > float(tone["spectral_flatness"])
    assert set(tone) == {
        "duration_seconds", "tempo_bpm", "pulse", "key", "spectral_centroid_hz",
        "spectral_bandwidth_hz", "spectral_rolloff_hz", "spectral_flatness", "dynamics_db",
        "rms", "peak", "zero_crossing_rate", "onset_strength",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("y", "reason"),
    [
        (audiogen.tone(440.0, 0.5), "audio too short: 0.50 s, at least 1 s needed"),
        (np.zeros(3 * SR, np.float32), "audio is silent"),
        (np.full(3 * SR, np.nan, np.float32), "audio contains NaN or infinite samples"),
        (np.zeros((2, 3 * SR), np.float32), "audio must be mono"),
    ],
    ids=["short", "silent", "nan", "stereo"],
)
def test_unusable_audio_is_a_value_error(y: np.ndarray, reason: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(reason)):
        features.extract(y)


def test_other_sample_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="must be at 22050 Hz, got 44100 Hz"):
        features.extract(audiogen.tone(440.0, 2.0, 44100), 44100)


def test_warm_up_runs() -> None:
    features.warm_up()
