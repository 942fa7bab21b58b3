"""End-to-end CSV pipeline benchmark: real services on RabbitMQ + local files, or on SQS + S3
(moto), with PostgreSQL.

    python -m bench.csv_pipeline [--broker rabbitmq|sqs|both] [--rows 1000000]
                                 [--workers 1,2] [--chunk-rows 5000]

Generates a CSV of N rows once (``bench.data``), runs the single-process baseline on it
(``bench.baseline``, in a child process), then for each broker and worker count K starts
fresh services (web, dispatcher, K workers) on shared servers (a fresh database, queue
prefix and storage folder or bucket per run), uploads the file, waits for the job to
complete, checks the output against the baseline's (same bytes), samples each process's
peak RSS (VmHWM) and CPU time, stops everything and prints the tables. On SQS a metering
proxy (``bench.meter``) between the services and moto measures the S3 traffic and the
task publishing (``bench.traffic``). The same figures go to ``bench/out/csv_pipeline.json``.
See bench/README.md for how to read them.

``--snapshot`` runs the services and the baseline from a copy of the source tree, for a
checkout that others edit while the benchmark runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import data
from bench.backends import Backend, RabbitBackend, SqsBackend
from bench.procfs import loadavg, machine_cpu
from bench.report import check_against_baseline, render
from bench.run import POLL_SECONDS, RunResult, run_pipeline
from bench.services import PYTHON, BenchError, say, work_dir
from libs.common import settings as settings_module
from tests.servers import MotoServer, PostgresServer, RabbitMQServer

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "csv_pipeline.json"
MIB = 1024.0
BROKERS = {"rabbitmq": ["rabbitmq"], "sqs": ["sqs"], "both": ["rabbitmq", "sqs"]}


def run_baseline(source: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    output = work / "baseline-output.csv"
    argv = [PYTHON, "-m", "bench.baseline", str(source), str(output),
            "--chunk-rows", str(args.chunk_rows)]  # fmt: skip
    load, machine0, times0 = loadavg(), machine_cpu(), os.times()
    started = time.perf_counter()
    proc = subprocess.run(
        argv, cwd=args.code, capture_output=True, text=True, timeout=args.job_timeout, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"baseline failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    result["process_seconds"] = time.perf_counter() - started  # with interpreter start-up
    output.unlink(missing_ok=True)
    machine1, times1 = machine_cpu(), os.times()
    ours = (times1.user + times1.system + times1.children_user + times1.children_system) - (
        times0.user + times0.system + times0.children_user + times0.children_system
    )
    if machine0 is not None and machine1 is not None:
        result["machine_busy_cpu_s"] = (machine1 - machine0).busy
        result["machine_steal_s"] = (machine1 - machine0).steal
        result["others_cpu_s"] = max(0.0, (machine1 - machine0).busy - ours)
    result["load"] = load
    return result


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


def snapshot_code(work: Path) -> Path:
    """Copy the source tree (no venv, VCS data or caches) to ``work/src``; check it compiles."""
    target = work / "src"
    shutil.copytree(
        ROOT, target,
        ignore=shutil.ignore_patterns(".venv", ".*venv", ".git", "__pycache__", "*.pyc",
                                      ".*_cache", "var", "out", "localstack", "node_modules"),
    )  # fmt: skip
    check = subprocess.run(
        [PYTHON, "-m", "compileall", "-q", "libs", "services", "bench", "tests/servers.py"],
        cwd=target, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if check.returncode != 0:
        raise BenchError(f"the snapshot of the source does not compile:\n{check.stdout[-2000:]}")
    return target


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
    parser.add_argument("--broker", choices=sorted(BROKERS), default="rabbitmq",
                        help="rabbitmq (local files), sqs (S3 storage, on moto) or both"
                        " (default rabbitmq)")  # fmt: skip
    parser.add_argument("--rows", type=int, default=1_000_000, help="data rows (default 1000000)")
    parser.add_argument("--workers", type=parse_workers, default=[1, 2],
                        help="worker counts, one run each per broker (default 1,2)")  # fmt: skip
    parser.add_argument("--chunk-rows", type=int, default=5000,
                        help="CHUNK_ROWS: rows per task (default 5000)")  # fmt: skip
    parser.add_argument("--job-timeout", type=float, default=3600.0,
                        help="seconds a job or the baseline may take (default 3600)")  # fmt: skip
    parser.add_argument("--no-meter", action="store_true",
                        help="sqs: no metering proxy (services talk to moto directly; no"
                        " traffic figures)")  # fmt: skip
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

    began = time.perf_counter()
    try:
        with work_dir("conveyor-bench-", args.keep) as work:
            report = _bench(args, work)
    except BenchError as exc:
        say(f"FAILED: {exc}")
        return 1
    report["meta"]["bench_seconds"] = time.perf_counter() - began
    print(render(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    say(f"wrote {args.out}; the benchmark took {report['meta']['bench_seconds']:.0f}s")
    problems = [p for r in report["runs"] for p in r["problems"]]
    return 1 if problems else 0


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
    baseline = run_baseline(source, work, args)
    say(f"  {baseline['seconds']:.2f}s, {baseline['rows_per_s']:,.0f} rows/s")

    defaults = settings_module.Settings()
    report: dict[str, Any] = {
        "meta": {
            "benchmark": "csv_pipeline",
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "git": git_revision(),
            "snapshot": bool(args.snapshot),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "brokers": BROKERS[args.broker],
            "metered": not args.no_meter,
            "rows": args.rows,
            "input_bytes": input_bytes,
            "chunk_rows": args.chunk_rows,
            "chunk_max_bytes": defaults.chunk_max_bytes,
            "worker_concurrency": defaults.concurrency,
            "spec": data.SPEC,
            "poll_seconds": POLL_SECONDS,
        },
        "baseline": baseline,
        "runs": [],
    }
    run_no = 0
    say("starting PostgreSQL")
    with PostgresServer() as pg:
        for broker in BROKERS[args.broker]:
            with contextlib.ExitStack() as stack:
                backend = _backend(broker, args, stack)
                for workers in args.workers:
                    run_no += 1
                    say(f"run {run_no}: {broker}, {workers} worker process(es)")
                    result = run_pipeline(
                        run_no=run_no, workers=workers, source=source, args=args,
                        backend=backend, pg=pg, work=work,
                    )  # fmt: skip
                    report["runs"].append(_entry(result, baseline))
    return report


def _backend(broker: str, args: argparse.Namespace, stack: contextlib.ExitStack) -> Backend:
    if broker == "rabbitmq":
        say("starting RabbitMQ")
        return RabbitBackend(stack.enter_context(RabbitMQServer()))
    say("starting moto (SQS + S3)")
    return SqsBackend(stack.enter_context(MotoServer()), meter=not args.no_meter)


def _entry(result: RunResult, baseline: dict[str, Any]) -> dict[str, Any]:
    rows_per_s = result.rows / result.seconds
    job_cpu = [p["job_cpu_s"] or 0.0 for p in result.processes]
    total = sum(job_cpu) + result.broker_job_cpu_s + result.postgres_job_cpu_s
    entry = {
        "total_job_cpu_s": total,
        "rows_per_s": rows_per_s,
        "ratio_vs_baseline": rows_per_s / baseline["rows_per_s"],
        **result.__dict__,
    }
    if result.machine_busy_cpu_s is not None:
        meter_cpu = (result.meter or {}).get("job_cpu_s") or 0.0
        ours = total + meter_cpu + (result.bench_cpu_s or 0.0)
        entry["others_cpu_s"] = max(0.0, result.machine_busy_cpu_s - ours)
    entry["problems"] = check_against_baseline(result, baseline)
    for problem in entry["problems"]:
        say(f"  MISMATCH: {problem}")
    say(f"  {result.seconds:.2f}s, {rows_per_s:,.0f} rows/s")
    return entry


if __name__ == "__main__":
    raise SystemExit(main())
