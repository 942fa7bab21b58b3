"""The worker gateway's cost: one paired worker through the web's WebSocket gateway against
the same worker consuming the broker directly, on the same CSV job.

    python -m bench.gateway [--rows 1000000] [--chunk-rows 5000] [--repeat 1]

Generates the CSV benchmark's input once (``bench.data``), runs the single-process baseline
on it (``bench.baseline``: the expected output and row counts), starts RabbitMQ and
PostgreSQL once, then per run fresh web and dispatcher processes (a fresh database, queue
prefix and storage folder), a pairing code (``POST /api/pairings``), and ONE paired worker
(``python -m services.worker --server URL --code CODE``) in its own config folder:

- ``gateway``: the web has no ``WORKER_BROKER_URL``, so the pairing answers
  ``transport: gateway`` and the worker takes its tasks over the WebSocket;
- ``direct``: the web has ``WORKER_BROKER_URL`` = the broker's URL, so the worker consumes
  its pool's queue itself.

In both the worker reads its chunks and writes its parts through the web (task URLs on
folder storage), so the difference between the two is the gateway. Each run uploads the
file to the pairing's pool, waits for the job, checks the output against the baseline's and
reads the processes' CPU time at the upload's answer and at completion. ``--repeat N``
alternates the order (gateway first, then direct first, ...). The tables go to stdout and
to ``bench/out/gateway-<rows>r-<chunk>c.txt``, the figures to the ``.json`` beside it.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import re
import secrets
import statistics
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench import data
from bench.backends import RabbitBackend
from bench.csv_pipeline import git_revision, run_baseline, snapshot_code
from bench.procfs import MachineCpu, cpu_seconds, machine_cpu, runqueue_wait_seconds
from bench.report import check_against_baseline, cols, table
from bench.run import (
    POLL_SECONDS,
    SHUTDOWN_GRACE,
    RunResult,
    create_database,
    dsn,
    job_rows,
    run_job,
    verify_output,
)
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
    work_dir,
)
from libs.common import settings as settings_module
from libs.common import topology
from tests.servers import PostgresServer, RabbitMQServer, free_port

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "bench" / "out"
MIB = 1024.0 * 1024.0
MODES = ("gateway", "direct")
TARGET = 0.8  # gateway rows/s / direct rows/s
WORKER_NAME = "gwbench"
# What the worker logs (INFO) once it takes tasks: the proof of its transport.
TRANSPORT_LINE = {
    "gateway": re.compile(rf"worker {WORKER_NAME}: connected as"),
    "direct": re.compile(rf"worker {WORKER_NAME}: consuming"),
}


@dataclass
class Mark:
    """CPU readings at one instant: our processes, the servers, the machine."""

    at: float
    procs: dict[str, float | None]
    waits: dict[str, float | None]  # runnable but waiting for a CPU (schedstat)
    rabbitmq: float
    postgres: float
    machine: MachineCpu | None
    bench: float


@dataclass
class ModeRun:
    mode: str
    repeat: int
    result: RunResult
    tasks: int = 0
    job_seconds: float = 0.0  # jobs.created_at (upload stored) -> jobs.finished_at
    attempts: int = 0  # sum of tasks.attempts (= tasks when each ran once)
    median_gap_ms: float | None = None  # between consecutive tasks.finished_at
    window_seconds: float = 0.0  # upload accepted -> completed seen (CPU window)
    cpu: dict[str, float | None] = field(default_factory=dict)  # in that window
    cpu_wait: dict[str, float | None] = field(default_factory=dict)  # waiting for a CPU
    others_cpu_s: float | None = None
    peak_rss_kib: dict[str, int | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.result.rows / self.job_seconds if self.job_seconds > 0 else 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "repeat": self.repeat, "rows": self.result.rows,
            "tasks": self.tasks, "job_seconds": self.job_seconds,
            "rows_per_s": self.rows_per_s, "wall_seconds": self.result.seconds,
            "upload_seconds": self.result.upload_seconds, "attempts": self.attempts,
            "median_gap_ms": self.median_gap_ms, "window_seconds": self.window_seconds,
            "cpu_s": self.cpu, "runqueue_wait_s": self.cpu_wait, "others_cpu_s": self.others_cpu_s,
            "peak_rss_kib": self.peak_rss_kib, "progress": self.result.progress,
            "job_times": self.result.job_times, "row_errors": self.result.row_errors_total,
            "output_bytes": self.result.output_bytes,
            "output_sha256": self.result.output_sha256,
            "processes": self.result.processes, "problems": self.problems,
        }  # fmt: skip


@dataclass
class Shared:
    """What every run uses: servers, input, baseline, options."""

    rabbit: RabbitMQServer
    pg: PostgresServer
    work: Path
    source: Path
    baseline: dict[str, Any]
    args: argparse.Namespace


# ---------------------------------------------------------------------------------- one run


def run_mode(shared: Shared, mode: str, repeat: int, run_no: int) -> ModeRun:
    args, backend = shared.args, RabbitBackend(shared.rabbit)
    prefix = f"gwbench_{run_no}_{mode}"
    logs = shared.work / f"logs-{prefix}"
    logs.mkdir()
    port = free_port()
    env = service_env(
        DATABASE_URL=create_database(shared.pg.url, prefix),
        PORT=str(port), CHUNK_ROWS=str(args.chunk_rows), LOG_LEVEL="WARNING",
        QUEUE_PREFIX=prefix, SHUTDOWN_GRACE_SECONDS=str(SHUTDOWN_GRACE),
        WORKER_TOKEN_KEY=secrets.token_hex(24),
        **backend.base_env(prefix, shared.work), **accounts_env(),
    )  # fmt: skip
    if mode == "direct":
        env["WORKER_BROKER_URL"] = shared.rabbit.url
    run = ModeRun(mode, repeat, RunResult(broker="rabbitmq", workers=1, rows=args.rows))
    services: list[Service] = []
    server = f"http://127.0.0.1:{port}"
    try:
        headers = admin_headers(env, args.code)  # the pairing code is asked for as the admin
        with httpx.Client(
            base_url=server, headers=headers, timeout=httpx.Timeout(30.0, connect=5.0)
        ) as client:
            services.append(Service.start("web", "services.web", env, logs, args.code))
            services.append(
                Service.start("dispatcher", "services.dispatcher", env, logs, args.code)
            )
            wait_ready(client, services)
            for _ in deadline_loop(READY_TIMEOUT, 0.2, "the dispatcher to declare the queues"):
                check(services)
                if backend.queues_declared(prefix):
                    break
            pool = _start_worker(client, services, shared, mode, prefix, server, logs)
            say(f"run {run_no} ({mode}): web, dispatcher and the paired worker up; uploading")
            job_id = _measure(client, services, shared, run, pool)
        run.result.processes = [s.figures() for s in services]
        _stop(services)
        _read_database(env["DATABASE_URL"], job_id, run)
        backend.cleanup(prefix, shared.work)
        return run
    except BaseException:
        for service in services:
            say(f"--- {service.name} log tail ({service.log}):\n{service.tail()}")
        raise
    finally:
        _stop(services)


def _stop(services: list[Service]) -> None:
    """The worker first, while the web is up (its stop needs its gateway or broker
    connection to hand back and say goodbye), then the web and the dispatcher."""
    stop_all([s for s in services if s.name == "worker"])
    stop_all(services)


def _start_worker(
    client: httpx.Client,
    services: list[Service],
    shared: Shared,
    mode: str,
    prefix: str,
    server: str,
    logs: Path,
) -> str:
    """Pair one worker (a code for a fresh pool) and wait until its pool's queue has a
    consumer and the worker says it takes tasks the way ``mode`` wants; the pool."""
    answer = client.post("/api/pairings", json={})
    if answer.status_code != 201:
        raise BenchError(f"POST /api/pairings: {answer.status_code} {answer.text[:300]}")
    code, pool = answer.json()["code"], answer.json()["pool"]
    config_dir = shared.work / f"config-{prefix}"
    env = service_env(
        CONVEYOR_CONFIG_DIR=str(config_dir), LOG_LEVEL="INFO",
        SHUTDOWN_GRACE_SECONDS=str(SHUTDOWN_GRACE),
    )  # fmt: skip
    argv = ["--server", server, "--code", code, "--name", WORKER_NAME, "--quiet"]
    worker = Service.start("worker", "services.worker", env, logs, shared.args.code, argv)
    services.append(worker)
    queue = topology.task_queue(prefix, pool, 1).name
    backend = RabbitBackend(shared.rabbit)
    for _ in deadline_loop(READY_TIMEOUT, 0.2, f"the paired worker to take tasks ({mode})"):
        check(services)
        info = backend.queue_info(queue)
        if info is not None and info[1] >= 1 and TRANSPORT_LINE[mode].search(worker.log_text()):
            break
    other = TRANSPORT_LINE["direct" if mode == "gateway" else "gateway"]
    if other.search(worker.log_text()):
        raise BenchError(f"the worker took tasks both ways ({mode} run):\n{worker.tail()}")
    return str(pool)


def _mark(services: list[Service], shared: Shared) -> Mark:
    return Mark(
        at=time.perf_counter(),
        procs={s.name: cpu_seconds(s.proc.pid) for s in services},
        waits={s.name: runqueue_wait_seconds(s.proc.pid) for s in services},
        rabbitmq=server_cpu_seconds(shared.rabbit),
        postgres=server_cpu_seconds(shared.pg),
        machine=machine_cpu(),
        bench=time.process_time(),
    )


def _measure(
    client: httpx.Client, services: list[Service], shared: Shared, run: ModeRun, pool: str
) -> str:
    marks: dict[str, Mark] = {}

    def on_mark(what: str) -> None:
        marks[what] = _mark(services, shared)

    job_id = run_job(
        client, shared.source, shared.args, run.result, services, pool=pool, on_mark=on_mark
    )
    verify_output(client, job_id, run.result)
    for service in services:
        check([service])
        service.sample()
    run.peak_rss_kib = {s.name: s.peak_rss_kib for s in services}
    start, end = marks["accepted"], marks["completed"]
    run.window_seconds = end.at - start.at
    run.cpu = {
        name: None if (a := start.procs.get(name)) is None or b is None else b - a
        for name, b in end.procs.items()
    }
    run.cpu_wait = {
        name: None if (a := start.waits.get(name)) is None or b is None else b - a
        for name, b in end.waits.items()
    }
    run.cpu["rabbitmq"] = end.rabbitmq - start.rabbitmq
    run.cpu["postgres"] = end.postgres - start.postgres
    if start.machine is not None and end.machine is not None:
        ours = sum(c or 0.0 for c in run.cpu.values()) + (end.bench - start.bench)
        run.others_cpu_s = max(0.0, (end.machine - start.machine).busy - ours)
    run.problems = check_against_baseline(run.result, shared.baseline)
    return job_id


def _read_database(database_url: str, job_id: str, run: ModeRun) -> None:
    """The job's timestamps (into ``run.result.job_times``), its tasks' finish times."""
    _source, tasks = job_rows(database_url, job_id, run.result)
    with psycopg.connect(dsn(database_url), connect_timeout=10) as conn:
        finished = conn.execute(
            "SELECT finished_at, attempts FROM tasks WHERE job_id = %s ORDER BY finished_at",
            (job_id,),
        ).fetchall()
    run.tasks = len(tasks)
    run.attempts = sum(int(a or 0) for _f, a in finished)
    times = [float(f) for f, _a in finished if f is not None]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    run.median_gap_ms = statistics.median(gaps) * 1000 if gaps else None
    created, finished_at = (run.result.job_times.get(k) for k in ("created", "finished"))
    if created is None or finished_at is None:
        raise BenchError(f"job {job_id} has no created_at/finished_at")
    run.job_seconds = finished_at - created
    if run.attempts != run.tasks:
        run.problems.append(f"tasks ran {run.attempts} times for {run.tasks} tasks (retries?)")


# ---------------------------------------------------------------------------------- report

THROUGHPUT = cols(
    "rep|mode|rows|tasks|job s|rows/s|vs direct|ms/task|gap ms|web MiB|worker MiB"
)  # fmt: skip
CPU = cols(
    "rep|mode|window s|web|web ms/task|worker|worker ms/task|dispatcher|rabbitmq|postgres|others"
)  # fmt: skip


TIME_USE = cols(
    "rep|mode|ms/task|worker CPU|worker waits CPU|worker blocked|web CPU|web waits CPU"
)  # fmt: skip


def _time_use(run: ModeRun) -> list[str]:
    """Per task: the window, the worker's CPU, run-queue wait and the rest, the web's."""
    if not run.tasks:
        return ["-"] * 6
    per = run.window_seconds * 1000 / run.tasks
    cpu, wait = _per_task(run, "worker"), _ms_per_task(run, run.cpu_wait.get("worker"))
    blocked = None if cpu is None or wait is None else max(0.0, per - cpu - wait)
    return [
        f"{per:.1f}", _f(cpu, ".1f"), _f(wait, ".1f"), _f(blocked, ".1f"),
        _f(_per_task(run, "web"), ".1f"), _f(_ms_per_task(run, run.cpu_wait.get("web")), ".1f"),
    ]  # fmt: skip


def _ms_per_task(run: ModeRun, seconds: float | None) -> float | None:
    return None if seconds is None or not run.tasks else seconds * 1000 / run.tasks


def _ratio(runs: list[ModeRun], run: ModeRun) -> float | None:
    direct = [r for r in runs if r.repeat == run.repeat and r.mode == "direct"]
    if not direct or not direct[0].rows_per_s:
        return None
    return run.rows_per_s / direct[0].rows_per_s


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _per_task(run: ModeRun, name: str) -> float | None:
    return _ms_per_task(run, run.cpu.get(name))


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def render(meta: dict[str, Any], baseline: dict[str, Any], runs: list[ModeRun]) -> str:
    rows, cpu_rows, time_rows = [], [], []
    for r in runs:
        rows.append(
            [str(r.repeat), r.mode, f"{r.result.rows:,}", str(r.tasks), f"{r.job_seconds:.2f}",
             f"{r.rows_per_s:,.0f}", _f(_ratio(runs, r), ".2f"),
             _f(r.job_seconds * 1000 / r.tasks if r.tasks else None, ".1f"),
             _f(r.median_gap_ms, ".1f"), _mib(r.peak_rss_kib.get("web")),
             _mib(r.peak_rss_kib.get("worker"))]
        )  # fmt: skip
        cpu_rows.append(
            [str(r.repeat), r.mode, f"{r.window_seconds:.1f}", _f(r.cpu.get("web"), ".2f"),
             _f(_per_task(r, "web"), ".2f"), _f(r.cpu.get("worker"), ".2f"),
             _f(_per_task(r, "worker"), ".2f"), _f(r.cpu.get("dispatcher"), ".2f"),
             _f(r.cpu.get("rabbitmq"), ".2f"), _f(r.cpu.get("postgres"), ".2f"),
             _f(r.others_cpu_s, ".1f")]
        )  # fmt: skip
        time_rows.append([str(r.repeat), r.mode, *_time_use(r)])
    out = [
        f"Worker gateway vs direct broker: {meta['rows']:,} rows"
        f" ({meta['input_bytes'] / MIB:.1f} MiB), CHUNK_ROWS={meta['chunk_rows']}, one paired"
        f" worker (WORKER_CONCURRENCY={meta['worker_concurrency']}), RabbitMQ + PostgreSQL +"
        f" folder storage, {meta['cpus']} CPUs, git {meta['git']}",
        f"baseline (one process, no services): {baseline['rows_per_s']:,.0f} rows/s",
        "",
        "Throughput (job created -> completed, PostgreSQL timestamps), peak RSS (VmHWM)",
        *table(THROUGHPUT, rows),
        "(ms/task = job s / tasks; gap ms = median time between consecutive task results)",
        "",
        "CPU seconds (user+sys) from the upload's answer to the poll that saw the job completed",
        *table(CPU, cpu_rows),
        "(others = every other process on the machine meanwhile; rabbitmq/postgres: all theirs)",
        "",
        "The worker's time per task in that window (ms): on a CPU, runnable but waiting for one,"
        " blocked",
        *table(TIME_USE, time_rows),
        *textwrap.wrap(
            "(blocked = ms/task - CPU - waits: the worker waited for its next task, or for the"
            " web (task URLs, its input, its output part))",
            width=100,
        ),
        "",
        *_summary(runs),
    ]
    for r in runs:
        out += [f"MISMATCH (rep {r.repeat}, {r.mode}): {p}" for p in r.problems]
        if r.others_cpu_s is not None and r.others_cpu_s > 0.2 * r.window_seconds * (
            meta["cpus"] or 1
        ):
            out.append(
                f"NOTE: other processes used {r.others_cpu_s:.0f} CPU-s during rep {r.repeat}"
                f" {r.mode} ({r.window_seconds:.0f} s): its figures are inflated by contention"
            )
    return "\n".join(out)


def _summary(runs: list[ModeRun]) -> list[str]:
    ratios = [x for r in runs if r.mode == "gateway" and (x := _ratio(runs, r)) is not None]
    if not ratios:
        return []
    ratio = statistics.median(ratios)
    verdict = "meets" if ratio >= TARGET else "BELOW"
    lines = [
        f"gateway/direct rows/s: {ratio:.2f} (median of {len(ratios)};"
        f" {', '.join(f'{x:.2f}' for x in ratios)}): {verdict} the {TARGET:.2f} target"
    ]
    for name in ("web", "worker", "rabbitmq"):
        per = {
            mode: [c * 1000 / r.tasks for r in runs
                   if r.mode == mode and r.tasks and (c := r.cpu.get(name)) is not None]
            for mode in MODES
        }  # fmt: skip
        if per["gateway"] and per["direct"]:
            g, d = statistics.median(per["gateway"]), statistics.median(per["direct"])
            lines.append(
                f"{name} CPU per task: gateway {g:.2f} ms, direct {d:.2f} ms"
                f" (gateway - direct: {g - d:+.2f} ms)"
            )
    return lines


# ---------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = settings_module.Settings()
    parser.add_argument("--rows", type=int, default=1_000_000, help="data rows (default 1000000)")
    parser.add_argument("--chunk-rows", type=int, default=defaults.chunk_rows,
                        help=f"CHUNK_ROWS, rows per task (default {defaults.chunk_rows})",
                        )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1,
                        help="pairs of runs, the order alternating (default 1)")  # fmt: skip
    parser.add_argument("--job-timeout", type=float, default=3600.0,
                        help="seconds a job or the baseline may take (default 3600)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=20240531, help="data generator seed")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON report (default bench/out/gateway-<rows>r-<chunk>c.json;"
                        " the tables go beside it as .txt)")  # fmt: skip
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp dir (input, storage, service logs)")  # fmt: skip
    parser.add_argument("--snapshot", action="store_true",
                        help="run the services and the baseline from a copy of the source"
                        " tree made at the start")  # fmt: skip
    args = parser.parse_args(argv)
    if args.rows < 1 or args.chunk_rows < 1 or not 1 <= args.repeat <= 20:
        parser.error("--rows and --chunk-rows must be positive, --repeat 1 to 20")
    out = args.out or OUT_DIR / f"gateway-{args.rows}r-{args.chunk_rows}c.json"

    began = time.perf_counter()
    try:
        with work_dir("conveyor-bench-gateway-", args.keep) as work:
            meta, baseline, runs = _bench(args, work)
    except BenchError as exc:
        say(f"FAILED: {exc}")
        return 1
    meta["bench_seconds"] = time.perf_counter() - began
    text = render(meta, baseline, runs)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"meta": meta, "baseline": baseline, "runs": [r.figures() for r in runs]}
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".txt").write_text(text + "\n")
    say(f"wrote {out} and {out.with_suffix('.txt').name}; took {meta['bench_seconds']:.0f}s")
    if any(r.problems for r in runs):
        say("FAILED: some run's output or row counts differ from the baseline's (MISMATCH)")
        return 1
    return 0


def _bench(
    args: argparse.Namespace, work: Path
) -> tuple[dict[str, Any], dict[str, Any], list[ModeRun]]:
    args.code = ROOT
    if args.snapshot:
        args.code = snapshot_code(work)
        say(f"running the code copied to {args.code}")
    source = work / "input.csv"
    say(f"generating {args.rows:,} rows into {source}")
    input_bytes = data.generate(source, args.rows, args.seed)
    say("baseline: single-process read + parse + map + write")
    baseline = run_baseline(source, work, args)
    say(f"  {baseline['seconds']:.2f}s, {baseline['rows_per_s']:,.0f} rows/s")
    meta: dict[str, Any] = {
        "benchmark": "gateway",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_revision(), "snapshot": bool(args.snapshot),
        "python": platform.python_version(), "cpus": os.cpu_count(), "rows": args.rows,
        "input_bytes": input_bytes, "chunk_rows": args.chunk_rows, "repeat": args.repeat,
        "worker_concurrency": settings_module.Settings().concurrency,
        "poll_seconds": POLL_SECONDS, "spec": data.SPEC,
    }  # fmt: skip
    runs: list[ModeRun] = []
    say("starting PostgreSQL and RabbitMQ")
    with PostgresServer() as pg, RabbitMQServer() as rabbit:
        shared = Shared(rabbit, pg, work, source, baseline, args)
        for repeat in range(1, args.repeat + 1):
            order = MODES if repeat % 2 else MODES[::-1]
            for mode in order:
                say(f"run {len(runs) + 1}: repeat {repeat}, {mode}")
                run = run_mode(shared, mode, repeat, len(runs) + 1)
                runs.append(run)
                for problem in run.problems:
                    say(f"  MISMATCH: {problem}")
                say(f"  {run.job_seconds:.2f}s, {run.rows_per_s:,.0f} rows/s, {run.tasks} tasks")
    return meta, baseline, runs


if __name__ == "__main__":
    raise SystemExit(main())
