"""Deterministic test audio: tones, chords, noise, beats and a small song, and writing them
as wav, mp3, ogg (vorbis), opus, m4a (AAC), webm (opus) or flac files.

Every generator returns a 1-D float32 array in [-1, 1] and depends only on its arguments
(noise and hi-hats draw from a seeded generator), so a test or a benchmark gets the same
samples on every run. The encoders are those of the ffmpeg binary ``find_ffmpeg()`` finds.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from libs.common.audio.decode import find_ffmpeg

SR = 22050
# ffmpeg encoder arguments per file format, at common streaming/download qualities.
ENCODERS: dict[str, list[str]] = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "128k"],
    "ogg": ["-c:a", "libvorbis", "-q:a", "4"],
    "opus": ["-c:a", "libopus", "-b:a", "96k"],
    "webm": ["-c:a", "libopus", "-b:a", "96k"],
    "m4a": ["-c:a", "aac", "-b:a", "128k"],
    "flac": ["-c:a", "flac"],
}
FORMATS = ("wav", *ENCODERS)


def _t(seconds: float, sr: int) -> np.ndarray:
    return np.arange(round(seconds * sr)) / sr


def _fade(y: np.ndarray, sr: int, seconds: float = 0.01) -> np.ndarray:
    n = min(round(seconds * sr), y.size // 2)
    ramp = np.linspace(0.0, 1.0, n, endpoint=False)
    y[:n] *= ramp
    y[y.size - n :] *= ramp[::-1]
    return y


def tone(freq: float, seconds: float, sr: int = SR, amplitude: float = 0.5) -> np.ndarray:
    """A sine at ``freq`` Hz with 10 ms fades at both ends."""
    y = amplitude * np.sin(2 * np.pi * freq * _t(seconds, sr))
    return _fade(y, sr).astype(np.float32)


def chord(freqs: list[float], seconds: float, sr: int = SR, amplitude: float = 0.5) -> np.ndarray:
    """Equal-level sines at ``freqs`` Hz, ``amplitude`` peak at most."""
    y = sum(np.sin(2 * np.pi * f * _t(seconds, sr)) for f in freqs)
    return _fade(amplitude * np.asarray(y) / len(freqs), sr).astype(np.float32)


def noise(seconds: float, seed: int = 0, sr: int = SR, amplitude: float = 0.5) -> np.ndarray:
    """White noise, uniform in [-amplitude, amplitude]."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-amplitude, amplitude, round(seconds * sr)).astype(np.float32)


def _kick(sr: int) -> np.ndarray:
    t = _t(0.25, sr)
    freq = 50.0 + 100.0 * np.exp(-t / 0.03)  # a pitch drop from 150 to 50 Hz
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return np.sin(phase) * np.exp(-t / 0.06)


def _add(y: np.ndarray, start_seconds: float, sound: np.ndarray, sr: int) -> None:
    a = round(start_seconds * sr)
    b = min(a + sound.size, y.size)
    if a < b:
        y[a:b] += sound[: b - a]


def beats(bpm: float, seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A drum loop: a kick on every beat and a noise hi-hat on every off-beat."""
    y = np.zeros(round(seconds * sr))
    period = 60.0 / bpm
    kick = 0.8 * _kick(sr)
    hat_t = _t(0.05, sr)
    hat = np.random.default_rng(seed).uniform(-1.0, 1.0, hat_t.size) * np.exp(-hat_t / 0.01)
    hat = 0.25 * np.diff(hat, prepend=0.0)  # a crude high-pass: hi-hats are bright
    for i in range(int(seconds / period) + 1):
        _add(y, i * period, kick, sr)
        _add(y, (i + 0.5) * period, hat, sr)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def _note(freq: float, seconds: float, sr: int) -> np.ndarray:
    t = _t(seconds, sr)
    harmonics = sum(np.sin(2 * np.pi * k * freq * t) / k**1.5 for k in range(1, 7))
    envelope = np.minimum(1.0, t / 0.02) * np.exp(-t / (0.6 * seconds))
    return np.asarray(harmonics) * envelope


def song(seconds: float, seed: int = 0, sr: int = SR, bpm: float = 110.0) -> np.ndarray:
    """A small piece of music: harmonic-rich chords (I-vi-IV-V in a key picked by ``seed``),
    one per bar, a bass note on every beat, and ``beats(bpm)`` drums underneath."""
    root = 220.0 * 2 ** (int(np.random.default_rng(seed).integers(0, 12)) / 12)
    progression = [(0, 4, 7), (9, 12, 16), (5, 9, 12), (7, 11, 14)]  # semitones above root
    y = 0.6 * beats(bpm, seconds, sr, seed).astype(np.float64)
    beat = 60.0 / bpm
    for bar in range(int(seconds / (4 * beat)) + 1):
        degrees = progression[bar % len(progression)]
        start = bar * 4 * beat
        for d in degrees:
            _add(y, start, 0.1 * _note(root * 2 ** (d / 12), 4 * beat, sr), sr)
        bass = 0.15 * _note(root / 2 * 2 ** (degrees[0] / 12), beat, sr)
        for i in range(4):
            _add(y, start + i * beat, bass, sr)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def write(
    path: str | os.PathLike[str], y: np.ndarray, sr: int = SR, fmt: str | None = None
) -> Path:
    """Write ``y`` to ``path`` as ``fmt`` (default: the path's suffix). wav is 16-bit PCM
    through soundfile; the others are encoded by ffmpeg from a pipe, with ``ENCODERS``."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt == "wav":
        sf.write(path, y, sr, subtype="PCM_16")
        return path
    if fmt not in ENCODERS:
        raise ValueError(f"unknown audio format {fmt!r}; known: {', '.join(FORMATS)}")
    ffmpeg = find_ffmpeg()
    if ffmpeg is None:
        raise RuntimeError("no ffmpeg to encode with")
    muxer = {"m4a": "ipod"}.get(fmt, fmt)
    argv = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
            "-f", "f32le", "-ar", str(sr), "-ac", "1", "-i", "pipe:0",
            *ENCODERS[fmt], "-f", muxer, str(path)]  # fmt: skip
    data = np.ascontiguousarray(y, dtype="<f4").tobytes()
    proc = subprocess.run(argv, input=data, capture_output=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not write {fmt}: {proc.stderr.decode(errors='replace')}")
    return path


def corrupt(path: str | os.PathLike[str], size: int = 8192, seed: int = 0) -> Path:
    """A file with an audio name and garbage content (seeded random bytes)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).bytes(size))
    return path
