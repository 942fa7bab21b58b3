"""End-to-end CSV pipeline benchmark on real RabbitMQ + PostgreSQL + local file storage.

    python -m bench.csv_pipeline [--rows 1000000] [--workers 1,2] [--chunk-rows 5000]

Generates a CSV of N rows once (``bench.data``), runs the single-process baseline on it
(``bench.baseline``, in a child process), then for each worker count K starts fresh services
(web, dispatcher, K workers) on one shared RabbitMQ and PostgreSQL (a fresh database, queue
prefix and storage folder per run), uploads the file, waits for the job to complete, checks
the output against the baseline's (same bytes), samples each process's peak RSS (VmHWM) and
CPU time, stops everything and prints a table. The same figures go to
``bench/out/csv_pipeline.json``. See bench/README.md for how to read them.

``--snapshot`` runs the services and the baseline from a copy of the source tree, for a
checkout that others edit while the benchmark runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx
import psycopg
from kombu import Connection
from psycopg import sql
from sqlalchemy.engine import make_url

from bench import data, procfs
from bench.procfs import cpu_seconds, loadavg, machine_cpu, runqueue_wait_seconds
from libs.common import settings as settings_module
from libs.common import topology
from tests import servers as test_servers
from tests.servers import PostgresServer, RabbitMQServer

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "csv_pipeline.json"
PYTHON = sys.executable
MIB = 1024.0

POLL_SECONDS = 0.5
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0
SHUTDOWN_GRACE = 5  # SHUTDOWN_GRACE_SECONDS for the services, so SIGTERM is quick


class BenchError(RuntimeError):
    """The benchmark could not produce a valid figure."""


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def deadline_loop(timeout: float, interval: float, what: str) -> Iterator[int]:
    """Yield 0, 1, 2, ... every ``interval`` s; BenchError after ``timeout`` s (bounded twice)."""
    start = time.monotonic()
    for attempt in range(int(timeout / interval) + 2):
        if time.monotonic() - start > timeout:
            break
        yield attempt
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


# ------------------------------------------------------------------------------ /proc


def _process_table() -> dict[int, int]:
    """pid -> parent pid of every live (non-zombie) process."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    return parents


def server_pids(server: RabbitMQServer | PostgresServer) -> set[int]:
    """The live processes of a test server, best effort: those whose environment carries
    the server's marker variable (see tests/servers.py), any postmaster named by a
    ``postmaster.pid`` in its directory (PostgreSQL overwrites its environment with the
    process title), and all their descendants."""
    marker = getattr(test_servers, "MARKER_ENV", "CONVEYOR_TEST_SERVER_DIR")
    needle = f"{marker}={server.dir}".encode()
    parents = _process_table()
    found: set[int] = set()
    for pid in parents:
        if pid == os.getpid():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as f:
            if needle in f.read().split(b"\0"):
                found.add(pid)
    for pidfile in list(Path(server.dir).glob("**/postmaster.pid"))[:5]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            found.add(int(pidfile.read_text().split()[0]))
    found &= parents.keys()
    for _ in range(100):  # add descendants, level by level
        more = {pid for pid, ppid in parents.items() if ppid in found} - found
        if not more:
            break
        found |= more
    return found


def server_cpu_seconds(server: RabbitMQServer | PostgresServer) -> float:
    """CPU time of a server's live processes plus what they reaped (so ended backends count).
    Only differences of two readings mean anything."""
    return sum(cpu_seconds(pid, children=True) or 0.0 for pid in server_pids(server))


# ------------------------------------------------------------------------------ services


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    peak_rss_kib: int | None = None
    rss_kib: int | None = None
    cpu_s: float | None = None
    cpu_at_post: float | None = None
    wait_s: float | None = None
    wait_at_post: float | None = None

    @classmethod
    def start(
        cls, name: str, module: str, env: dict[str, str], log_dir: Path, code: Path
    ) -> Service:
        log = log_dir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [PYTHON, "-m", module], cwd=code, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return cls(name, proc, log)

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with code {code}; its log:\n{self.tail()}")

    def sample(self) -> None:
        """Peak RSS (VmHWM), current RSS and CPU time, read while the process is alive."""
        self.peak_rss_kib = procfs.status_kib(self.proc.pid, "VmHWM")
        self.rss_kib = procfs.status_kib(self.proc.pid, "VmRSS")
        self.cpu_s = cpu_seconds(self.proc.pid)
        self.wait_s = runqueue_wait_seconds(self.proc.pid)

    def mark_post(self) -> None:
        self.cpu_at_post = cpu_seconds(self.proc.pid)
        self.wait_at_post = runqueue_wait_seconds(self.proc.pid)

    @property
    def job_cpu_s(self) -> float | None:
        if self.cpu_s is None or self.cpu_at_post is None:
            return None
        return self.cpu_s - self.cpu_at_post

    @property
    def job_wait_s(self) -> float | None:
        """Runnable but waiting for a CPU, from the POST to the end (live threads only)."""
        if self.wait_s is None or self.wait_at_post is None:
            return None
        return self.wait_s - self.wait_at_post

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log}: {exc}>"
        return "\n".join(text.splitlines()[-lines:])


