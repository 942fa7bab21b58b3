"""One pipeline run: fresh services on a shared broker and database, one job, its figures."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from bench import data, traffic
from bench.backends import Backend, Meter, task_queue_name
from bench.procfs import loadavg, machine_cpu
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
    server_peak_rss_kib,
    service_env,
    stop_all,
    wait_ready,
)
from libs.common import topology
from tests.servers import PostgresServer, free_port

POLL_SECONDS = 0.5
SHUTDOWN_GRACE = 5  # SHUTDOWN_GRACE_SECONDS for the services, so SIGTERM is quick


@dataclass
class RunResult:
    broker: str
    workers: int
    rows: int
    seconds: float = 0.0
    upload_seconds: float = 0.0
    post_wall: float = 0.0  # time.time() at the POST, to place the services' timestamps
    # Seconds from the POST to the first poll that saw: a task done, the fan-out complete,
    # every task done (then the dispatcher composes the output and completes the job).
    first_task_seen_seconds: float | None = None
    fanout_seen_seconds: float | None = None
    all_tasks_seen_seconds: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    job_times: dict[str, float | None] = field(default_factory=dict)  # DB, from the POST
    row_errors_total: int | None = None
    output_bytes: int = 0
    output_sha256: str = ""
    processes: list[dict[str, Any]] = field(default_factory=list)
    meter: dict[str, Any] | None = None  # the metering proxy's own figures (SQS runs)
    traffic: dict[str, Any] | None = None  # what it measured (bench.traffic.summarize)
    broker_job_cpu_s: float = 0.0  # RabbitMQ, or moto (SQS and S3): POST to output checked
    broker_peak_rss_kib: int | None = None  # largest VmHWM of its processes, since it started
    postgres_job_cpu_s: float = 0.0
    window_seconds: float = 0.0  # from the POST to the last /proc sample (CPU figures' window)
    machine_busy_cpu_s: float | None = None  # all processes on the machine, POST to end
    machine_steal_s: float | None = None
    bench_cpu_s: float | None = None  # this benchmark's own process (polling, hashing)
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)


def create_database(server_url: str, name: str) -> str:
    """CREATE DATABASE ``name`` on the server of ``server_url``; return the new database's URL."""
    url = make_url(server_url)
    with psycopg.connect(dsn(server_url), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return url.set(database=name).render_as_string(hide_password=False)


def dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class _Processes:
    """The run's service processes (and the metering proxy), started with the run's env."""

    backend: Backend
    env: dict[str, str]
    logs: Path
    code: Path
    services: list[Service] = field(default_factory=list)
    meter: Meter | None = None

    @property
    def everything(self) -> list[Service]:
        return self.services + ([self.meter.service] if self.meter else [])

    def start(self, role: str, module: str) -> Service:
        env = {**self.env, **self.backend.process_env(role, self.meter)}
        service = Service.start(role, module, env, self.logs, self.code)
        self.services.append(service)
        return service

    def bring_up(self, client: httpx.Client, prefix: str, workers: int) -> None:
        names = [f"worker{i}" for i in range(1, workers + 1)]
        self.meter = self.backend.start_meter(["web", "dispatcher", *names], self.logs, self.code)
        self.start("web", "services.web")
        self.start("dispatcher", "services.dispatcher")
        wait_ready(client, self.services)
        # The dispatcher declares the topology (the shared pool's task queue among it).
        for _ in deadline_loop(READY_TIMEOUT, 0.2, "the dispatcher to declare the queues"):
            check(self.services)
            if self.backend.queues_declared(prefix):
                break
        started = [self.start(name, "services.worker") for name in names]
        for _ in deadline_loop(READY_TIMEOUT, 0.2, f"{workers} workers to consume"):
            check(self.services)
            if self.backend.workers_consuming(prefix, started):
                break


def run_pipeline(
    *,
    run_no: int,
    workers: int,
    source: Path,
    args: argparse.Namespace,
    backend: Backend,
    pg: PostgresServer,
    work: Path,
) -> RunResult:
    result = RunResult(broker=backend.name, workers=workers, rows=args.rows, load_before=loadavg())
    prefix = f"bench_{run_no}_{backend.name}_w{workers}"
    database_url = create_database(pg.url, prefix)
    logs = work / f"logs-{prefix}"
    logs.mkdir()
    port = free_port()
    env = service_env(
        DATABASE_URL=database_url,
        PORT=str(port),
        CHUNK_ROWS=str(args.chunk_rows),
        LOG_LEVEL="WARNING",
        QUEUE_PREFIX=prefix,  # a fresh topology per run on the shared broker
        SHUTDOWN_GRACE_SECONDS=str(SHUTDOWN_GRACE),
        **backend.base_env(prefix, work),
        **accounts_env(),
    )
    procs = _Processes(backend, env, logs, args.code)
    try:
        headers = admin_headers(env, args.code)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers,
                          timeout=httpx.Timeout(30.0, connect=5.0)) as client:  # fmt: skip
            procs.bring_up(client, prefix, workers)
            say(f"run {run_no}: web, dispatcher and {workers} worker(s) up; uploading")
            job_id = _measure(client, procs, pg, source, args, result)
        result.processes = [s.figures() for s in procs.services]
        result.load_after = loadavg()
        stop_all(procs.services)
        source_key, tasks = job_rows(database_url, job_id, result)
        if procs.meter is not None:
            result.meter = procs.meter.service.figures()
            stop_all([procs.meter.service])
            result.traffic = traffic.summarize(
                procs.meter.log,
                sqs_listeners=procs.meter.sqs_listeners,
                input_path=backend.object_path(prefix, source_key) or "",
                input_bytes=source.stat().st_size,
                tasks=tasks,
                publisher="dispatcher-sqs",
                task_queue=topology.sqs_name(task_queue_name(prefix)),
                post_wall=result.post_wall,
            )
        backend.cleanup(prefix, work)
        return result
    except BaseException:
        for service in procs.everything:
            say(f"--- {service.name} log tail ({service.log}):\n{service.tail()}")
        if backend.storage_kind == "s3":  # moto holds it in memory; a folder is kept to look at
            stop_all(procs.everything)
            with contextlib.suppress(Exception):
                backend.cleanup(prefix, work)
        raise
    finally:
        stop_all(procs.everything)


