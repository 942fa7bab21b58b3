"""The audio benchmark: cost per clip, the music pipeline end to end, similarity at 100k.

    python -m bench.audio                        # the three tables (about 2.5 min on 2 CPUs)
    python -m bench.audio --only clips|pipeline|similarity
    python -m bench.audio --only pipeline --tracks 40 --workers 1,2 --worker-threads 1

**clips** (this module): per-clip cost on one core. For each clip length, a generated song
(``tests.audiogen.song``, 44.1 kHz, so that decoding resamples as it does for real files) is
encoded in each format; each file is decoded (``decode.decode``, 22,050 Hz mono) and its
vector extracted (``features.extract``), once to warm up, then ``--repeats`` times. The
table gives the medians, the total, and the real-time factor (clip seconds / processing
seconds). The baseline, in the same run on the same decoded wav, is the naive feature set
(``naive_features``): every feature from the samples with its own STFT, chroma with
librosa's tuning estimation, tonnetz from its own (CQT) chroma, the full band, librosa's
tempogram tempo. ``vs naive`` = tuned / naive features. One core: this part runs in a
process re-executed with OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS=1 (they must be set before numpy
loads), pinned (and so its ffmpeg children) to one CPU, checked with threadpoolctl; run with
the other parts, it is a child process, so that the services are not pinned too.

**pipeline** (``bench.audio_pipeline``): tracks per second through web, dispatcher and
workers on RabbitMQ + PostgreSQL, for each ``--workers`` count, against the serial rate.
**similarity** (``bench.similarity``): ``top_k`` and ``VectorIndex`` at ``--vectors``.
One PostgreSQL server serves both. The figures also go to ``bench/out/audio.json``,
``audio_pipeline.json`` and ``similarity.json``; see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import librosa
import numpy as np

from bench import audio_pipeline, similarity
from bench.csv_pipeline import parse_workers
from bench.report import cols, table
from bench.services import BenchError, say
from libs.common.audio import features
from libs.common.audio.decode import decode, find_ffmpeg
from tests import audiogen
from tests.servers import PostgresServer

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
OUT = Path(__file__).resolve().parent / "out" / "audio.json"
OUT_PIPELINE = OUT.with_name("audio_pipeline.json")
OUT_SIMILARITY = OUT.with_name("similarity.json")
PARTS = ("clips", "pipeline", "similarity")
SOURCE_SR = 44100
T = TypeVar("T")
HEADERS = cols("format|clip s|decode s|features s|total s|x realtime|vs naive")


def naive_features(y: np.ndarray, sr: int = features.SAMPLE_RATE) -> np.ndarray:
    """The untuned feature set: librosa's defaults, one call (and STFT) per feature."""
    f = librosa.feature
    frames = [
        f.mfcc(y=y, sr=sr, n_mfcc=20), f.chroma_stft(y=y, sr=sr),
        f.spectral_contrast(y=y, sr=sr), f.tonnetz(y=y, sr=sr),
        f.spectral_centroid(y=y, sr=sr), f.spectral_bandwidth(y=y, sr=sr),
        f.spectral_rolloff(y=y, sr=sr), f.spectral_flatness(y=y),
        f.zero_crossing_rate(y), f.rms(y=y),
    ]  # fmt: skip
    tempo = f.tempo(onset_envelope=librosa.onset.onset_strength(y=y, sr=sr), sr=sr)
    stats = [np.concatenate([m.mean(axis=1), m.std(axis=1)]) for m in frames]
    return np.concatenate([*stats, tempo])


@dataclass
class Row:
    format: str
    seconds: float
    decode_s: float
    features_s: float
    total_s: float = 0.0
    realtime: float = 0.0
    vs_naive: float = 0.0


