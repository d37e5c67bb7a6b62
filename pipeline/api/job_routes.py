"""The routes of jobs and streams themselves: create (with ``--max-jobs`` and admission), list, get,
cancel, and delete a finished one's data."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from pipeline.api.context import CONFLICT, NOT_FOUND, RETRY_AFTER_S, TOO_MANY, ApiContext, HttpError
from pipeline.api.internal import logged, unavailable
from pipeline.api.models import JobBody, JobList, JobView, Problem, invalid
from pipeline.errors import InvalidInputError, JobError, TooManyJobsError
from pipeline.ledger import JobStatus
from pipeline.streams.control import Command, send
from pipeline.streams.keys import JOB_ID, new_job_id


def job_routes(ctx: ApiContext, kind: str, live: bool) -> APIRouter:
    """The routes of ``/{kind}`` and ``/{kind}/{job_id}`` (``kind``: jobs, or streams when ``live``)."""
    router = APIRouter()
    one = _one(live)
    path_id = Path(pattern=JOB_ID, description=f"the {one}'s id")

    @router.post(
        f"/{kind}",
        status_code=201,
        response_model=JobView,
        operation_id=f"create_{one}",
        summary=f"Create a {one}",
        responses={**CONFLICT, **TOO_MANY},
        dependencies=ctx.secured,
        tags=[kind],
    )
    def create(body: JobBody) -> JobView:
        return _create(ctx, body, live)

    @router.get(
        f"/{kind}",
        response_model=JobList,
        operation_id=f"list_{kind}",
        summary=f"List {kind}, oldest first",
        dependencies=ctx.secured,
        tags=[kind],
    )
    def list_all(
        status: JobStatus | None = Query(default=None, description="only those in this status"),
    ) -> JobList:
        items = [
            ctx.view(i)
            for i in ctx.store.list()
            if bool(i.spec.get("live")) == live and (status is None or i.status is status)
        ]
        return JobList(items=items)

    @router.get(
        f"/{kind}/{{job_id}}",
        response_model=JobView,
        operation_id=f"get_{one}",
        summary=f"Get a {one}",
        responses=NOT_FOUND,
        dependencies=ctx.secured,
        tags=[kind],
    )
    def get(job_id: str = path_id) -> JobView:
        return ctx.view(ctx.job(job_id, live))

    @router.delete(
        f"/{kind}/{{job_id}}",
        status_code=202,
        response_model=JobView,
        operation_id=f"cancel_{one}",
        summary=f"Cancel a {one} (it stops before its next frame)",
        responses={**NOT_FOUND, **CONFLICT},
        dependencies=ctx.secured,
        tags=[kind],
    )
    def cancel(job_id: str = path_id) -> JobView:
        info = ctx.job(job_id, live)
        if info.status.terminal:
            raise HttpError(409, f"{one} {job_id} is {info.status.value} already")
        send(ctx.client, ctx.keys, job_id, Command("stop"))
        if info.status is JobStatus.QUEUED:
            # Only while still queued: a driver that took it up since reads the stop command.
            ctx.store.set_status(job_id, JobStatus.CANCELLED, "cancelled on request", only_from=[info.status])
        elif not ctx.backend.running(job_id):
            ctx.store.set_status(job_id, JobStatus.CANCELLED, "cancelled on request")
        return ctx.view(ctx.store.get(job_id))

    @router.delete(
        f"/{kind}/{{job_id}}/data",
        status_code=204,
        response_class=Response,
        operation_id=f"delete_{one}_data",
        summary=f"Delete a finished {one}'s data at once: its masks, events, state and record",
        responses={
            204: {"description": f"the {one}'s keys are gone"},
            **NOT_FOUND,
            409: {"model": Problem, "description": f"the {one} is queued or running: cancel it first"},
        },
        dependencies=ctx.secured,
        tags=[kind],
    )
    def delete_data(job_id: str = path_id) -> Response:
        ctx.job(job_id, live)
        try:
            existed = ctx.store.delete(job_id)
        except JobError:
            info = ctx.job(job_id, live)
            raise HttpError(
                409,
                f"{one} {job_id} is {info.status.value}: cancel it first (DELETE /{kind}/{job_id})",
            ) from None
        if not existed:  # gone (expired, deleted) since it was read above
            raise HttpError(404, f"no {one} {job_id!r}")
        return Response(status_code=204)

    return router


def _create(ctx: ApiContext, body: JobBody, live: bool) -> JobView:
    """Create the job asked for (within ``--max-jobs``, counted by the ledger's create script, and
    a stream's admission by capacity, under the service-wide lock) and hand it to the backend."""
    spec = ctx.spec_of(body, live)
    try:
        keep_s = ctx.settings.keep_of(body.keep_s)
    except InvalidInputError as exc:
        raise HttpError(422, [invalid(["keep_s"], exc)]) from None
    job_id = body.job_id or new_job_id()
    admitting = live and ctx.settings.admission == "capacity"
    with ctx.creating.held() if admitting else contextlib.nullcontext():
        if admitting:
            ctx.admit_stream(spec)
        try:
            ctx.store.create(job_id, spec.to_dict(), keep_s=keep_s, most_active=ctx.settings.max_jobs)
        except TooManyJobsError as exc:
            raise HttpError(
                429,
                f"this service runs {exc.active} jobs and streams (queued or running), the most it "
                f"takes (--max-jobs {ctx.settings.max_jobs}); try again when one has ended",
                {"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        except JobError:
            raise HttpError(409, f"a job {job_id!r} exists already") from None
    try:
        ctx.backend.submit(job_id)
    except Exception as exc:
        error_id = logged(f"{_one(live)} {job_id} could not be started", exc)
        reason = "could not be started: the cluster did not take it"
        ctx.store.set_status(job_id, JobStatus.FAILED, f"{reason} (error id {error_id})")
        raise HttpError(503, f"{_one(live)} {job_id} {unavailable(reason, error_id)}") from None
    return ctx.view(ctx.store.get(job_id))


def _one(live: bool) -> str:
    return "stream" if live else "job"
