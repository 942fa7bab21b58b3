"""The jobs API: validate, call a lifecycle function, return. Thin by design."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, TypeVar

import anyio.to_thread
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import FromPath, JSONBody, Parameter
from litestar.response import Response, Stream
from sqlalchemy import func, select

from libs.common import jobs, mapping
from libs.common.audio import sources
from libs.common.models import COMPLETED, ItemError, Job
from libs.common.runtime import Components
from services.web import ownership, schemas, upload
from services.web.auth import Identity, require_user

T = TypeVar("T")
Limit = Annotated[int, Parameter(ge=1, le=1000)]
Offset = Annotated[int, Parameter(ge=0)]


def _components(state: State) -> Components:
    return state.components


def _job(c: Components, who: Identity, job_id: str) -> Job:
    """The job if the caller may see it (their own, or any for an admin); 404 otherwise."""
    with c.sessions() as session:
        return ownership.job(session, who, job_id)


class JobsController(Controller):
    """A member's jobs are their own (another's answer 404); an admin sees every job."""

    path = "/api/jobs"
    guards = [require_user]

    @post("/csv", status_code=202, request_max_body_size=None)
    async def submit_csv(self, request: Request, state: State) -> Response[schemas.JobView]:
        """Upload a CSV (multipart field `file`) with an optional JSON `mapping` spec and an
        optional `pool` (default `shared`; a pairing's pool in remote worker mode)."""
        c, who = _components(state), ownership.caller(request)
        job_id = jobs.new_job_id()
        key = jobs.upload_key(job_id)
        received = await upload.receive(
            request.stream(), request.headers.get("content-type", ""), c.storage, key,
            c.settings.max_upload_bytes,
        )  # fmt: skip
        try:
            spec = mapping.parse_spec(received.mapping)
            spec.check_header(received.header)
        except mapping.SpecError as exc:
            await anyio.to_thread.run_sync(c.storage.delete, key)
            raise upload.unprocessable(f"invalid mapping spec: {exc}") from None
        try:
            job = await anyio.to_thread.run_sync(_create, c, who, job_id, received, spec.to_json())
        except BaseException:
            await anyio.to_thread.run_sync(c.storage.delete, key)
            raise
        return _accepted(state, job)

    @post("/canary", status_code=202, sync_to_thread=True)
    def submit_canary(
        self, state: State, request: Request, data: JSONBody[schemas.CanaryRequest]
    ) -> Response[schemas.JobView]:
        """Tasks that each hold a worker for `seconds`: to smoke-test workers and leases."""
        c, who = _components(state), ownership.caller(request)
        job_id = jobs.new_job_id()
        with c.sessions() as session, session.begin():
            job = jobs.create_canary_job(
                session, job_id=job_id, tasks=data.tasks, seconds=data.seconds,
                pool=ownership.job_pool(session, who, data.pool), owner_id=who.id,
            )  # fmt: skip
        return _accepted(state, job)

    @post("/lastfm", status_code=202, sync_to_thread=True)
    def submit_lastfm(
        self, state: State, request: Request, data: JSONBody[schemas.LastfmRequest]
    ) -> Response[schemas.JobView]:
        """Vectorize a Last.fm user's tracks; `period` applies to `source: "top"` only."""
        c = _components(state)
        if not c.settings.lastfm_api_key:
            raise HTTPException(
                status_code=503,
                detail="Last.fm jobs are not available: LASTFM_API_KEY is not set on the server",
            )
        if data.period is not None and data.source != "top":
            raise upload.unprocessable(
                f"'period' applies only to source 'top', not {data.source!r}"
            )
        params = {"username": data.username, "source": data.source,
                  "period": data.period or "overall", "limit": data.limit}  # fmt: skip
        return _submit_tracks(state, request, jobs.LASTFM, params, data.pool)

    @post("/audio", status_code=202, sync_to_thread=True)
    def submit_audio(
        self, state: State, request: Request, data: JSONBody[schemas.AudioRequest]
    ) -> Response[schemas.JobView]:
        """Vectorize every audio file under `prefix` (file:///dir/ or s3://bucket/prefix/)."""
        c = _components(state)
        try:
            prefix = sources.allowed_prefix(
                data.prefix, c.settings.audio_roots, embedded=c.settings.embedded
            )
        except ValueError as exc:
            raise upload.unprocessable(f"invalid prefix: {exc}") from None
        params = {"prefix": prefix, "limit": data.limit}
        return _submit_tracks(state, request, jobs.AUDIO, params, data.pool)

    @get("/", sync_to_thread=True)
    def list_jobs(
        self, state: State, request: Request, limit: Limit = 50, offset: Offset = 0
    ) -> schemas.JobPage:
        """Jobs, newest first: the caller's own (every job for an admin)."""
        where = ownership.mine(ownership.caller(request), Job.owner_id)
        with _components(state).sessions() as session:
            total = session.scalar(select(func.count()).select_from(Job).where(where)) or 0
            rows = session.scalars(
                select(Job).where(where).order_by(Job.created_at.desc(), Job.id)
                .limit(limit).offset(offset)
            ).all()  # fmt: skip
        return schemas.JobPage([schemas.job_view(j) for j in rows], total, limit, offset)

    @get("/{job_id:str}", sync_to_thread=True)
    def get_job(self, state: State, request: Request, job_id: FromPath[str]) -> schemas.JobView:
        return schemas.job_view(_job(_components(state), ownership.caller(request), job_id))

    @get("/{job_id:str}/errors", sync_to_thread=True)
    def get_errors(
        self, state: State, request: Request, job_id: FromPath[str], limit: Limit = 100,
        offset: Offset = 0,
    ) -> schemas.ErrorPage:  # fmt: skip
        """Row-level errors in row order: row number (1 = first data row), column, reason."""
        c = _components(state)
        _job(c, ownership.caller(request), job_id)
        with c.sessions() as session:
            where = ItemError.job_id == job_id
            total = session.scalar(select(func.count()).where(where)) or 0
            rows = session.scalars(
                select(ItemError).where(where).order_by(ItemError.row, ItemError.id)
                .limit(limit).offset(offset)
            ).all()  # fmt: skip
        items = [schemas.RowErrorView(e.row, e.column, e.reason) for e in rows]
        return schemas.ErrorPage(items, total, limit, offset)

    @get("/{job_id:str}/output", sync_to_thread=True)
    def get_output(self, state: State, request: Request, job_id: FromPath[str]) -> Stream:
        """The mapped CSV, in input order; 409 until the job is completed."""
        c = _components(state)
        job = _job(c, ownership.caller(request), job_id)
        if job.state != COMPLETED or not job.output:
            raise HTTPException(
                status_code=409, detail=f"the output is not ready: the job is {job.state}"
            )
        name = (job.params.get("filename") or "output.csv").rsplit(".", 1)[0] + "-mapped.csv"
        return Stream(
            _read_blocks(c, job.output),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{_safe(name)}"'},
        )

    @post("/{job_id:str}/cancel", status_code=202, sync_to_thread=True)
    def cancel_job(self, state: State, request: Request, job_id: FromPath[str]) -> schemas.JobView:
        c = _components(state)
        with c.sessions() as session, session.begin():
            ownership.job(session, ownership.caller(request), job_id)
            job = _lifecycle(lambda: jobs.cancel(session, job_id), job_id)
        state.relay.wake()
        return schemas.job_view(job)

    @post("/{job_id:str}/retry", status_code=202, sync_to_thread=True)
    def retry_job(self, state: State, request: Request, job_id: FromPath[str]) -> schemas.RetryView:
        """Queue the job's dead-lettered tasks again."""
        c = _components(state)
        with c.sessions() as session, session.begin():
            ownership.job(session, ownership.caller(request), job_id)
            count = _lifecycle(lambda: jobs.retry_dead(session, job_id), job_id)
        state.relay.wake()
        return schemas.RetryView(job_id, count)


def _lifecycle(fn: Callable[[], T], job_id: str) -> T:
    try:
        return fn()
    except LookupError:
        raise NotFoundException(detail=f"no job with id {job_id!r}") from None
    except jobs.JobStateError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None


def _submit_tracks(
    state: State, request: Request, kind: str, params: dict[str, object], pool: str | None
) -> Response[schemas.JobView]:
    job_id, who = jobs.new_job_id(), ownership.caller(request)
    with _components(state).sessions() as session, session.begin():
        job = jobs.create_track_job(
            session, job_id=job_id, kind=kind, params=params,
            pool=ownership.job_pool(session, who, pool), owner_id=who.id,
        )  # fmt: skip
    return _accepted(state, job)


def _accepted(state: State, job: Job) -> Response[schemas.JobView]:
    """202 with the new job; the relay publishes its message now rather than at its next poll."""
    state.relay.wake()
    return Response(
        schemas.job_view(job), status_code=202, headers={"Location": f"/api/jobs/{job.id}"}
    )


def _create(
    c: Components, who: Identity, job_id: str, received: upload.Upload, spec_json: str
) -> Job:
    with c.sessions() as session, session.begin():
        return jobs.create_csv_job(
            session, job_id=job_id, source_bytes=received.size, header=received.header,
            spec_json=spec_json, filename=received.filename,
            pool=ownership.job_pool(session, who, received.pool), owner_id=who.id,
        )  # fmt: skip


def _read_blocks(c: Components, key: str) -> Iterator[bytes]:
    with c.storage.open_read(key) as stream:
        while block := stream.read(1 << 20):
            yield block


def _safe(name: str) -> str:
    return "".join(ch for ch in name if ch.isalnum() or ch in "._- ")[:200] or "output.csv"
