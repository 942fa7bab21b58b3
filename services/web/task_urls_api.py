"""Presigned URLs for a paired worker's CSV task: no storage credentials leave the server.

A paired worker whose connection settings say ``task_urls`` asks, when a CSV task starts,
``POST /api/workers/tasks/{task_id}/urls`` with its token. The answer holds a GET URL for
the task's input (the worker sends ``Range``: only its bytes) and a PUT URL for its
output part, valid ``URL_SECONDS``. They are signed now rather than put in the task
message: a task may wait in its queue longer than a presigned URL lives (at most 7 days
with IAM user keys, hours with role credentials). A worker gets URLs only for tasks of
its own pool; a revoked token gets none. The URLs are never logged (they are
credentials until they expire).
"""

from __future__ import annotations

import logging

import msgspec
from litestar import Controller, Request, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import FromPath

from libs.common import jobs
from libs.common.models import Job, Task
from libs.common.runtime import Components
from services.web.pairing_api import bearer, key_of, token_row

log = logging.getLogger(__name__)

#: How long the URLs work: a CSV task reads its input once and writes its part once.
URL_SECONDS = 900


class TaskUrls(msgspec.Struct):
    task_id: str
    read_url: str  # GET, with Range: bytes=START-(END-1)
    write_url: str  # PUT the output part
    expires_in: int


class TaskUrlsController(Controller):
    path = "/api/workers/tasks"

    @post("/{task_id:str}/urls", status_code=200, sync_to_thread=True)
    def task_urls(
        self, state: State, request: Request[object, object, State], task_id: FromPath[str]
    ) -> TaskUrls:
        """Presigned GET (input) and PUT (output part) URLs for a CSV task of the worker's
        own pool; 401 for a missing, unknown or revoked token, 403 for another pool's."""
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
        if job.kind != jobs.CSV or not job.source:
            raise HTTPException(status_code=409, detail="only CSV tasks read and write storage")
        if not c.storage.can_presign:
            raise HTTPException(
                status_code=409,
                detail="this server's storage cannot presign URLs (it is not on S3)",
            )
        read = c.storage.presign(job.source, "GET", URL_SECONDS)
        write = c.storage.presign(jobs.part_key(job.id, task.seq), "PUT", URL_SECONDS)
        log.debug(
            "task URLs for %s to worker %s", task_id, worker.worker_id,
            extra={"action": "task_urls"},
        )  # fmt: skip
        return TaskUrls(task_id, read, write, URL_SECONDS)
