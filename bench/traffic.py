"""What the metering proxy (``bench.meter``) saw during one SQS run, summed up.

Three figures come out of its request log:

- **S3 traffic per process**: requests, GETs and the body bytes S3 served (GETs the
  client closed before the end of the body included, with what was written to it),
  PUTs/POSTs and the body bytes sent, per listener (one per process).
- **Chunk reads**: every worker GET of the job's input object, matched by its Range
  header to the task rows in PostgreSQL (``tasks.start`` / ``tasks.end``): how many
  chunks were read, in how many GETs, and the bytes served against the chunks' sizes.
- **Publish window**: the dispatcher's ``SendMessage`` calls to the task queue, from the
  first one's start to the last one's response: the fan-out's task messages per second.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class Request:
    who: str
    t0: float
    t1: float
    method: str
    path: str
    range: str | None
    status: int
    bytes_in: int
    bytes_out: int
    op: str | None
    queue: str | None
    aborted: bool = False  # the client closed before taking the whole body

    @property
    def key_path(self) -> str:
        """The path without its query, percent-decoded: ``/bucket/key``."""
        return unquote(self.path.split("?", 1)[0])

    def byte_range(self) -> tuple[int, int] | None:
        """``[start, end)`` asked for by the Range header, if any."""
        match = _RANGE.match((self.range or "").strip())
        if match is None:
            return None
        start = int(match.group(1))
        end = int(match.group(2)) + 1 if match.group(2) else start + self.bytes_out
        return start, end


def load(path: Path) -> list[Request]:
    requests = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            e = json.loads(line)
            requests.append(
                Request(e["who"], e["t0"], e["t1"], e["method"], e["path"], e.get("range"),
                        e["status"], e["in"], e["out"], e.get("op"), e.get("queue"),
                        bool(e.get("aborted")))
            )  # fmt: skip
    return requests


def s3_by_process(requests: list[Request], sqs_listeners: set[str]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for r in requests:
        if r.who in sqs_listeners:
            continue
        row = rows.setdefault(
            r.who,
            {"process": r.who, "requests": 0, "gets": 0, "get_bytes": 0, "aborted": 0,
             "writes": 0, "write_bytes": 0, "other": 0},
        )  # fmt: skip
        row["requests"] += 1
        if r.method == "GET":
            row["gets"] += 1
            row["get_bytes"] += r.bytes_out
            row["aborted"] += r.aborted
        elif r.method in ("PUT", "POST"):
            row["writes"] += 1
            row["write_bytes"] += r.bytes_in
        else:
            row["other"] += 1
    return sorted(rows.values(), key=lambda row: _process_order(row["process"]))


def _process_order(name: str) -> tuple[int, int, str]:
    if name.startswith("worker") and name[6:].isdigit():
        return 2, int(name[6:]), name
    return {"web": 0, "dispatcher": 1}.get(name, 3), 0, name


def chunk_reads(
    requests: list[Request], input_path: str, tasks: list[tuple[int, int, int]]
) -> dict[str, Any]:
    """Worker GETs of ``input_path`` against the tasks' ``(seq, start, end)``."""
    by_range = {(start, end): seq for seq, start, end in tasks}
    served: dict[int, int] = defaultdict(int)
    gets: dict[int, int] = defaultdict(int)
    unmatched = unmatched_bytes = 0
    for r in requests:
        if not r.who.startswith("worker") or r.method != "GET" or r.key_path != input_path:
            continue
        span = r.byte_range()
        seq = by_range.get(span) if span is not None else None
        if seq is None:
            unmatched += 1
            unmatched_bytes += r.bytes_out
            continue
        gets[seq] += 1
        served[seq] += r.bytes_out
    sizes = {seq: end - start for seq, start, end in tasks}
    ratios = [served[seq] / size for seq, size in sizes.items() if size and seq in served]
    chunk_bytes = sum(sizes.values())
    served_bytes = sum(served.values()) + unmatched_bytes
    return {
        "tasks": len(tasks),
        "chunks_read": len(served),
        "chunks_read_once_exactly": sum(
            1 for seq, size in sizes.items() if gets.get(seq) == 1 and served[seq] == size
        ),
        "gets": sum(gets.values()) + unmatched,
        "gets_unmatched": unmatched,
        "chunk_bytes": chunk_bytes,
        "served_bytes": served_bytes,
        "served_per_chunk_bytes": served_bytes / chunk_bytes if chunk_bytes else None,
        "mean_chunk_bytes": chunk_bytes / len(tasks) if tasks else None,
        "max_chunk_ratio": max(ratios, default=None),
        "min_chunk_ratio": min(ratios, default=None),
    }


def object_reads(requests: list[Request], who: str, path: str) -> dict[str, Any]:
    """GETs of one object by one process, the bytes served, the GETs cut short."""
    mine = [r for r in requests if r.who == who and r.method == "GET" and r.key_path == path]
    return {
        "gets": len(mine),
        "bytes": sum(r.bytes_out for r in mine),
        "aborted": sum(r.aborted for r in mine),
        "aborted_bytes": sum(r.bytes_out for r in mine if r.aborted),
    }


def publish_window(requests: list[Request], who: str, queue: str) -> dict[str, Any]:
    sends = sorted(
        (r for r in requests
         if r.who == who and r.op in ("SendMessage", "SendMessageBatch") and r.queue == queue),
        key=lambda r: r.t0,
    )  # fmt: skip
    if not sends:
        return {"messages": 0, "first_t0": None, "last_t1": None, "seconds": None, "per_s": None}
    seconds = sends[-1].t1 - sends[0].t0
    return {
        "messages": len(sends),
        "first_t0": sends[0].t0,
        "last_t1": sends[-1].t1,
        "seconds": seconds,
        "per_s": len(sends) / seconds if seconds > 0 else None,
        "mean_send_ms": 1000 * sum(r.t1 - r.t0 for r in sends) / len(sends),
    }


def summarize(
    log: Path,
    *,
    sqs_listeners: set[str],
    input_path: str,
    input_bytes: int,
    tasks: list[tuple[int, int, int]],
    publisher: str,
    task_queue: str,
    post_wall: float,
) -> dict[str, Any]:
    requests = load(log)
    window = publish_window(requests, publisher, task_queue)
    for key in ("first_t0", "last_t1"):  # as seconds from the POST, like the timeline
        window[key.replace("t0", "s").replace("t1", "s")] = (
            None if window[key] is None else window[key] - post_wall
        )
    fanout_read = object_reads(requests, "dispatcher", input_path)
    fanout_read["per_input_byte"] = fanout_read["bytes"] / input_bytes if input_bytes else None
    return {
        "requests_logged": len(requests),
        "s3_by_process": s3_by_process(requests, sqs_listeners),
        "chunk_reads": chunk_reads(requests, input_path, tasks),
        "fanout_input_read": fanout_read,
        "publish": window,
    }
