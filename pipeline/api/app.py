"""The REST API of ``samstream serve``: jobs and live streams, their tracks, masks and events.

The API is stateless: every job lives in Redis (its hash, control, masks and events streams), and
runs in the cluster (a :class:`Backend` starts it). So an API process can stop and start again, or
run several times side by side, and the jobs go on.

Every request, ``/openapi.json`` included, needs ``Authorization: Bearer <token>``: 401 otherwise.
"""

from __future__ import annotations

import hmac
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import redis
from fastapi import FastAPI, Path, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline.api.models import (
    Accepted,
    EventPage,
    EventView,
    Health,
    JobBody,
    JobList,
    JobView,
    MaskEntryView,
    MaskPage,
    Problem,
    TrackCommandBody,
    invalid,
)
from pipeline.errors import InvalidInputError, JobError, RedisUnavailableError
from pipeline.sources.policy import SourcePolicy
from pipeline.spec import JobSpec
from pipeline.streams import JobInfo, JobStatus, JobStore, Keys, MaskReader, read_events
from pipeline.streams.control import Command, send
from pipeline.streams.keys import new_job_id
from pipeline.streams.retention import DEFAULT_KEEP_S, MAX_MAXLEN, check_keep, default_maxlen, format_keep

VERSION = "1"
T = TypeVar("T")
JOB_ID = r"^[A-Za-z0-9_.-]{1,128}$"


class Backend(Protocol):
    """Where jobs run: the API creates a job in Redis, then asks the backend to run it."""

    def submit(self, job_id: str) -> None:
        """Start running the (queued) job, or resume it; returns at once."""

    def running(self, job_id: str) -> bool:
        """Whether something is running the job now."""


@dataclass(frozen=True)
class ApiSettings:
    """How the API behaves.

    Attributes:
        token: the bearer token every request must carry.
        policy: the sources it accepts.
        prefix: Redis key prefix.
        image_size: encoder size of jobs that do not choose one.
        weights: the weights of the service's model (stored in each job's spec).
        keep_s: seconds a finished job's keys stay in Redis unless it asks for less (None: for ever).
        max_keep_s: the longest ``keep_s`` a job may ask for (None: no bound).
        max_maxlen: the most masks entries a job or stream may ask to keep.
    """

    token: str
    policy: SourcePolicy = field(default_factory=SourcePolicy)
    prefix: str = "samstream:"
    image_size: int = 1024
    weights: str = "official"
    keep_s: int | None = DEFAULT_KEEP_S
    max_keep_s: int | None = DEFAULT_KEEP_S
    max_maxlen: int = MAX_MAXLEN

    def __post_init__(self) -> None:
        if not self.token:
            raise InvalidInputError("the API needs a token (--token or SAMSTREAM_API_TOKEN)")
        check_keep(self.keep_s, "--keep")
        check_keep(self.max_keep_s, "--max-keep")
        if self.max_keep_s is not None and (self.keep_s is None or self.keep_s > self.max_keep_s):
            raise InvalidInputError(
                f"--keep ({format_keep(self.keep_s)}) is longer than --max-keep ({format_keep(self.max_keep_s)})"
            )
        if isinstance(self.max_maxlen, bool) or not isinstance(self.max_maxlen, int) or self.max_maxlen < 1:
            raise InvalidInputError(f"--max-maxlen must be an int >= 1, got {self.max_maxlen!r}")

    def keep_of(self, asked: int | None) -> int | None:
        """How long a job that asks for ``asked`` seconds (None: the default) is kept.

        Raises:
            InvalidInputError: it asks for more than :attr:`max_keep_s`.
        """
        if asked is None:
            return self.keep_s
        if self.max_keep_s is not None and asked > self.max_keep_s:
            raise InvalidInputError(
                f"keep_s must be at most {self.max_keep_s} ({format_keep(self.max_keep_s)}, "
                f"this service's maximum), got {asked}"
            )
        return asked

    def maxlen_of(self, asked: int | None, live: bool) -> int | None:
        """The masks entries a job keeps: ``asked``, else the CLI's default (live: 10,000; files: all).

        Raises:
            InvalidInputError: it asks for more than :attr:`max_maxlen`.
        """
        if asked is not None and asked > self.max_maxlen:
            raise InvalidInputError(
                f"maxlen must be at most {self.max_maxlen} (this service's maximum), got {asked}"
            )
        return default_maxlen(asked, live)


