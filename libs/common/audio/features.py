"""Feature vectors of audio clips for cosine similarity, and a readable summary of each clip.

``extract(y)`` takes mono float32 samples at ``SAMPLE_RATE`` (what ``decode.decode`` gives)
and returns ``Features``: a ``DIMS``-long, L2-normalised float32 ``vector`` and a ``summary``
of plain facts (duration, tempo, key, ...). The layout of the vector, every transform and
every constant are in ``LAYOUT`` and ``docs/audio-features.md``; any change to them is a new
``FEATURE_VERSION``, and vectors of different versions are never compared.

Cost: one STFT, and everything else is computed from its magnitude below 8 kHz (the part
that lossy encoders keep): a mel filterbank (MFCCs, onset strength), a chroma filterbank
with tuning fixed at 0 (tonnetz from that chroma), spectral contrast, and spectral moments
in numpy. Tempo comes from one autocorrelation of the onset envelope, not a tempogram.
The arithmetic is float64 after the STFT; nothing depends on other clips, so the vector of
one clip is the same on every run (bit for bit on one machine and numpy/BLAS build).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import librosa
import numpy as np

from libs.common.audio.layout import FEATURE_VERSION, SAMPLE_RATE

__all__ = [
    "BLOCKS", "DIMS", "FEATURE_VERSION", "LAYOUT", "SAMPLE_RATE", "Features", "check_audio",
    "cosine", "extract", "warm_up",
]  # fmt: skip

N_FFT, HOP = 2048, 512
FMAX = 8000.0  # every spectral feature ignores the bins above this
FLOOR_DB = 50.0  # mel bands and contrast bins are floored this far below the clip's loudest
ACTIVE_DB = 40.0  # frames this far below the loudest frame count half in the averages
N_MELS, N_MFCC = 64, 20
EDGE_FRAMES = 3  # frames left out at each end (70 ms)
CONTRAST_FMIN, CONTRAST_BANDS = 250.0, 5  # octaves 250 Hz .. 8 kHz, and below 250 Hz
N_BINS = int(FMAX * N_FFT / SAMPLE_RATE) + 1
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
MIN_SECONDS = 1.0
SILENCE_PEAK = 1e-4  # -80 dBFS: quieter clips count as silent
# (name, number of dims, weight); see docs/audio-features.md for each block's transform.
BLOCKS: list[tuple[str, int, float]] = [
    ("mfcc_mean", 19, 1.2),
    ("mfcc_std", 19, 0.8),
    ("chroma", 12, 1.0),
    ("tonnetz", 6, 1.0),
    ("contrast", 6, 1.0),
    ("spectral", 6, 0.8),
    ("rhythm", 4, 1.0),
]


def _layout() -> list[tuple[str, int, int]]:
    layout, start = [], 0
    for name, dims, _weight in BLOCKS:
        layout.append((name, start, start + dims))
        start += dims
    return layout


LAYOUT: list[tuple[str, int, int]] = _layout()
DIMS: int = LAYOUT[-1][2]


@dataclass(frozen=True)
class Features:
    """``vector``: float32, shape ``(DIMS,)``, L2 norm 1. ``summary``: facts for people."""

    vector: np.ndarray
    summary: dict[str, float | str]


def check_audio(y: np.ndarray, sr: int) -> None:
    """Raise ValueError with a one-line reason when ``y`` cannot give a feature vector."""
    if sr != SAMPLE_RATE:
        raise ValueError(f"audio must be at {SAMPLE_RATE} Hz, got {sr} Hz")
    if y.ndim != 1:
        raise ValueError(f"audio must be mono (1-D), got shape {y.shape}")
    if y.size < MIN_SECONDS * sr:
        seconds = int(y.size / sr * 100) / 100  # truncated: 0.999 s shows as 0.99 s
        raise ValueError(f"audio too short: {seconds:.2f} s, at least {MIN_SECONDS:g} s needed")
    if not np.all(np.isfinite(y)):
        raise ValueError("audio contains NaN or infinite samples")
    if float(np.max(np.abs(y))) < SILENCE_PEAK:
        raise ValueError("audio is silent")


def extract(y: np.ndarray, sr: int = SAMPLE_RATE) -> Features:
    """The feature vector and summary of the mono clip ``y`` (at ``SAMPLE_RATE``).
    Raises ValueError with a one-line reason for audio that gives no vector."""
    y = np.asarray(y)
    check_audio(y, sr)
    blocks, summary = _analyse(y.astype(np.float32, copy=False))
    parts = []
    for (name, dims, weight), (got, block) in zip(BLOCKS, blocks, strict=True):
        if got != name or block.shape != (dims,):  # a programming error, not bad input
            raise AssertionError(f"block {got}: shape {block.shape}, expected {name} ({dims},)")
        parts.append(weight * block)
    vector = np.concatenate(parts)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("audio gives no usable features")
    return Features(vector=(vector / norm).astype(np.float32), summary=summary)


@functools.cache
def _filters() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FFT bin frequencies, mel and chroma (tuning 0) filterbanks, all cut at ``FMAX``."""
    freqs = librosa.fft_frequencies(sr=SAMPLE_RATE, n_fft=N_FFT)[:N_BINS]
    mel = librosa.filters.mel(
        sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmax=FMAX, dtype=np.float64
    )[:, :N_BINS]
    chroma = librosa.filters.chroma(sr=SAMPLE_RATE, n_fft=N_FFT, tuning=0.0, dtype=np.float64)[
        :, :N_BINS
    ]
    for array in (freqs, mel, chroma):
        array.setflags(write=False)
    return freqs, mel, chroma