def stop_all(services: list[Service], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM all, wait up to ``timeout`` in total, then SIGKILL what is left."""
    for service in services:
        if service.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                service.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for service in services:
        try:
            service.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{service.name} ignored SIGTERM for {timeout:.0f}s: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                service.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.proc.wait(10)


def create_database(server_url: str, name: str) -> str:
    """CREATE DATABASE ``name`` on the server of ``server_url``; return the new database's URL."""
    url = make_url(server_url)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return url.set(database=name).render_as_string(hide_password=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(**values: str) -> dict[str, str]:
    """This environment without any Conveyor setting, plus ``values``."""
    ours = {f.metadata["env"] for f in fields(settings_module.Settings)}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(values)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def queue_info(broker_url: str, queue: str) -> tuple[int, int] | None:
    """(messages, consumers) of ``queue``, or None if it does not exist (yet)."""
    try:
        with Connection(broker_url, connect_timeout=5) as conn:
            channel = conn.channel()
            try:
                ok = channel.queue_declare(queue=queue, passive=True)
                return int(ok.message_count), int(ok.consumer_count)
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
    except Exception:  # the passive declare of a missing queue closes the channel with 404
        return None


# ------------------------------------------------------------------------------ one run


@dataclass
class RunResult:
    workers: int
    seconds: float = 0.0
    upload_seconds: float = 0.0
    # Seconds from the POST to the first poll that saw: a task done, the fan-out complete,
    # every task done (then the dispatcher composes the output and completes the job).
    first_task_seen_seconds: float | None = None
    fanout_seen_seconds: float | None = None
    all_tasks_seen_seconds: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    row_errors_total: int | None = None
    output_bytes: int = 0
    output_sha256: str = ""
    processes: list[dict[str, Any]] = field(default_factory=list)
    rabbitmq_job_cpu_s: float = 0.0  # CPU time from the POST until the output was checked
    postgres_job_cpu_s: float = 0.0
    window_seconds: float = 0.0  # from the POST to the last /proc sample (CPU figures' window)
    machine_busy_cpu_s: float | None = None  # all processes on the machine, POST to end
    machine_steal_s: float | None = None
    bench_cpu_s: float | None = None  # this benchmark's own process (polling, hashing)
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)


def run_pipeline(
    *,
    run_no: int,
    workers: int,
    source: Path,
    args: argparse.Namespace,
    rabbit: RabbitMQServer,
    pg: PostgresServer,
    work: Path,
) -> RunResult:
    result = RunResult(workers=workers, load_before=loadavg())
    name = f"bench_{run_no}_w{workers}"
    database_url = create_database(pg.url, name)
    storage = work / f"storage-{name}"
    storage.mkdir()
    logs = work / f"logs-{name}"
    logs.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(
        BROKER_URL=rabbit.url,
        DATABASE_URL=database_url,
        STORAGE_URL=str(storage),
        PORT=str(port),
        CHUNK_ROWS=str(args.chunk_rows),
        LOG_LEVEL="WARNING",
        QUEUE_PREFIX=name,  # a fresh topology per run on the shared broker
        SHUTDOWN_GRACE_SECONDS=str(SHUTDOWN_GRACE),
    )
    task_queue = topology.task_queue(name, "shared", 1).name
    services: list[Service] = []
    try:
        services.append(Service.start("web", "services.web", env, logs, args.code))
        services.append(Service.start("dispatcher", "services.dispatcher", env, logs, args.code))
        with httpx.Client(base_url=base, timeout=httpx.Timeout(30.0, connect=5.0)) as client:
            _wait_ready(client, services)
            # The dispatcher declares the topology (the shared pool's task queue among it).
            for _ in deadline_loop(READY_TIMEOUT, 0.2, "the dispatcher to declare the queues"):
                _check(services)
                if queue_info(rabbit.url, task_queue) is not None:
                    break
            for i in range(1, workers + 1):
                services.append(
                    Service.start(f"worker{i}", "services.worker", env, logs, args.code)
                )
            for _ in deadline_loop(READY_TIMEOUT, 0.2, f"{workers} workers to consume"):
                _check(services)
                info = queue_info(rabbit.url, task_queue)
                if info is not None and info[1] >= workers:
                    break
            say(f"run {run_no}: web, dispatcher and {workers} worker(s) up; uploading")
            for service in services:
                service.mark_post()
            rabbit_cpu0, pg_cpu0 = server_cpu_seconds(rabbit), server_cpu_seconds(pg)
            machine0, self0, window0 = machine_cpu(), time.process_time(), time.perf_counter()
            job_id = _run_job(client, source, args, result, services)
            _verify_output(client, job_id, result)
            for service in services:
                _check([service])
                service.sample()
            result.window_seconds = time.perf_counter() - window0
            result.rabbitmq_job_cpu_s = server_cpu_seconds(rabbit) - rabbit_cpu0
            result.postgres_job_cpu_s = server_cpu_seconds(pg) - pg_cpu0
            result.bench_cpu_s = time.process_time() - self0
            machine1 = machine_cpu()
            if machine0 is not None and machine1 is not None:
                result.machine_busy_cpu_s = (machine1 - machine0).busy
                result.machine_steal_s = (machine1 - machine0).steal
        result.processes = [
            {
                "name": s.name,
                "pid": s.proc.pid,
                "peak_rss_kib": s.peak_rss_kib,
                "rss_end_kib": s.rss_kib,
                "cpu_s": s.cpu_s,
                "job_cpu_s": s.job_cpu_s,
                "job_runqueue_wait_s": s.job_wait_s,
            }
            for s in services
        ]
        result.load_after = loadavg()
        return result
    except BaseException:
        for service in services:
            say(f"--- {service.name} log tail ({service.log}):\n{service.tail()}")
        raise
    finally:
        stop_all(services)


def _check(services: list[Service]) -> None:
    for service in services:
        service.check_alive()


def _wait_ready(client: httpx.Client, services: list[Service]) -> None:
    last = ""
    for _ in deadline_loop(READY_TIMEOUT, 0.25, "GET /readyz to answer 200"):
        _check(services)
        try:
            response = client.get("/readyz", timeout=3.0)
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}"
            continue
        if response.status_code == 200:
            return
        last = f"{response.status_code} {response.text[:200]}"
    raise BenchError(f"web not ready: {last}")  # unreachable: deadline_loop raises