def _measure(
    client: httpx.Client,
    procs: _Processes,
    pg: PostgresServer,
    source: Path,
    args: argparse.Namespace,
    result: RunResult,
) -> str:
    """Run the job and check its output, with CPU readings around it; the job's id."""
    server = procs.backend.server
    for service in procs.everything:
        service.mark_post()
    broker_cpu0, pg_cpu0 = server_cpu_seconds(server), server_cpu_seconds(pg)
    machine0, self0, window0 = machine_cpu(), time.process_time(), time.perf_counter()
    job_id = run_job(client, source, args, result, procs.services)
    verify_output(client, job_id, result)
    for service in procs.everything:
        check([service])
        service.sample()
    result.window_seconds = time.perf_counter() - window0
    result.broker_job_cpu_s = server_cpu_seconds(server) - broker_cpu0
    result.broker_peak_rss_kib = server_peak_rss_kib(server)
    result.postgres_job_cpu_s = server_cpu_seconds(pg) - pg_cpu0
    result.bench_cpu_s = time.process_time() - self0
    machine1 = machine_cpu()
    if machine0 is not None and machine1 is not None:
        result.machine_busy_cpu_s = (machine1 - machine0).busy
        result.machine_steal_s = (machine1 - machine0).steal
    return job_id


def job_rows(
    database_url: str, job_id: str, result: RunResult
) -> tuple[str, list[tuple[int, int, int]]]:
    """The job's input key and its tasks' (seq, start, end); its timestamps into ``result``."""
    with psycopg.connect(dsn(database_url), connect_timeout=10) as conn:
        job = conn.execute(
            "SELECT source, created_at, started_at, finished_at FROM jobs WHERE id = %s",
            (job_id,),
        ).fetchone()
        tasks = conn.execute(
            'SELECT seq, start, "end" FROM tasks WHERE job_id = %s ORDER BY seq', (job_id,)
        ).fetchall()
    if job is None:
        raise BenchError(f"job {job_id} is not in the database")
    names = ("created", "fanout_started", "finished")
    result.job_times = {
        name: None if ts is None else ts - result.post_wall
        for name, ts in zip(names, job[1:], strict=True)
    }
    return str(job[0]), [(int(s), int(a), int(b)) for s, a, b in tasks]


