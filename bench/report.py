"""The benchmark's text report: the checks against the baseline and the tables."""

from __future__ import annotations

import textwrap
from typing import Any

from bench.run import RunResult

MIB = 1024.0


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


def _mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / MIB:.1f}"


def _sec(seconds: float | None, prefix: str = "") -> str:
    return "-" if seconds is None else f"{prefix}{seconds:.1f}"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def cols(spec: str) -> list[str]:
    """Column headers from ``"a|b c|d"``."""
    return spec.split("|")


THROUGHPUT = cols("broker|rows|workers|seconds|rows/s|vs base|web|dispatcher")
TIMELINE = cols("broker|workers|upload|1st task done|fan-out done|all tasks done|completed")
CPU = cols("broker|workers|web|dispatcher|worker(s)|server*|postgres|total|vs base|meter|others")
TIME_USE = cols("broker|workers|process|measured|on CPU|waiting for CPU|blocked")
PUBLISH = cols(
    "workers|tasks|sent|fan-out start|1st send|last send|publish s|msgs/s|ms/send|"
    "fan-out done|completed|rows/s"
)
CHUNKS = cols(
    "workers|chunks|KiB/chunk|worker GETs|MiB served|MiB in chunks|served/chunk|"
    "exact|fan-out GETs|x input size"
)
S3 = cols("workers|process|requests|GETs|cut short|MiB served|PUT/POST|MiB sent|HEAD/DEL")


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
    workers = [f"worker{i}" for i in range(1, max_workers + 1)]
    out = [
        f"CSV pipeline: {meta['rows']:,} rows ({meta['input_bytes'] / MIB / MIB:.1f} MiB), "
        f"CHUNK_ROWS={meta['chunk_rows']}, {meta['cpus']} CPUs, git {meta['git']}",
        "rabbitmq = RabbitMQ + local files; sqs = SQS + S3, both served by moto (one process)",
        "",
        *_throughput(base, runs, workers),
        "",
        *_timeline(runs),
        "",
        *_cpu(base, runs, workers),
        "",
        *_time_use(base, runs, workers),
    ]
    sqs = [r for r in runs if r.get("traffic")]
    if sqs:
        out += ["", *_publishing(sqs), "", *_chunk_reads(sqs), "", *_s3_traffic(sqs)]
    elif any(r["broker"] == "sqs" for r in runs):
        out += ["", "(--no-meter: no SQS/S3 traffic figures)"]
    out += _contention_notes(base, runs, meta)
    return "\n".join(out)


def _throughput(base: dict[str, Any], runs: list[dict[str, Any]], workers: list[str]) -> list[str]:
    rows = [
        ["baseline", f"{base['rows_in']:,}", "-", f"{base['seconds']:.2f}",
         f"{base['rows_per_s']:,.0f}", "1.00", "-", "-", _mib(base["peak_rss_kib"]),
         *["-"] * (len(workers) - 1)]
    ]  # fmt: skip
    for r in runs:
        procs = {p["name"]: p for p in r["processes"]}
        rows.append(
            [r["broker"], f"{r['rows']:,}", str(r["workers"]), f"{r['seconds']:.2f}",
             f"{r['rows_per_s']:,.0f}", f"{r['ratio_vs_baseline']:.2f}",
             *[_mib(procs.get(n, {}).get("peak_rss_kib")) for n in ["web", "dispatcher", *workers]]]
        )  # fmt: skip
    peaks = {r["broker"]: r.get("broker_peak_rss_kib") for r in runs}
    return [
        "Throughput, and peak RSS (VmHWM, MiB) of each process",
        *table([*THROUGHPUT, *workers], rows),
        "(baseline = one process, no services; its peak RSS is in the worker1 column)",
        "(servers' peak RSS since they started: "
        + ", ".join(f"{'moto' if b == 'sqs' else b} {_mib(kib)} MiB" for b, kib in peaks.items())
        + ")",
    ]


def _timeline(runs: list[dict[str, Any]]) -> list[str]:
    rows = [
        [r["broker"], str(r["workers"]), _sec(r["upload_seconds"]),
         _sec(r["first_task_seen_seconds"]), _sec(r["fanout_seen_seconds"]),
         _sec(r["all_tasks_seen_seconds"]), _sec(r["seconds"])]
        for r in runs
    ]  # fmt: skip
    return [
        "Timeline: seconds from the POST to the first poll (every 0.5 s) that saw it",
        *table(TIMELINE, rows),
    ]


def _cpu(base: dict[str, Any], runs: list[dict[str, Any]], workers: list[str]) -> list[str]:
    rows = [
        ["baseline", "-", "-", "-", _sec(base.get("cpu_s")), "-", "-", _sec(base.get("cpu_s")),
         "1.00", "-", _sec(base.get("others_cpu_s"))]
    ]  # fmt: skip
    for r in runs:
        procs = {p["name"]: p for p in r["processes"]}
        workers_cpu = [p["job_cpu_s"] or 0.0 for p in r["processes"] if p["name"] in workers]
        total = r["total_job_cpu_s"]
        rows.append(
            [r["broker"], str(r["workers"]), _sec(procs["web"]["job_cpu_s"]),
             _sec(procs["dispatcher"]["job_cpu_s"]), "+".join(f"{c:.1f}" for c in workers_cpu),
             _sec(r["broker_job_cpu_s"]), _sec(r["postgres_job_cpu_s"]), _sec(total),
             f"{total / base['cpu_s']:.2f}" if base.get("cpu_s") else "-",
             _sec((r.get("meter") or {}).get("job_cpu_s")), _sec(r.get("others_cpu_s"))]
        )  # fmt: skip
    return [
        *textwrap.wrap(
            "CPU seconds (user+sys, all threads) from the POST until the output was downloaded;"
            " others = every other process on the machine meanwhile",
            width=100,
        ),
        *table(CPU, rows),
        *_note(
            "server* = RabbitMQ, or moto serving SQS and S3; meter = the metering proxy of the"
            " sqs runs, not in total"
        ),
    ]