def _run_job(
    client: httpx.Client,
    source: Path,
    args: argparse.Namespace,
    result: RunResult,
    services: list[Service],
) -> str:
    with open(source, "rb") as f:
        started = time.perf_counter()
        response = client.post(
            "/api/jobs/csv",
            files={"file": (source.name, f, "text/csv")},
            data={"mapping": data.SPEC_JSON},
            timeout=httpx.Timeout(args.job_timeout, connect=5.0),
        )
    result.upload_seconds = time.perf_counter() - started
    if response.status_code != 202:
        raise BenchError(f"POST /api/jobs/csv: {response.status_code} {response.text[:500]}")
    job_id: str = response.json()["id"]
    say(f"job {job_id} accepted after {result.upload_seconds:.1f}s (upload); polling")
    last_report = time.monotonic()
    for _ in deadline_loop(args.job_timeout, POLL_SECONDS, f"job {job_id} to complete"):
        _check(services)
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
            result.seconds = elapsed
            result.progress = progress
            return job_id
        if view["state"] in ("failed", "cancelled"):
            raise BenchError(f"job {job_id} {view['state']}: {view.get('error')}")
        if time.monotonic() - last_report >= 10:
            last_report = time.monotonic()
            rows = progress["rows"]
            say(
                f"  {elapsed:6.1f}s {view['state']}: tasks {progress['tasks']['done']}/"
                f"{progress['tasks']['total']}, rows done {rows['done']}+{rows['failed']} failed"
                f" of {rows['total']}"
            )
    raise BenchError("unreachable")


def _verify_output(client: httpx.Client, job_id: str, result: RunResult) -> None:
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