def run_job(
    client: httpx.Client,
    source: Path,
    args: argparse.Namespace,
    result: RunResult,
    services: list[Service],
    *,
    pool: str | None = None,
    on_mark: Callable[[str], None] | None = None,
) -> str:
    """POST the CSV job (to ``pool``, else the shared pool) and poll it until completed.
    ``on_mark`` is called with ``"accepted"`` right after the POST's response and with
    ``"completed"`` right after the poll that saw the job completed."""
    mark = on_mark or (lambda _what: None)
    form = {"mapping": data.SPEC_JSON, **({"pool": pool} if pool else {})}
    with open(source, "rb") as f:
        result.post_wall, started = time.time(), time.perf_counter()
        response = client.post(
            "/api/jobs/csv",
            files={"file": (source.name, f, "text/csv")},
            data=form,
            timeout=httpx.Timeout(args.job_timeout, connect=5.0),
        )
    result.upload_seconds = time.perf_counter() - started
    if response.status_code != 202:
        raise BenchError(f"POST /api/jobs/csv: {response.status_code} {response.text[:500]}")
    mark("accepted")
    job_id: str = response.json()["id"]
    say(f"job {job_id} accepted after {result.upload_seconds:.1f}s (upload); polling")
    last_report = time.monotonic()
    for _ in deadline_loop(args.job_timeout, POLL_SECONDS, f"job {job_id} to complete"):
        check(services)
        try:
            view = client.get(f"/api/jobs/{job_id}").raise_for_status().json()
        except httpx.TransportError as exc:  # e.g. a read timeout on a starved machine
            say(f"  GET /api/jobs/{job_id}: {type(exc).__name__}; polling on")
            continue
        elapsed = time.perf_counter() - started
        progress = view["progress"]
        tasks = progress["tasks"]
        if tasks["done"] and result.first_task_seen_seconds is None:
            result.first_task_seen_seconds = elapsed
        if progress["fanout_complete"] and result.fanout_seen_seconds is None:
            result.fanout_seen_seconds = elapsed
        if (
            progress["fanout_complete"]
            and tasks["done"] + tasks["failed"] >= tasks["total"]
            and result.all_tasks_seen_seconds is None
        ):
            result.all_tasks_seen_seconds = elapsed
        if view["state"] == "completed":
            mark("completed")
            result.seconds = elapsed
            result.progress = progress
            return job_id
        if view["state"] in ("failed", "cancelled"):
            raise BenchError(f"job {job_id} {view['state']}: {view.get('error')}")
        if time.monotonic() - last_report >= 10:
            last_report = time.monotonic()
            rows = progress["rows"]
            say(
                f"  {elapsed:6.1f}s {view['state']}: tasks {tasks['done']}/{tasks['total']},"
                f" rows done {rows['done']}+{rows['failed']} failed of {rows['total']}"
            )
    raise BenchError("unreachable")


def verify_output(client: httpx.Client, job_id: str, result: RunResult) -> None:
    digest = hashlib.sha256()
    size = 0
    with client.stream("GET", f"/api/jobs/{job_id}/output") as response:
        if response.status_code != 200:
            raise BenchError(f"GET output: {response.status_code} {response.read()[:300]!r}")
        for block in response.iter_bytes(1 << 20):
            digest.update(block)
            size += len(block)
    result.output_bytes = size
    result.output_sha256 = digest.hexdigest()
    errors = client.get(f"/api/jobs/{job_id}/errors", params={"limit": 1})
    result.row_errors_total = errors.raise_for_status().json()["total"]