def _analyse(y: np.ndarray) -> tuple[list[tuple[str, np.ndarray]], dict[str, float | str]]:
    """The vector's blocks, unweighted and in ``BLOCKS`` order, and the summary."""
    freqs, mel_fb, chroma_fb = _filters()
    power = np.square(np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP)[:N_BINS]), dtype=float)
    power[0] = 0.0  # DC: no sound, and lossy codecs do not keep it
    energy = power.sum(axis=0)
    if not energy.max() > 0:
        raise ValueError(f"audio has no sound below {FMAX / 1000:g} kHz")
    # Activity weights: loud frames count fully, frames ACTIVE_DB down count half, silence 0.
    w = energy / (energy + energy.max() * 10 ** (-ACTIVE_DB / 10))
    w[:EDGE_FRAMES] = w[-EDGE_FRAMES:] = 0.0  # half-padded frames, codecs' priming artefacts
    if not w.sum() > 0:
        raise ValueError("audio is silent apart from its first or last 70 ms")
    w /= w.sum()

    mel = mel_fb @ power
    mel_db = 10 * np.log10(np.maximum(mel / mel.max(), 10 ** (-FLOOR_DB / 10)))
    mfcc = librosa.feature.mfcc(S=mel_db, n_mfcc=N_MFCC)[1:]
    mfcc_mean, mfcc_std = _wstats(mfcc, w)
    onset = librosa.onset.onset_strength(S=mel_db, sr=SAMPLE_RATE, hop_length=HOP)

    chroma = chroma_fb @ power
    profile = librosa.util.normalize(chroma, norm=1, axis=0) @ w
    profile /= profile.sum()
    tonnetz = librosa.feature.tonnetz(chroma=chroma) @ w

    floored = np.maximum(power, power.max() * 10 ** (-FLOOR_DB / 10))
    contrast = librosa.feature.spectral_contrast(
        S=floored, sr=SAMPLE_RATE, freq=freqs, fmin=CONTRAST_FMIN, n_bands=CONTRAST_BANDS
    )
    spectral, spectral_summary = _spectral(power, floored, energy, freqs, w)
    tempo, clarity = _tempo(onset)
    onset_level = float(onset[EDGE_FRAMES:-EDGE_FRAMES].mean())
    pulse = max(0.0, clarity - 0.2) / 0.8 * onset_level**2 / (onset_level**2 + 0.15**2)
    angle = 2 * np.pi * np.log2(tempo / 120.0) if tempo > 0 else 0.0

    blocks = [
        ("mfcc_mean", mfcc_mean / 50.0),
        ("mfcc_std", (mfcc_std - 8.0) / 16.0),
        ("chroma", (profile - 1 / 12) * 4.0),
        ("tonnetz", tonnetz),
        ("contrast", (contrast @ w - 15.0) / 15.0 / np.sqrt(CONTRAST_BANDS + 1)),
        ("spectral", spectral),
        ("rhythm", np.array([np.log2((onset_level + 0.1) / 0.4) / 3.0, pulse - 0.4,
                             pulse * np.cos(angle), pulse * np.sin(angle)])),
    ]  # fmt: skip
    summary: dict[str, float | str] = {
        "duration_seconds": round(y.size / SAMPLE_RATE, 3),
        "tempo_bpm": round(tempo, 1) if pulse >= 0.1 else 0.0,
        "pulse": round(pulse, 3),
        "key": PITCH_CLASSES[int(np.argmax(profile))],
        **spectral_summary,
        "rms": round(float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))), 5),
        "peak": round(float(np.max(np.abs(y))), 5),
        "zero_crossing_rate": round(float(np.mean(np.signbit(y[1:]) != np.signbit(y[:-1]))), 5),
        "onset_strength": round(onset_level, 3),
    }
    return blocks, summary