# ------------------------------------------------------------------------------ baseline


def run_baseline(source: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    output = work / "baseline-output.csv"
    argv = [PYTHON, "-m", "bench.baseline", str(source), str(output),
            "--chunk-rows", str(args.chunk_rows)]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(
        argv, cwd=args.code, capture_output=True, text=True, timeout=args.job_timeout, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"baseline failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    result["process_seconds"] = time.perf_counter() - started  # with interpreter start-up
    output.unlink(missing_ok=True)
    return result


# ------------------------------------------------------------------------------ report


def check_against_baseline(run: RunResult, baseline: dict[str, Any]) -> list[str]:
    problems = []
    rows = run.progress.get("rows", {})
    expected = {
        "rows.total": (rows.get("total"), baseline["rows_in"]),
        "rows.done": (rows.get("done"), baseline["rows_out"]),
        "rows.failed": (rows.get("failed"), baseline["rows_failed"]),
        "rows.filtered": (rows.get("filtered"), baseline["rows_filtered"]),
        "row errors": (run.row_errors_total, baseline["row_errors"]),
        "output bytes": (run.output_bytes, baseline["output_bytes"]),
        "output sha256": (run.output_sha256, baseline["output_sha256"]),
    }
    for what, (got, want) in expected.items():
        if got != want:
            problems.append(f"{what}: pipeline {got!r}, baseline {want!r}")
    return problems


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / MIB:.1f}"


def _sec(seconds: float | None, prefix: str = "") -> str:
    return "-" if seconds is None else f"{prefix}{seconds:.1f}"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A fixed-width, right-aligned text table with rules above and below the header."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) for v, w in zip(values, widths, strict=True))

    rule = "-" * len(line(headers))
    return [rule, line(headers), rule, *(line(r) for r in rows), rule]


def render(report: dict[str, Any]) -> str:
    meta, base, runs = report["meta"], report["baseline"], report["runs"]
    max_workers = max((r["workers"] for r in runs), default=1)
    worker_names = [f"worker{i}" for i in range(1, max_workers + 1)]
    out = [
        f"CSV pipeline: {meta['rows']:,} rows ({meta['input_bytes'] / MIB / MIB:.1f} MiB), "
        f"CHUNK_ROWS={meta['chunk_rows']}, {meta['cpus']} CPUs, git {meta['git']}",
        "",
        "Throughput, and peak RSS (VmHWM, MiB) of each process",
    ]
    main_rows = [
        [f"{base['rows_in']:,}", "baseline", f"{base['seconds']:.2f}",
         f"{base['rows_per_s']:,.0f}", "1.00", "-", "-", _mib(base["peak_rss_kib"]),
         *["-"] * (max_workers - 1)]
    ]  # fmt: skip
    for r in runs:
        procs = {p["name"]: p for p in r["processes"]}
        main_rows.append(
            [f"{r['rows']:,}", str(r["workers"]), f"{r['seconds']:.2f}",
             f"{r['rows_per_s']:,.0f}", f"{r['ratio_vs_baseline']:.2f}",
             _mib(procs.get("web", {}).get("peak_rss_kib")),
             _mib(procs.get("dispatcher", {}).get("peak_rss_kib")),
             *[_mib(procs.get(w, {}).get("peak_rss_kib")) for w in worker_names]]
        )  # fmt: skip
    out += table(
        ["rows", "workers", "seconds", "rows/s", "vs base", "web", "dispatcher", *worker_names],
        main_rows,
    )
    out.append("(baseline = one process, no services; its peak RSS is in the worker1 column)")

    out += ["", "Timeline: seconds from the POST to the first poll (every 0.5 s) that saw it"]
    out += table(
        ["workers", "upload", "1st task done", "fan-out done", "all tasks done", "completed"],
        [
            [str(r["workers"]), _sec(r["upload_seconds"]), _sec(r["first_task_seen_seconds"]),
             _sec(r["fanout_seen_seconds"]), _sec(r["all_tasks_seen_seconds"]),
             _sec(r["seconds"])]
            for r in runs
        ],
    )  # fmt: skip

    out += [
        "",
        "CPU seconds (user+sys, all threads) from the POST until the output was downloaded;"
        " others = every other process on the machine meanwhile",
    ]
    cpu_rows = [
        ["baseline", "-", "-", _sec(base.get("cpu_s")), "-", "-", _sec(base.get("cpu_s")),
         "1.00", _sec(base.get("others_cpu_s"))]
    ]  # fmt: skip
    for r in runs:
        procs = {p["name"]: p for p in r["processes"]}
        workers_cpu = [p["job_cpu_s"] or 0.0 for p in r["processes"] if p["name"] in worker_names]
        total = r["total_job_cpu_s"]
        cpu_rows.append(
            [str(r["workers"]), _sec(procs["web"]["job_cpu_s"]),
             _sec(procs["dispatcher"]["job_cpu_s"]), "+".join(f"{c:.1f}" for c in workers_cpu),
             _sec(r["rabbitmq_job_cpu_s"]), _sec(r["postgres_job_cpu_s"]), _sec(total),
             f"{total / base['cpu_s']:.2f}" if base.get("cpu_s") else "-",
             _sec(r.get("others_cpu_s"))]
        )  # fmt: skip
    out += table(
        ["workers", "web", "dispatcher", "worker(s)", "rabbitmq", "postgres", "total",
         "vs base", "others"],
        cpu_rows,
    )  # fmt: skip

    out += [
        "",
        "How the mapping processes spent the measured time (s): on a CPU, runnable but waiting"
        " for one, and blocked (no task to do, broker/database round trips, I/O)",
    ]
    use_rows = []
    if base.get("runqueue_wait_s") is not None:
        blocked = base["seconds"] - base["cpu_s"] - base["runqueue_wait_s"]
        use_rows.append(
            ["baseline", "baseline", _sec(base["seconds"]), _sec(base["cpu_s"]),
             _sec(base["runqueue_wait_s"]), _sec(max(0.0, blocked))]
        )  # fmt: skip
    for r in runs:
        for p in r["processes"]:
            if p["name"] not in worker_names:
                continue
            window, cpu, wait = r["window_seconds"], p["job_cpu_s"], p["job_runqueue_wait_s"]
            blocked = None if cpu is None or wait is None else max(0.0, window - cpu - wait)
            use_rows.append(
                [str(r["workers"]), p["name"], _sec(window), _sec(cpu), _sec(wait), _sec(blocked)]
            )
    out += table(["workers", "process", "measured", "on CPU", "waiting for CPU", "blocked"],
                 use_rows)  # fmt: skip

    busy = [
        (what, others, window)
        for what, others, window in [
            ("the baseline", base.get("others_cpu_s"), base["process_seconds"]),
            *[(f"the {r['workers']}-worker run", r.get("others_cpu_s"), r["window_seconds"])
              for r in runs],
        ]
        if others is not None and others > 0.2 * window * (meta["cpus"] or 1)
    ]  # fmt: skip
    for what, others, window in busy:
        out.append(
            f"NOTE: other processes used {others:.0f} CPU-s during {what} ({window:.0f} s on"
            f" {meta['cpus']} CPUs): its wall time, and the ratios, are inflated by contention."
        )
    return "\n".join(out)


def git_revision() -> str | None:
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
            timeout=10, check=False,
        )  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    rev = proc.stdout.strip() or None
    return f"{rev}+dirty" if rev and dirty.stdout.strip() else rev


