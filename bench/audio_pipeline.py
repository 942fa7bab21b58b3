"""The music workload end to end: tracks per second on RabbitMQ + PostgreSQL, local files.

Run by ``python -m bench.audio`` (``--only pipeline``). ``--tracks`` distinct 30 s songs
(``tests.audiogen.song(30, seed=i)`` at 44.1 kHz, mp3, ogg and wav in turn) go into
``cold/`` of a temp folder, with hard links to them in ``warm/`` (other URLs, so other
tracks: the same work once more). The serial baseline makes the worker's calls (decode, then
features) on every file, one after the other, in this process on one CPU. Then one run per
worker count (``bench.audio_run``): fresh services, the ``cold/`` job (each worker's first
track pays librosa's lazy imports and numba's cache load), then the ``warm/`` one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from bench.audio_run import Job, Others, Setup, contention, own_cpu, run
from bench.backends import RabbitBackend
from bench.csv_pipeline import git_revision, snapshot_code
from bench.report import cols, table
from bench.services import PYTHON, BenchError, say, service_env, work_dir
from libs.common.audio import decode, features, layout
from libs.common.settings import Settings
from tests import audiogen
from tests.servers import PostgresServer, RabbitMQServer

CLIP_SECONDS, SOURCE_SR, FORMATS = 30.0, 44100, ("mp3", "ogg", "wav")
BLAS_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # --worker-threads
HEADERS = cols("job|workers|tracks|start-up s|seconds|tracks/s|vs 1w|vs serial|CPU s/track|"
               "1st result s|s/task")  # fmt: skip
FIRST_EXTRACT = (
    "import time; from libs.common.audio import features as f; t = time.perf_counter(); "
    "f.warm_up(); print(time.perf_counter() - t)"
)


@dataclass
class Serial:
    tracks: int
    seconds: float
    cpu_s: float  # this process and its ffmpeg children
    fresh_first_s: float = 0.0  # a new process's first extract (2 s of audio)
    others_cpu_s: float | None = None  # other processes' CPU time meanwhile
    vectors: dict[str, bytes] = field(default_factory=dict, repr=False)


def make_clips(folder: Path, count: int) -> list[Path]:
    """``count`` distinct songs in ``folder/cold``, hard-linked into ``folder/warm``."""
    cold, warm = folder / "cold", folder / "warm"
    cold.mkdir(parents=True)
    warm.mkdir()

    def one(i: int) -> Path:
        path = cold / f"track-{i:03d}.{FORMATS[i % len(FORMATS)]}"
        audiogen.write(path, audiogen.song(CLIP_SECONDS, seed=i, sr=SOURCE_SR), SOURCE_SR)
        os.link(path, warm / path.name)
        return path

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(one, range(count)))


def serial(paths: list[Path], ffmpeg: str, code: Path) -> Serial:
    """The worker's calls on each file in turn, warm, on one CPU with one-thread pools."""
    features.warm_up()
    max_seconds = Settings().audio_analysis_seconds or None
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})  # ffmpeg inherits it
    try:
        with threadpool_limits(1):
            started, cpu0, others = time.perf_counter(), own_cpu(), Others()
            vectors = {}
            for path in paths:
                y = decode.decode(path, ffmpeg=ffmpeg, sample_rate=layout.SAMPLE_RATE,
                                  max_seconds=max_seconds)  # fmt: skip
                vector = features.extract(y, layout.SAMPLE_RATE).vector
                vectors[path.name] = vector.astype("<f4").tobytes()
            result = Serial(len(paths), time.perf_counter() - started, own_cpu() - cpu0)
            result.others_cpu_s = others.seconds()
    finally:
        os.sched_setaffinity(0, affinity)
    result.vectors = vectors
    proc = subprocess.run([PYTHON, "-c", FIRST_EXTRACT], cwd=code, env=service_env(),
                          capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    result.fresh_first_s = float(proc.stdout)
    return result


def measure(setup: Setup, tracks: int, workers: list[int]) -> tuple[Serial, list[Job]]:
    """Clips, the serial baseline, then one run per worker count on one RabbitMQ server."""
    ffmpeg = decode.find_ffmpeg()
    if ffmpeg is None:
        raise BenchError("no ffmpeg")
    say(f"generating {tracks} clips of {CLIP_SECONDS:g} s")
    folder = setup.work / "music"
    paths = make_clips(folder, tracks)
    say("serial baseline: decode + features, one CPU")
    base = serial(paths, ffmpeg, setup.code)
    say(f"  {base.seconds:.2f}s, {base.tracks / base.seconds:.1f} tracks/s")
    say("starting RabbitMQ")
    jobs: list[Job] = []
    with RabbitMQServer() as rabbit:
        backend = RabbitBackend(rabbit)
        for run_no, count in enumerate(workers, start=1):
            say(f"pipeline run {run_no}: {count} worker(s)")
            jobs += run(setup, backend, folder, base.vectors, count, run_no)
    return base, jobs


def bench(pg: PostgresServer, args: argparse.Namespace) -> dict[str, Any]:
    """``measure`` with ``python -m bench.audio``'s options; print the table, return the
    figures for the JSON report."""
    threads = args.worker_threads
    worker_env = {} if threads is None else dict.fromkeys(BLAS_VARS, str(threads))
    with work_dir("bench-audio-pipeline-", args.keep) as work:
        setup = Setup(pg, work, args.tracks_per_task, args.job_timeout, worker_env)
        if args.snapshot:
            setup.code = snapshot_code(work)
            say(f"the services run the code copied to {setup.code}")
        base, jobs = measure(setup, args.tracks, args.workers)
    lines = render(base, jobs, args.tracks_per_task, worker_env)
    print("\n".join(lines) + "\n", flush=True)
    serial = {k: v for k, v in base.__dict__.items() if k != "vectors"}
    meta = {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "git": git_revision(),
            "cpus": os.cpu_count(), "tracks_per_task": args.tracks_per_task,
            "worker_env": worker_env, "snapshot": args.snapshot}  # fmt: skip
    return {"meta": meta, "serial": serial, "jobs": [asdict(j) for j in jobs]}


def render(base: Serial, jobs: list[Job], per_task: int, worker_env: dict[str, str]) -> list[str]:
    base_rate = base.tracks / base.seconds
    rows = [["serial", "-", str(base.tracks), "-", f"{base.seconds:.2f}", f"{base_rate:.1f}",
             "-", "1.00", f"{base.cpu_s / base.tracks:.3f}", "-", "-"]]  # fmt: skip
    one = {j.name: j for j in jobs if j.workers == 1}
    for j in sorted(jobs, key=lambda j: (j.name != "cold", j.workers)):
        rate = j.tracks / j.seconds
        vs_1w = f"{rate / (one[j.name].tracks / one[j.name].seconds):.2f}" if one else "-"
        rows.append(
            [j.name, str(j.workers), str(j.tracks),
             "-" if j.startup_s is None else f"{j.startup_s:.1f}", f"{j.seconds:.2f}",
             f"{rate:.1f}", vs_1w, f"{rate / base_rate:.2f}", f"{j.worker_cpu_s / j.tracks:.3f}",
             "/".join(f"{s:.1f}" for s in j.first_result_s),
             "-" if j.task_s is None else f"{j.task_s:.2f}"]
        )  # fmt: skip
    note = (
        "(serial = decode + features in this process on one CPU, warm; cold = the workers'"
        " first job, warm = the same files again under other URLs; seconds = POST to"
        " jobs.finished_at; start-up = worker processes started until the task queue had them"
        " all as consumers; 1st result s = POST to each worker's first task result; s/task ="
        " median time between one worker's results; a new process's first extract took"
        f" {base.fresh_first_s:.1f}s; largest difference of a stored vector from the serial"
        f" one: {max(j.max_vector_diff for j in jobs):.2g})"
    )
    head = (
        f"Audio pipeline: {base.tracks} x {CLIP_SECONDS:g} s clips ({'/'.join(FORMATS)}),"
        f" TRACKS_PER_TASK={per_task}, RabbitMQ + PostgreSQL, {os.cpu_count()} CPUs"
        + "".join(f", workers' {k}={v}" for k, v in worker_env.items())
    )
    notes = contention("the serial baseline", base.others_cpu_s, base.seconds)
    for j in jobs:
        notes += contention(f"the {j.name} {j.workers}-worker job", j.others_cpu_s, j.seconds)
    return [
        *textwrap.wrap(head, width=100),
        *table(HEADERS, rows),
        *textwrap.wrap(note, width=100),
        *notes,
    ]