def _wstats(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and standard deviation over frames (the last axis); ``w`` sums to 1."""
    mean = x @ w
    return mean, np.sqrt(np.maximum(np.square(x - mean[..., None]) @ w, 0.0))


def _spectral(
    power: np.ndarray, floored: np.ndarray, energy: np.ndarray, freqs: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, dict[str, float | str]]:
    """Spectral moments (of the power, so a codec's noise floor hardly moves them), roll-off,
    flatness (of the floored power), and loudness dynamics; their vector block and summary."""
    e = np.maximum(energy, np.finfo(np.float64).tiny)
    centroid = (freqs @ power) / e
    bandwidth = np.sqrt(np.maximum((np.square(freqs) @ power) / e - np.square(centroid), 0.0))
    rice = 2 * np.sqrt(np.maximum(np.square(centroid) + np.square(bandwidth), 0.0)) / SAMPLE_RATE
    scratch = np.cumsum(power, axis=0)
    rolloff = freqs[np.argmax(scratch >= 0.85 * scratch[-1], axis=0)]
    np.log(floored, out=scratch)  # the buffer again: two fewer arrays of the spectrogram's size
    flatness = np.exp(np.mean(scratch, axis=0)) / np.mean(floored, axis=0)
    loudness = 10 * np.log10(np.maximum(energy / energy.max(), 10 ** (-FLOOR_DB / 10)))
    c, b, r, f, z = (float(v @ w) for v in (centroid, bandwidth, rolloff, flatness, rice))
    dynamics = float(np.std(loudness[EDGE_FRAMES:-EDGE_FRAMES]))
    vector = np.array([
        np.log2(c / 1000.0) / 3.0,
        np.log2(b / 1000.0 + 0.01) / 3.0,
        np.log2(r / 2000.0 + 0.01) / 3.0,
        (np.log10(f + 1e-4) + 2.0) / 2.0,
        np.log2(z / 0.1) / 3.0,
        np.log2(dynamics / 4.0 + 0.1) / 3.0,
    ])  # fmt: skip
    summary: dict[str, float | str] = {
        "spectral_centroid_hz": round(c, 1),
        "spectral_bandwidth_hz": round(b, 1),
        "spectral_rolloff_hz": round(r, 1),
        "spectral_flatness": round(f, 5),
        "dynamics_db": round(dynamics, 2),
    }
    return vector, summary


def _tempo(onset: np.ndarray) -> tuple[float, float]:
    """Tempo (bpm) and pulse clarity (0..1) from one autocorrelation of the mean-removed onset
    envelope: the lag with the highest correlation times a log-normal prior at 120 bpm
    (sigma one octave, as librosa's tempo), for tempos of 30 to 300 bpm."""
    x = onset - onset.mean()
    n = x.size
    ac = np.fft.irfft(np.abs(np.fft.rfft(x, 2 * n)) ** 2)[: n // 2]
    if ac.size < 2 or ac[0] <= 0:
        return 0.0, 0.0
    lags = np.arange(1, ac.size)
    ac = ac[1:] / ac[0] * n / (n - lags)  # unbiased: long lags overlap fewer frames
    bpm = 60.0 * SAMPLE_RATE / HOP / lags
    ok = (bpm >= 30.0) & (bpm <= 300.0)
    if not ok.any():
        return 0.0, 0.0
    score = np.where(ok, ac * np.exp(-0.5 * np.log2(bpm / 120.0) ** 2), -np.inf)
    best = int(np.argmax(score))
    return float(bpm[best]), float(np.clip(ac[best], 0.0, 1.0))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors of one version (1.0: the same sound)."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))


def warm_up() -> None:
    """Run ``extract`` once on 2 s of synthetic audio, so that librosa's lazy imports and
    any numba compilation happen now (and land in ``NUMBA_CACHE_DIR`` when it is set)."""
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    clicks = (np.arange(t.size) % (SAMPLE_RATE // 2) < 200).astype(np.float64)
    extract((0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.3 * clicks).astype(np.float32))
