"""Task URLs for a paired worker: no storage credentials leave the server.

A paired worker whose connection settings say ``task_urls`` asks, when a CSV or track
task starts, ``POST /api/workers/tasks/{task_id}/urls`` with its token. On S3 the answer
holds a presigned GET URL for the task's input (the worker sends ``Range``: only its
bytes) and a presigned PUT URL for its output part, valid ``URL_SECONDS``; they are
signed now rather than put in the task message, since a task may wait in its queue
longer than a presigned URL lives. On a folder there is nothing to presign: the answer
holds relative URLs of the routes below, which the worker joins to its server's URL and
calls with its token (``task_io``). A track task gets a URL per audio file it names
(``tracks``). A worker gets URLs only for tasks of its own pool; a revoked token gets
none. Tokens and URLs are never logged (URLs are credentials until they expire).
"""

from __future__ import annotations

import logging

import anyio.to_thread
import msgspec
from litestar import Controller, Request, get, post, put
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import FromPath
from litestar.response import Response, Stream

from libs.common import jobs
from libs.common.runtime import Components
from services.web import task_io
from services.web.task_io import URL_SECONDS

log = logging.getLogger(__name__)
OCTETS = "application/octet-stream"


class TaskUrls(msgspec.Struct):
    task_id: str
    read_url: str  # GET, with Range: bytes=START-(END-1); "" for a track task
    write_url: str  # PUT the output part; "" for a track task
    expires_in: int
    #: A track task's audio files: track id -> GET URL (relative: with the token).
    tracks: dict[str, str] = msgspec.field(default_factory=dict)


class TaskUrlsController(Controller):
    path = "/api/workers/tasks"

    @post("/{task_id:str}/urls", status_code=200, sync_to_thread=True)
    def task_urls(
        self, state: State, request: Request[object, object, State], task_id: FromPath[str]
    ) -> TaskUrls:
        """URLs for a CSV or track task of the worker's own pool: presigned on S3, else
        relative ones of this web service. 401 for a missing, unknown or revoked token,
        403 for another pool's task, 404 for an unknown one, 409 for another kind."""
        c: Components = state.components
        g = task_io.granted(state, request, task_id)
        job, task = g.job, g.task
        if job.kind in jobs.TRACK_KINDS:
            answer = TaskUrls(task_id, "", "", URL_SECONDS, task_io.track_urls(task))
        elif not task_io.is_csv(job):
            raise HTTPException(
                status_code=409, detail="only CSV and track tasks read and write storage"
            )
        elif c.storage.can_presign:
            source = task_io.need_csv(job)
            read = c.storage.presign(source, "GET", URL_SECONDS)
            write = c.storage.presign(jobs.part_key(job.id, task.seq), "PUT", URL_SECONDS)
            answer = TaskUrls(task_id, read, write, URL_SECONDS)
        else:
            read, write = f"{self.path}/{task_id}/input", f"{self.path}/{task_id}/output"
            answer = TaskUrls(task_id, read, write, URL_SECONDS)
        log.debug(
            "task URLs for %s to worker %s", task_id, g.worker.worker_id,
            extra={"action": "task_urls"},
        )  # fmt: skip
        return answer

    @get("/{task_id:str}/input", sync_to_thread=True)
    def task_input(
        self, state: State, request: Request[object, object, State], task_id: FromPath[str]
    ) -> Response[bytes]:
        """``206`` with the bytes of ``Range: bytes=A-B`` of the job's upload, which must
        lie within the task's own bytes (416); 400 for a missing or malformed Range."""
        c: Components = state.components
        g = task_io.granted(state, request, task_id)
        source = task_io.need_csv(g.job)
        start, end = task_io.byte_range(request.headers.get("range"), g.task)
        try:
            data = c.storage.read_range(source, start, end)
        except FileNotFoundError:
            raise NotFoundException(detail=f"the upload of job {g.job.id} is gone") from None
        except ValueError:
            raise HTTPException(
                status_code=416, detail="the upload ends before these bytes"
            ) from None
        total = g.job.source_bytes or "*"
        headers = {"Content-Range": f"bytes {start}-{end - 1}/{total}"}
        return Response(data, status_code=206, media_type=OCTETS, headers=headers)

    @put("/{task_id:str}/output", status_code=204, request_max_body_size=None)
    async def task_output(
        self, state: State, request: Request[object, object, State], task_id: FromPath[str]
    ) -> None:
        """Store the body as the task's output part, all or nothing. ``413`` over
        ``task_io.output_limit`` (checked here: the limit follows the settings)."""
        c: Components = state.components
        g = await anyio.to_thread.run_sync(task_io.granted, state, request, task_id)
        task_io.need_csv(g.job)
        limit = task_io.output_limit(c.settings)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise task_io.too_large(limit)
        body = bytearray()
        async for block in request.stream():
            body += block
            if len(body) > limit:
                raise task_io.too_large(limit)
        key = jobs.part_key(g.job.id, g.task.seq)
        await anyio.to_thread.run_sync(c.storage.write, key, bytes(body))

    @get("/{task_id:str}/tracks/{track_id:int}", sync_to_thread=True)
    def task_track(
        self,
        state: State,
        request: Request[object, object, State],
        task_id: FromPath[str],
        track_id: FromPath[int],
    ) -> Stream:
        """The audio file of one of the task's own tracks, streamed; 404 for a track the
        task does not name (or names by search), or a file that is gone."""
        g = task_io.granted(state, request, task_id)
        if g.job.kind not in jobs.TRACK_KINDS:
            raise HTTPException(status_code=409, detail="only track tasks have audio files")
        location = task_io.track_location(g.task, track_id)
        try:
            reader, size = task_io.open_location(location)
        except FileNotFoundError:
            raise NotFoundException(detail=f"the file of track {track_id} is gone") from None
        headers = {"Content-Length": str(size)}
        return Stream(task_io.blocks(reader), media_type=OCTETS, headers=headers)
