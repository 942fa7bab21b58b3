"""A paired worker's task I/O through the web, for storage that cannot presign URLs.

On a folder (``file://``) there is nothing to presign: ``POST .../urls`` answers
relative URLs on the web itself, and the routes of ``task_urls_api`` serve them with
the worker token (``Authorization: Bearer``): a ranged GET of the task's own bytes of
its job's upload, a PUT of its output part, a GET of each audio file its track task
names. The same checks as for presigned URLs apply to every request (a live token,
the worker's own pool, the right kind of task), and they work on S3 storage too (the
web then proxies). This module holds their pure parts; tokens and URLs are never logged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from litestar import Request
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException

from libs.common import jobs, s3
from libs.common.models import Job, Task, WorkerToken
from libs.common.runtime import Components
from libs.common.settings import Settings
from services.web.pairing_api import bearer, key_of, token_row

#: How long presigned URLs work: a task reads its input once and writes its part once.
URL_SECONDS = 900
READ_BLOCK = 1 << 20
_RANGE = re.compile(r"bytes=(\d{1,19})-(\d{1,19})")


@dataclass(frozen=True)
class Granted:
    """A task a worker token may work on, with its job."""

    worker: WorkerToken
    task: Task
    job: Job


def granted(state: State, request: Request[object, object, State], task_id: str) -> Granted:
    """The task, if the request's token is live (401) and of the task's pool (403);
    404 for an unknown task; 503 when pairing is not configured."""
    key, token = key_of(state), bearer(request)
    c: Components = state.components
    with c.sessions() as session:
        worker = token_row(session, key, token)
        task = session.get(Task, task_id)
        job = session.get(Job, task.job_id) if task is not None else None
    if task is None or job is None:
        raise NotFoundException(detail=f"no task with id {task_id!r}")
    if job.pool != worker.pool:
        raise HTTPException(status_code=403, detail=f"task {task_id} is not in your pool")
    return Granted(worker, task, job)


def is_csv(job: Job) -> bool:
    return job.kind == jobs.CSV and bool(job.source)


def need_csv(job: Job) -> str:
    """The job's upload key; 409 for a task that is not a CSV task."""
    if not is_csv(job) or job.source is None:
        raise HTTPException(status_code=409, detail="only CSV tasks read and write storage")
    return job.source


def output_limit(settings: Settings) -> int:
    """The largest output part a worker may PUT: room for a part several times its input
    (computed columns, quoting) and never under 64 MiB."""
    return max(64 << 20, 4 * settings.chunk_max_bytes)


def too_large(limit: int) -> HTTPException:
    return HTTPException(status_code=413, detail=f"an output part is at most {limit} bytes")


def byte_range(header: str | None, task: Task) -> tuple[int, int]:
    """``[start, end)`` of ``Range: bytes=A-B``: 400 when missing or malformed (one closed
    range only), 416 when not within the task's own bytes ``[task.start, task.end)``."""
    found = _RANGE.fullmatch((header or "").strip())
    if found is None:
        raise HTTPException(status_code=400, detail="send Range: bytes=START-END (one range)")
    start, last = int(found[1]), int(found[2])
    if last < start:
        raise HTTPException(status_code=400, detail="the range ends before it starts")
    if start < task.start or last >= task.end:
        raise HTTPException(
            status_code=416,
            detail=f"bytes {start}-{last} are not within this task's bytes "
            f"{task.start}-{task.end - 1}",
        )
    return start, last + 1


# -------------------------------------------------------------------------- audio files


def track_location(task: Task, track_id: int) -> str:
    """The location of one of the task's own tracks; 404 for any other track, or one
    found by search (no file)."""
    for item in task.items or ():
        if item.get("id") == track_id and item.get("location"):
            return str(item["location"])
    raise NotFoundException(detail=f"task {task.id} has no file for track {track_id}")


def track_urls(task: Task) -> dict[str, str]:
    """A URL per track of the task with a file: presigned on S3 (a GET of the object,
    signed with this server's credentials), else the web's own track route."""
    urls: dict[str, str] = {}
    for item in task.items or ():
        location = str(item.get("location") or "")
        if not location:
            continue  # found by search: the worker downloads it from the internet
        parts = urlsplit(location)
        if parts.scheme == "s3" and parts.netloc:
            urls[str(item["id"])] = _bucket(parts.netloc).presign(
                parts.path.lstrip("/"), "GET", URL_SECONDS
            )
        else:
            urls[str(item["id"])] = f"/api/workers/tasks/{task.id}/tracks/{item['id']}"
    return urls


def open_location(location: str) -> tuple[BinaryIO, int]:
    """A reader of the file at ``location`` (``file://`` or ``s3://``) and its size;
    FileNotFoundError when it is gone."""
    parts = urlsplit(location)
    if parts.scheme == "file":
        path = Path(unquote(parts.path))
        if not path.is_file():
            raise FileNotFoundError(f"the file is gone: {path.name}")
        return open(path, "rb"), path.stat().st_size
    if parts.scheme == "s3" and parts.netloc:
        bucket, key = _bucket(parts.netloc), parts.path.lstrip("/")
        size = bucket.size(key)
        return bucket.open_read(key), size
    raise ValueError(f"unsupported audio location scheme {parts.scheme!r}")


def blocks(reader: BinaryIO) -> Iterator[bytes]:
    """The reader's bytes, a block at a time; closes it at the end (or when abandoned)."""
    with reader:
        while block := reader.read(READ_BLOCK):
            yield block


@lru_cache(maxsize=32)
def _bucket(name: str) -> s3.Bucket:
    """One client per bucket (building a boto3 client costs tens of milliseconds)."""
    return s3.Bucket(f"s3://{name}", part_size=s3.PART_SIZE, endpoint_url=None)
