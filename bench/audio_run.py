"""One run of the audio pipeline benchmark: fresh services, two audio jobs, their figures.

Web and dispatcher start on a fresh database and QUEUE_PREFIX (shared RabbitMQ and
PostgreSQL servers); once they are ready, W workers start and are timed until the task
queue has W consumers (start-up). Then two audio jobs, one after the other, each timed from
its POST to ``jobs.finished_at``; each must complete with every track vectorized, with the
vectors that the caller computed. ``Others`` measures the CPU time that the rest of the
machine took meanwhile, so that a figure taken on a busy machine says so.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psycopg

from bench.backends import RabbitBackend
from bench.procfs import cpu_seconds, machine_cpu
from bench.run import create_database
from bench.services import (
    READY_TIMEOUT,
    BenchError,
    Service,
    accounts_env,
    admin_headers,
    check,
    deadline_loop,
    say,
    server_cpu_seconds,
    service_env,
    stop_all,
    wait_ready,
)
from libs.common.audio import layout
from tests.servers import PostgresServer, free_port

ROOT = Path(__file__).resolve().parents[1]
POLL_SECONDS, SHUTDOWN_GRACE, MAX_VECTOR_DIFF = 0.2, 5, 1e-4


@dataclass
class Setup:
    """What the runs share."""

    pg: PostgresServer
    work: Path  # the temp folder: clips, logs, storage, scratch
    per_task: int  # TRACKS_PER_TASK
    timeout: float  # seconds a job may take
    worker_env: dict[str, str]  # more variables for the workers (their thread pools)
    code: Path = ROOT  # the services' source tree: this one, or a snapshot of it


@dataclass
class Job:
    name: str  # "cold" or "warm"
    workers: int
    tracks: int
    seconds: float  # POST to jobs.finished_at
    worker_cpu_s: float  # the workers and their ffmpeg children
    first_result_s: list[float]  # per worker: POST to its first task's result
    task_s: float | None  # median time between one worker's consecutive results
    startup_s: float | None = None  # the workers' start-up (on the run's first job)
    max_vector_diff: float = 0.0  # against the serial baseline's vectors
    others_cpu_s: float | None = None  # other processes' CPU time during the job


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Others:
    """The CPU time that processes not ours used from its creation to ``seconds()``: the
    machine's busy time (/proc/stat) less this process's (with its reaped children), the
    ``services``' (with theirs) and the test ``servers``'."""

    def __init__(self, services: Sequence[Service] = (), servers: Sequence[object] = ()) -> None:
        self.services, self.servers = services, servers
        self.start = self._read()

    def _read(self) -> tuple[float, float] | None:
        machine = machine_cpu()
        ours = own_cpu() + sum(server_cpu_seconds(x) for x in self.servers)
        ours += sum(cpu_seconds(s.proc.pid, children=True) or 0.0 for s in self.services)
        return None if machine is None else (machine.busy, ours)

    def seconds(self) -> float | None:
        end = self._read()
        if self.start is None or end is None:
            return None
        return max(0.0, (end[0] - self.start[0]) - (end[1] - self.start[1]))


def contention(what: str, others: float | None, window: float) -> list[str]:
    """A NOTE when other processes took over a fifth of the machine during ``window`` s."""
    cpus = os.cpu_count() or 1
    if others is None or others <= 0.2 * window * cpus:
        return []
    return [f"NOTE: other processes used {others:.1f} CPU-s during {what} ({window:.1f} s on"
            f" {cpus} CPUs): its figures are inflated by contention."]  # fmt: skip


def run(setup: Setup, backend: RabbitBackend, folder: Path, vectors: dict[str, bytes],
        workers: int, run_no: int) -> list[Job]:  # fmt: skip
    """Fresh services with ``workers`` workers; the job on ``folder/cold``, then the one on
    ``folder/warm``; ``vectors``: the file name -> vector that every job must store."""
    prefix, work, code = f"audio_{run_no}_w{workers}", setup.work, setup.code
    env = service_env(
        DATABASE_URL=create_database(setup.pg.url, prefix), PORT=str(port := free_port()),
        LOG_LEVEL="WARNING", QUEUE_PREFIX=prefix, SHUTDOWN_GRACE_SECONDS=str(SHUTDOWN_GRACE),
        TRACKS_PER_TASK=str(setup.per_task), AUDIO_ROOTS=folder.as_uri() + "/",
        WORK_DIR=str(work / f"scratch-{prefix}"), **backend.base_env(prefix, work),
        **accounts_env(),
    )  # fmt: skip
    logs = work / f"logs-{prefix}"
    logs.mkdir()
    services: list[Service] = []
    try:
        headers = admin_headers(env, code)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30.0
        ) as client:
            for role in ("web", "dispatcher"):
                services.append(Service.start(role, f"services.{role}", env, logs, code))
            wait_ready(client, services)
            for _ in deadline_loop(READY_TIMEOUT, 0.2, "the dispatcher to declare the queues"):
                check(services)
                if backend.queues_declared(prefix):
                    break
            started = time.perf_counter()
            names = [f"worker{i}" for i in range(1, workers + 1)]
            crew = [Service.start(n, "services.worker", {**env, **setup.worker_env}, logs, code,
                                  ["--name", n]) for n in names]  # fmt: skip
            services += crew
            for _ in deadline_loop(READY_TIMEOUT, 0.1, f"{workers} workers to consume"):
                check(services)
                if backend.workers_consuming(prefix, crew):
                    break
            startup = time.perf_counter() - started
            say(f"  {workers} worker(s) consuming {startup:.1f}s after their start")
            dsn = setup.pg.dsn(prefix)
            servers = (setup.pg, backend.server)
            jobs = [_job(client, services, crew, dsn, folder / name, name, setup.timeout,
                         vectors, servers) for name in ("cold", "warm")]  # fmt: skip
            jobs[0].startup_s = startup
            return jobs
    except BaseException:
        for service in services:
            say(f"--- {service.name} log tail ({service.log}):\n{service.tail()}")
        raise
    finally:
        stop_all(services)
        backend.cleanup(prefix, work)


def _job(client: httpx.Client, services: list[Service], crew: list[Service], dsn: str,
         folder: Path, name: str, timeout: float, vectors: dict[str, bytes],
         servers: Sequence[object]) -> Job:  # fmt: skip
    def crew_cpu() -> float:
        return sum(cpu_seconds(w.proc.pid, children=True) or 0.0 for w in crew)

    cpu0, post_wall, others = crew_cpu(), time.time(), Others(services, servers)
    response = client.post("/api/jobs/audio", json={"prefix": folder.as_uri() + "/"})
    if response.status_code != 202:
        raise BenchError(f"POST /api/jobs/audio: {response.status_code} {response.text[:500]}")
    job_id = response.json()["id"]
    for _ in deadline_loop(timeout, POLL_SECONDS, f"audio job {job_id} to end"):
        check(services)
        try:
            view = client.get(f"/api/jobs/{job_id}").raise_for_status().json()
        except httpx.TransportError:
            continue
        if view["state"] in ("completed", "failed", "cancelled"):
            break
    cpu, others_cpu = crew_cpu() - cpu0, others.seconds()
    rows, n = view["progress"]["rows"], len(vectors)
    counts = (rows["total"], rows["done"], rows["failed"], rows["filtered"])
    if view["state"] != "completed" or counts != (n, n, 0, 0):
        raise BenchError(f"job {job_id} {view['state']} ({view.get('error')}): rows {rows}")
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        finished = conn.execute("SELECT finished_at FROM jobs WHERE id = %s", (job_id,)).fetchone()
        results = conn.execute(
            "SELECT worker, finished_at FROM tasks WHERE job_id = %s ORDER BY finished_at",
            (job_id,),
        ).fetchall()
        tracks = conn.execute(
            "SELECT location, vector FROM tracks WHERE location LIKE %s AND state = 'vectorized'"
            " AND vector_version = %s", (folder.as_uri() + "/%", layout.FEATURE_VERSION),
        ).fetchall()  # fmt: skip
    assert finished is not None
    diff = _vector_diff({Path(loc).name: bytes(v) for loc, v in tracks}, vectors)
    by_worker: dict[str, list[float]] = {}
    for worker, at in results:
        by_worker.setdefault(worker, []).append(at - post_wall)
    gaps = [b - a for times in by_worker.values() for a, b in itertools.pairwise(times)]
    job = Job(name, len(crew), n, finished[0] - post_wall, cpu,
              [times[0] for _, times in sorted(by_worker.items())],
              statistics.median(gaps) if gaps else None, max_vector_diff=diff,
              others_cpu_s=others_cpu)  # fmt: skip
    say(f"  {name} job: {job.seconds:.2f}s, {n / job.seconds:.1f} tracks/s")
    return job


def _vector_diff(got: dict[str, bytes], want: dict[str, bytes]) -> float:
    """The largest element difference from the baseline's vectors; BenchError if one is
    missing or differs by more than ``MAX_VECTOR_DIFF``."""
    if got.keys() != want.keys():
        raise BenchError(f"vectorized {len(got)} tracks, expected {len(want)}: {sorted(got)}")
    diff = max(float(np.abs(np.frombuffer(got[k], "<f4") - np.frombuffer(want[k], "<f4")).max())
               for k in want)  # fmt: skip
    if diff > MAX_VECTOR_DIFF:
        raise BenchError(f"a worker's vector differs from the baseline's by {diff:.2g}")
    return diff