# ------------------------------------------------------------------------------ main


def parse_workers(raw: str) -> list[int]:
    try:
        counts = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list like 1,2, got {raw!r}") from None
    if not counts or any(not 1 <= c <= 16 for c in counts):
        raise argparse.ArgumentTypeError("worker counts must be between 1 and 16")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.csv_pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="data rows (default 1000000)")
    parser.add_argument("--workers", type=parse_workers, default=[1, 2],
                        help="worker process counts, one run each (default 1,2)")  # fmt: skip
    parser.add_argument("--chunk-rows", type=int, default=5000,
                        help="CHUNK_ROWS: rows per task (default 5000)")  # fmt: skip
    parser.add_argument("--job-timeout", type=float, default=3600.0,
                        help="seconds a job or the baseline may take (default 3600)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=20240531, help="data generator seed")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON report (default {OUT})")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp dir (input, storage, service logs)")  # fmt: skip
    parser.add_argument(
        "--snapshot", action="store_true",
        help="run the services and the baseline from a copy of the source tree made at the"
        " start, so that edits during the run cannot affect it",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.rows < 1 or args.chunk_rows < 1:
        parser.error("--rows and --chunk-rows must be positive")

    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    try:
        report = _bench(args, work)
    except BenchError as exc:
        say(f"FAILED: {exc}")
        say(f"work dir kept for inspection: {work}")
        return 1
    except BaseException:
        say(f"work dir kept for inspection: {work}")
        raise
    if args.keep:
        say(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(render(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    say(f"wrote {args.out}")
    problems = [p for r in report["runs"] for p in r["problems"]]
    return 1 if problems else 0


def snapshot_code(work: Path) -> Path:
    """Copy the source tree (no venv, VCS data or caches) to ``work/src``; check it compiles."""
    target = work / "src"
    shutil.copytree(
        ROOT, target,
        ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.pyc", ".*_cache", "var",
                                      "out", "localstack", "node_modules"),
    )  # fmt: skip
    check = subprocess.run(
        [PYTHON, "-m", "compileall", "-q", "libs", "services", "bench", "tests/servers.py"],
        cwd=target, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if check.returncode != 0:
        raise BenchError(f"the snapshot of the source does not compile:\n{check.stdout[-2000:]}")
    return target


def _bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    args.code = ROOT
    if args.snapshot:
        args.code = snapshot_code(work)
        say(f"running the code copied to {args.code}")
    source = work / "input.csv"
    say(f"generating {args.rows:,} rows into {source}")
    started = time.perf_counter()
    input_bytes = data.generate(source, args.rows, args.seed)
    say(f"  {input_bytes / MIB / MIB:.1f} MiB in {time.perf_counter() - started:.1f}s")

    say("baseline: single-process read + parse + map + write")
    load, machine0, times0 = loadavg(), machine_cpu(), os.times()
    baseline = run_baseline(source, work, args)
    machine1, times1 = machine_cpu(), os.times()
    ours = (times1.user + times1.system + times1.children_user + times1.children_system) - (
        times0.user + times0.system + times0.children_user + times0.children_system
    )
    if machine0 is not None and machine1 is not None:
        baseline["machine_busy_cpu_s"] = (machine1 - machine0).busy
        baseline["machine_steal_s"] = (machine1 - machine0).steal
        baseline["others_cpu_s"] = max(0.0, (machine1 - machine0).busy - ours)
    baseline["load"] = load
    say(f"  {baseline['seconds']:.2f}s, {baseline['rows_per_s']:,.0f} rows/s")

    report: dict[str, Any] = {
        "meta": {
            "benchmark": "csv_pipeline",
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "git": git_revision(),
            "snapshot": bool(args.snapshot),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "rows": args.rows,
            "input_bytes": input_bytes,
            "chunk_rows": args.chunk_rows,
            "chunk_max_bytes": settings_module.Settings().chunk_max_bytes,
            "worker_concurrency": settings_module.Settings().concurrency,
            "spec": data.SPEC,
            "poll_seconds": POLL_SECONDS,
        },
        "baseline": baseline,
        "runs": [],
    }
    say("starting RabbitMQ and PostgreSQL")
    with RabbitMQServer() as rabbit, PostgresServer() as pg:
        for run_no, workers in enumerate(args.workers, 1):
            say(f"run {run_no}: {workers} worker process(es)")
            result = run_pipeline(
                run_no=run_no, workers=workers, source=source, args=args,
                rabbit=rabbit, pg=pg, work=work,
            )  # fmt: skip
            rows_per_s = args.rows / result.seconds
            job_cpu = [p["job_cpu_s"] or 0.0 for p in result.processes]
            entry = {
                "total_job_cpu_s": sum(job_cpu)
                + result.rabbitmq_job_cpu_s
                + result.postgres_job_cpu_s,
                "rows": args.rows,
                "rows_per_s": rows_per_s,
                "ratio_vs_baseline": rows_per_s / baseline["rows_per_s"],
                **result.__dict__,
            }
            if result.machine_busy_cpu_s is not None:
                ours = entry["total_job_cpu_s"] + (result.bench_cpu_s or 0.0)
                entry["others_cpu_s"] = max(0.0, result.machine_busy_cpu_s - ours)
            entry["problems"] = check_against_baseline(result, baseline)
            for problem in entry["problems"]:
                say(f"  MISMATCH: {problem}")
            say(f"  {result.seconds:.2f}s, {rows_per_s:,.0f} rows/s")
            report["runs"].append(entry)
            shutil.rmtree(work / f"storage-bench_{run_no}_w{workers}", ignore_errors=True)
    return report


if __name__ == "__main__":
    raise SystemExit(main())