def _median_seconds(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def measure(
    seconds: Sequence[float], formats: Sequence[str], repeats: int, work: Path
) -> list[Row]:
    """One row per (clip length, format), and one naive row per clip length (on the wav,
    which is measured whether or not ``formats`` asks for it)."""
    formats = ["wav", *(f for f in formats if f != "wav")]
    ffmpeg = find_ffmpeg()
    if ffmpeg is None:
        raise BenchError("no ffmpeg")
    features.warm_up()
    rows: list[Row] = []
    for length in seconds:
        say(f"{length:g} s clip: generating and encoding {', '.join(formats)}")
        song = audiogen.song(length, seed=0, sr=SOURCE_SR)
        per_length = []
        for fmt in formats:
            path = audiogen.write(work / f"song-{length:g}.{fmt}", song, SOURCE_SR)
            dec_s, y = _median_seconds(partial(decode, path, ffmpeg=ffmpeg), repeats)
            feat_s, _ = _median_seconds(partial(features.extract, y), repeats)
            per_length.append(Row(fmt, length, dec_s, feat_s))
        say(f"{length:g} s clip: naive features")
        wav = decode(work / f"song-{length:g}.wav", ffmpeg=ffmpeg)
        naive_s, _ = _median_seconds(partial(naive_features, wav), repeats)
        per_length.append(Row("naive (wav)", length, per_length[0].decode_s, naive_s))
        for row in per_length:
            row.total_s = row.decode_s + row.features_s
            row.realtime = length / row.total_s
            row.vs_naive = row.features_s / naive_s
        rows += per_length
    return rows


def render(rows: list[Row]) -> list[str]:
    body = [
        [r.format, f"{r.seconds:g}", f"{r.decode_s:.3f}", f"{r.features_s:.3f}",
         f"{r.total_s:.3f}", f"{r.realtime:.0f}", f"{r.vs_naive:.2f}"]
        for r in rows
    ]  # fmt: skip
    return table(HEADERS, body)


def clip_table(
    seconds: Sequence[float] = (30.0, 180.0),
    formats: Sequence[str] = ("wav", "mp3", "ogg", "opus"),
    repeats: int = 5,
) -> list[str]:
    """Measure and return the table's lines. Call it from a process started with the
    thread variables at 1 (see ``one_core``), or the figures are not for one core."""
    with tempfile.TemporaryDirectory(prefix="bench-audio-") as work:
        return render(measure(seconds, formats, repeats, Path(work)))


def one_core() -> str:
    """Pin this process to one CPU and check, once the libraries are loaded, that they use
    one thread; a description of the setup for the report."""
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    features.warm_up()  # loads librosa, scipy and numba, and their thread pools
    import numba
    from threadpoolctl import threadpool_info

    pools = {f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info()}
    pools.add(f"numba={numba.get_num_threads()}")
    if any(not pool.endswith("=1") for pool in pools):
        raise BenchError(f"thread pools not at 1 thread: {sorted(pools)}")
    return f"pinned to CPU {cpu}; thread pools: {', '.join(sorted(pools)) or 'none'}"


def _clips(args: argparse.Namespace, argv: list[str] | None) -> int:
    """The clip table, in this process pinned to one CPU (re-executed with one thread)."""
    if any(os.environ.get(var) != "1" for var in THREAD_VARS):
        env = {**os.environ, **dict.fromkeys(THREAD_VARS, "1")}
        argv_out = sys.argv[1:] if argv is None else argv
        os.execve(sys.executable, [sys.executable, "-m", "bench.audio", *argv_out], env)
    setup = one_core()
    seconds = [float(s) for s in args.seconds.split(",")]
    formats = args.formats.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-audio-") as work:
        rows = measure(seconds, formats, args.repeats, Path(work))
    print(f"Audio per clip: median of {args.repeats} after a warm-up; {setup}")
    print(f"feature version {features.FEATURE_VERSION}, {features.DIMS} dims")
    print("\n".join(render(rows)))
    print("(x realtime = clip s / total s; vs naive = features s / naive features s, same clip)")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(
        json.dumps(
            {"setup": setup, "repeats": args.repeats, "rows": [asdict(r) for r in rows]}, indent=1
        )
    )
    return 0


def _clips_child(args: argparse.Namespace) -> None:
    """The clip table from a child process: pinning this one would pin the services too."""
    argv = [sys.executable, "-m", "bench.audio", "--only", "clips", "--seconds", args.seconds,
            "--formats", args.formats, "--repeats", str(args.repeats)]  # fmt: skip
    child = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=1800, check=False)
    if child.returncode != 0:
        raise BenchError(f"the clip table failed (exit {child.returncode})")
    print(child.stdout, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.audio", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--only", choices=PARTS, help="one table (default: all three)")
    parser.add_argument("--seconds", default="30,180", help="clips: lengths (s), comma-separated")
    parser.add_argument("--formats", default="wav,mp3,ogg,opus", help="clips: formats")
    parser.add_argument("--repeats", type=int, default=5, help="clips: timed runs (default 5)")
    parser.add_argument("--tracks", type=int, default=40, help="pipeline: clips (default 40)")
    parser.add_argument("--workers", type=parse_workers, default=[1, 2],
                        help="pipeline: worker counts, one run each (default 1,2)")  # fmt: skip
    parser.add_argument("--tracks-per-task", type=int, default=4,
                        help="pipeline: TRACKS_PER_TASK (default 4)")  # fmt: skip
    parser.add_argument("--job-timeout", type=float, default=300.0,
                        help="pipeline: seconds a job may take (default 300)")  # fmt: skip
    parser.add_argument("--vectors", type=int, default=100_000,
                        help="similarity: stored vectors (default 100000)")  # fmt: skip
    parser.add_argument("--queries", type=int, default=200,
                        help="similarity: timed top_k queries (default 200)")  # fmt: skip
    parser.add_argument("--worker-threads", type=int, metavar="N",
                        help="pipeline: the workers' OMP/OPENBLAS/MKL_NUM_THREADS (default:"
                        " unset, as deployed)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="pipeline: keep the temp dir")
    parser.add_argument("--snapshot", action="store_true",
                        help="pipeline: run the services from a copy of the source tree"
                        " made at the start: edits during the run cannot affect them")  # fmt: skip
    args = parser.parse_args(argv)
    if min(args.tracks, args.tracks_per_task, args.vectors, args.queries,
           args.worker_threads or 1) < 1:  # fmt: skip
        parser.error("--tracks, --tracks-per-task, --vectors and --queries must be positive")
    if args.only == "clips":
        return _clips(args, argv)
    began = time.perf_counter()
    try:
        if args.only is None:
            _clips_child(args)
        with PostgresServer() as pg:
            if args.only in (None, "pipeline"):
                _write(OUT_PIPELINE, audio_pipeline.bench(pg, args))
            if args.only in (None, "similarity"):
                rows, notes = similarity.measure(pg, args.vectors, args.queries)
                print("\n".join(similarity.render(rows, notes)) + "\n", flush=True)
                _write(OUT_SIMILARITY, {"rows": [asdict(r) for r in rows]})
    except BenchError as exc:
        say(f"FAILED: {exc}")
        return 1
    say(f"the audio benchmark took {time.perf_counter() - began:.0f}s")
    return 0


def _write(path: Path, report: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