class HttpError(Exception):
    """An HTTP error answer: its status and ``detail`` (a message, or FastAPI's 422 list)."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


class BearerAuth:
    """ASGI middleware: 401 for any HTTP request without the right bearer token (docs and spec too)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = JSONResponse(
                    {"detail": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing or wrong bearer token"},
    422: {"model": Problem, "description": "invalid request (detail names the field)"},
    503: {"model": Problem, "description": "Redis or the cluster is unreachable"},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "no such job"}}
_CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": Problem, "description": "state forbids it"}}


def create_app(settings: ApiSettings, client: redis.Redis, backend: Backend) -> FastAPI:
    """The API over a Redis client and a backend."""
    keys = Keys(settings.prefix)
    store = JobStore(client, keys)
    app = FastAPI(
        title="samstream",
        version=VERSION,
        description=(
            "Video segmentation jobs and live streams on MobileSAM. Masks are published to Redis "
            "streams (see the wire format) and can be paged here. Every request needs "
            "`Authorization: Bearer <token>`."
        ),
        responses=_ERRORS,
    )
    app.add_middleware(BearerAuth, token=settings.token)
    bearer = HTTPBearer(auto_error=False, description="the service's API token")
    secured = [Security(bearer)]

    @app.exception_handler(HttpError)
    async def _api_error(request: Request, exc: HttpError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RedisUnavailableError)
    async def _redis_down(request: Request, exc: RedisUnavailableError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    def job(job_id: str, live: bool) -> JobInfo:
        try:
            info = store.get(job_id)
        except JobError:
            raise HttpError(404, f"no {'stream' if live else 'job'} {job_id!r}") from None
        if bool(info.spec.get("live")) != live:
            where = "/streams" if info.spec.get("live") else "/jobs"
            raise HttpError(404, f"no {'stream' if live else 'job'} {job_id!r} (it is under {where})")
        return info

    def view(info: JobInfo) -> JobView:
        return JobView.of(info, keys.masks(info.job_id), keys.events(info.job_id))

    def spec_of(body: JobBody, live: bool) -> JobSpec:
        try:
            source = settings.policy.check(body.source)
            _check_kind(source, live)
        except InvalidInputError as exc:
            raise HttpError(422, [invalid(["source"], exc)]) from None
        tracks = []
        for i, t in enumerate(body.tracks):
            try:
                tracks.append(t.to_track())
            except InvalidInputError as exc:
                raise HttpError(422, [invalid(["tracks", i], exc)]) from None
        try:
            maxlen = settings.maxlen_of(body.maxlen, live)
        except InvalidInputError as exc:
            raise HttpError(422, [invalid(["maxlen"], exc)]) from None
        try:
            return JobSpec(
                source=source,
                tracks=tuple(tracks),
                stride=body.stride,
                image_size=body.image_size or settings.image_size,
                weights=settings.weights,
                live=live,
                maxlen=maxlen,
                give_up_s=body.give_up_s,
                tracking=dict(body.tracking),
            )
        except InvalidInputError as exc:
            text = str(exc)
            where = ["tracking"] if "tracking" in text else ["tracks"] if "track" in text else []
            raise HttpError(422, [invalid(where, exc)]) from None

    def add_routes(kind: str, live: bool) -> None:
        one = "stream" if live else "job"
        path_id = Path(pattern=JOB_ID, description=f"the {one}'s id")

        @app.post(
            f"/{kind}",
            status_code=201,
            response_model=JobView,
            operation_id=f"create_{one}",
            summary=f"Create a {one}",
            responses={**_CONFLICT},
            dependencies=secured,
            tags=[kind],
        )
        def create(body: JobBody) -> JobView:
            spec = spec_of(body, live)
            try:
                keep_s = settings.keep_of(body.keep_s)
            except InvalidInputError as exc:
                raise HttpError(422, [invalid(["keep_s"], exc)]) from None
            job_id = body.job_id or new_job_id()
            try:
                store.create(job_id, spec.to_dict(), keep_s=keep_s)
            except JobError:
                raise HttpError(409, f"a job {job_id!r} exists already") from None
            try:
                backend.submit(job_id)
            except Exception as exc:
                store.set_status(job_id, JobStatus.FAILED, f"could not be started: {exc}")
                raise HttpError(503, f"{one} {job_id} could not be started: {exc}") from None
            return view(store.get(job_id))

        @app.get(
            f"/{kind}",
            response_model=JobList,
            operation_id=f"list_{kind}",
            summary=f"List {kind}, oldest first",
            dependencies=secured,
            tags=[kind],
        )
        def list_all(
            status: JobStatus | None = Query(default=None, description="only those in this status"),
        ) -> JobList:
            items = [
                view(i)
                for i in store.list()
                if bool(i.spec.get("live")) == live and (status is None or i.status is status)
            ]
            return JobList(items=items)

        @app.get(
            f"/{kind}/{{job_id}}",
            response_model=JobView,
            operation_id=f"get_{one}",
            summary=f"Get a {one}",
            responses=_NOT_FOUND,
            dependencies=secured,
            tags=[kind],
        )
        def get(job_id: str = path_id) -> JobView:
            return view(job(job_id, live))

        @app.delete(
            f"/{kind}/{{job_id}}",
            status_code=202,
            response_model=JobView,
            operation_id=f"cancel_{one}",
            summary=f"Cancel a {one} (it stops before its next frame)",
            responses={**_NOT_FOUND, **_CONFLICT},
            dependencies=secured,
            tags=[kind],
        )
        def cancel(job_id: str = path_id) -> JobView:
            info = job(job_id, live)
            if info.status.terminal:
                raise HttpError(409, f"{one} {job_id} is {info.status.value} already")
            send(client, keys, job_id, Command("stop"))
            if info.status is JobStatus.QUEUED or not backend.running(job_id):
                store.set_status(job_id, JobStatus.CANCELLED, "cancelled on request")
            return view(store.get(job_id))

        @app.delete(
            f"/{kind}/{{job_id}}/data",
            status_code=204,
            response_class=Response,
            operation_id=f"delete_{one}_data",
            summary=f"Delete a finished {one}'s data at once: its masks, events, state and record",
            responses={
                204: {"description": f"the {one}'s keys are gone"},
                **_NOT_FOUND,
                409: {"model": Problem, "description": f"the {one} is queued or running: cancel it first"},
            },
            dependencies=secured,
            tags=[kind],
        )
        def delete_data(job_id: str = path_id) -> Response:
            job(job_id, live)
            try:
                existed = store.delete(job_id)
            except JobError:
                info = job(job_id, live)
                raise HttpError(
                    409,
                    f"{one} {job_id} is {info.status.value}: cancel it first (DELETE /{kind}/{job_id})",
                ) from None
            if not existed:  # gone (expired, deleted) since it was read above
                raise HttpError(404, f"no {one} {job_id!r}")
            return Response(status_code=204)

        @app.post(
            f"/{kind}/{{job_id}}/tracks",
            status_code=202,
            response_model=Accepted,
            operation_id=f"add_{one}_track",
            summary="Add a track, or re-prompt one (applies from the next frame)",
            responses={**_NOT_FOUND, **_CONFLICT},
            dependencies=secured,
            tags=[kind],
        )
        def add_track(body: TrackCommandBody, job_id: str = path_id) -> Accepted:
            info = job(job_id, live)
            if info.status.terminal:
                raise HttpError(409, f"{one} {job_id} is {info.status.value}: its tracks are final")
            try:
                prompt = body.to_prompt()
            except InvalidInputError as exc:
                raise HttpError(422, [invalid([], exc)]) from None
            send(client, keys, job_id, Command(body.action, body.id, prompt))
            return Accepted(id=job_id, command=body.action, track=body.id)

        @app.delete(
            f"/{kind}/{{job_id}}/tracks/{{track_id}}",
            status_code=202,
            response_model=Accepted,
            operation_id=f"remove_{one}_track",
            summary="Remove a track (from the next frame)",
            responses={**_NOT_FOUND, **_CONFLICT},
            dependencies=secured,
            tags=[kind],
        )
        def remove_track(job_id: str = path_id, track_id: int = Path(ge=1, le=2**31 - 1)) -> Accepted:
            info = job(job_id, live)
            if info.status.terminal:
                raise HttpError(409, f"{one} {job_id} is {info.status.value}: its tracks are final")
            send(client, keys, job_id, Command("remove", track_id))
            return Accepted(id=job_id, command="remove", track=track_id)

        @app.get(
            f"/{kind}/{{job_id}}/masks",
            response_model=MaskPage,
            operation_id=f"get_{one}_masks",
            summary="Mask entries (COCO RLE per track), in frame order",
            responses=_NOT_FOUND,
            dependencies=secured,
            tags=[kind],
        )
        def masks(job_id: str = path_id, after: str | None = AFTER, count: int = COUNT) -> MaskPage:
            info = job(job_id, live)
            entries = _page(MaskReader(client, keys, job_id).read_entries(after, None, count), count)
            page = [
                MaskEntryView(
                    id=e.entry_id,
                    frame=e.result.frame_index,
                    pts=e.result.pts,
                    capture_time=e.result.capture_time,
                    publish_time=e.publish_time,
                    width=e.result.width,
                    height=e.result.height,
                    tracks=[dict(t.__dict__) for t in e.result.tracks],
                )
                for e in entries
            ]
            return MaskPage(entries=page, next=page[-1].id if page else after, status=info.status.value)

        @app.get(
            f"/{kind}/{{job_id}}/events",
            response_model=EventPage,
            operation_id=f"get_{one}_events",
            summary="Events: status changes, tracks lost and found, reconnects, errors",
            responses=_NOT_FOUND,
            dependencies=secured,
            tags=[kind],
        )
        def events(job_id: str = path_id, after: str | None = AFTER, count: int = COUNT) -> EventPage:
            job(job_id, live)
            found = _page(read_events(client, keys, job_id, after, count), count)
            page = [
                EventView(
                    id=e.entry_id,
                    type=e.type,
                    time=e.time,
                    frame=e.frame,
                    track=e.track,
                    detail=e.detail,
                    data=json.loads(json.dumps(e.data, default=str)),
                )
                for e in found
            ]
            return EventPage(events=page, next=page[-1].id if page else after)

    add_routes("jobs", live=False)
    add_routes("streams", live=True)

    @app.get("/healthz", response_model=Health, operation_id="health", dependencies=secured, tags=["service"])
    def health() -> Health:
        try:
            client.ping()
        except redis.RedisError:
            raise HttpError(503, "Redis does not answer") from None
        return Health(status="ok", redis=True)

    return app


AFTER = Query(default=None, pattern=r"^\d{1,19}-\d{1,19}$", description="the last entry id seen")
COUNT = Query(default=100, ge=1, le=1000, description="most entries to return")


def _page(entries: Iterator[T], count: int) -> list[T]:
    """Up to ``count`` entries of a stream reader; a bad ``after`` id is a 422 naming it."""
    try:
        return list(itertools.islice(entries, count))
    except InvalidInputError as exc:
        raise HttpError(422, [{"loc": ["query", "after"], "msg": str(exc), "type": "value_error"}]) from None


def _check_kind(source: str, live: bool) -> None:
    """A job reads a file or an http(s) URL; a live stream reads a feed."""
    from pipeline.sources.feed import LIVE_SCHEMES
    from pipeline.sources.opening import scheme_of
    from pipeline.sources.video import URL_SCHEMES

    scheme = scheme_of(source)
    if scheme is None or scheme == "file":
        return
    if not live and scheme not in URL_SCHEMES:
        raise InvalidInputError(
            f"a job reads files and http(s) URLs; a {scheme}:// feed is a live stream: POST it to /streams"
        )
    if live and scheme not in LIVE_SCHEMES:
        raise InvalidInputError(f"a live stream cannot read {scheme}:// sources")


def recover(store: JobStore, backend: Backend) -> list[str]:
    """Start again every unfinished job that nothing runs (the cluster restarted); their ids."""
    resumed = []
    for info in store.list():
        if not info.status.terminal and not backend.running(info.job_id):
            backend.submit(info.job_id)
            resumed.append(info.job_id)
    return resumed