def _time_use(base: dict[str, Any], runs: list[dict[str, Any]], workers: list[str]) -> list[str]:
    rows = []
    if base.get("runqueue_wait_s") is not None:
        blocked = base["seconds"] - base["cpu_s"] - base["runqueue_wait_s"]
        rows.append(
            ["baseline", "-", "baseline", _sec(base["seconds"]), _sec(base["cpu_s"]),
             _sec(base["runqueue_wait_s"]), _sec(max(0.0, blocked))]
        )  # fmt: skip
    for r in runs:
        for p in r["processes"]:
            if p["name"] not in workers:
                continue
            window, cpu, wait = r["window_seconds"], p["job_cpu_s"], p["job_runqueue_wait_s"]
            blocked = None if cpu is None or wait is None else max(0.0, window - cpu - wait)
            rows.append(
                [r["broker"], str(r["workers"]), p["name"], _sec(window), _sec(cpu), _sec(wait),
                 _sec(blocked)]
            )  # fmt: skip
    return [
        *textwrap.wrap(
            "How the mapping processes spent the measured time (s): on a CPU, runnable but"
            " waiting for one, and blocked (no task to do, broker/storage/database round trips,"
            " I/O)",
            width=100,
        ),
        *table(TIME_USE, rows),
    ]


def _note(text: str) -> list[str]:
    return textwrap.wrap(f"({text})", width=100)


def _publishing(runs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in runs:
        pub = r["traffic"]["publish"]
        rows.append(
            [str(r["workers"]), str(r["progress"]["tasks"]["total"]), str(pub["messages"]),
             _sec(r["job_times"].get("fanout_started")), _sec(pub["first_s"]),
             _sec(pub["last_s"]), _num(pub["seconds"], ".2f"), _num(pub["per_s"], ",.0f"),
             _num(pub.get("mean_send_ms"), ".1f"), _sec(r["fanout_seen_seconds"]),
             _sec(r["seconds"]), f"{r['rows_per_s']:,.0f}"]
        )  # fmt: skip
    return [
        "SQS runs: task messages published, and rows end to end",
        *table(PUBLISH, rows),
        *_note(
            "times in s from the POST. fan-out start: jobs.started_at (PostgreSQL); 1st/last"
            " send: the dispatcher's first SendMessage to the task queue sent / last one"
            " answered, at the metering proxy; msgs/s = sent / (last send - 1st send);"
            " ms/send: mean SendMessage round trip; fan-out done and completed: polled;"
            " rows/s = input rows / completed"
        ),
    ]


def _chunk_reads(runs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in runs:
        chunks, fan = r["traffic"]["chunk_reads"], r["traffic"]["fanout_input_read"]
        tasks = chunks["tasks"]
        rows.append(
            [str(r["workers"]), str(tasks),
             _num(chunks["mean_chunk_bytes"] and chunks["mean_chunk_bytes"] / 1024, ",.0f"),
             str(chunks["gets"]),
             _mib(chunks["served_bytes"] / MIB), _mib(chunks["chunk_bytes"] / MIB),
             _num(chunks["served_per_chunk_bytes"], ".3f"),
             f"{chunks['chunks_read_once_exactly']}/{tasks}",
             f"{fan['gets']}" + (f" ({fan['aborted']} cut)" if fan.get("aborted") else ""),
             _num(fan["per_input_byte"], ".2f")]
        )  # fmt: skip
    return [
        "SQS runs: bytes S3 served the workers from the input, against the chunks' sizes",
        *table(CHUNKS, rows),
        *_note(
            "measured: the workers' GETs of the input object and the body bytes S3 sent, at"
            " the metering proxy; the chunks' byte ranges are the task rows (tasks.start,"
            " tasks.end) in PostgreSQL. served/chunk = MiB served / MiB in chunks; exact ="
            " chunks read in one GET of exactly their range; fan-out GETs: the dispatcher's"
            " GETs of the input (N cut: closed before the end of the body), and x input size:"
            " the bytes they served / the input's size"
        ),
    ]


def _s3_traffic(runs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in runs:
        for p in r["traffic"]["s3_by_process"]:
            rows.append(
                [str(r["workers"]), p["process"], str(p["requests"]), str(p["gets"]),
                 str(p.get("aborted", 0)), _mib(p["get_bytes"] / MIB), str(p["writes"]),
                 _mib(p["write_bytes"] / MIB), str(p["other"])]
            )  # fmt: skip
    return [
        "S3 requests per process on the sqs runs (MiB of request/response bodies)",
        *table(S3, rows),
        *_note(
            "cut short: GETs whose client closed the connection before the end of the body"
            " (their MiB served is what was written to the connection)"
        ),
    ]


def _contention_notes(
    base: dict[str, Any], runs: list[dict[str, Any]], meta: dict[str, Any]
) -> list[str]:
    candidates = [
        ("the baseline", base.get("others_cpu_s"), base["process_seconds"]),
        *[(f"the {r['broker']} {r['workers']}-worker run", r.get("others_cpu_s"),
           r["window_seconds"]) for r in runs],
    ]  # fmt: skip
    return [
        f"NOTE: other processes used {others:.0f} CPU-s during {what} ({window:.0f} s on"
        f" {meta['cpus']} CPUs): its wall time, and the ratios, are inflated by contention."
        for what, others, window in candidates
        if others is not None and others > 0.2 * window * (meta["cpus"] or 1)
    ]
