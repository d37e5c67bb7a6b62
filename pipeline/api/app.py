"""The REST API of ``samstream serve``: jobs and live streams, their tracks, masks and events.

The API is stateless: every job lives in Redis (its hash, control, masks and events streams), and
runs in the cluster (a :class:`Backend` starts it). So an API process can stop and start again, or
run several times side by side, and the jobs go on.

Every request, ``/openapi.json`` included, needs ``Authorization: Bearer <token>`` (or the browser
viewer's session cookie, :mod:`pipeline.api.viewer.sessions`): 401 otherwise. The viewer's pages
are served at ``/view`` (:mod:`pipeline.api.viewer`).
The service's limits (:class:`ApiSettings`) answer 429, 409, 422 or 413 saying which option sets
them; its own failures answer 500 or 503 with an error id, the details going to its log only
(:mod:`pipeline.api.internal`).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import redis
from fastapi import FastAPI, Path, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer

from pipeline.api.headers import SecurityHeaders
from pipeline.api.internal import InternalErrors, logged, unavailable
from pipeline.api.limits import BodyLimit, CreationLock, TrackSlots, spec_track_ids
from pipeline.api.models import (
    MAX_TRACKS,
    TRACKS_CEILING,
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
from pipeline.api.viewer.routes import mount_static, page, viewer_router
from pipeline.api.viewer.sessions import BearerAuth, Sessions
from pipeline.config import IMAGE_SIZE_RULE, is_image_size
from pipeline.errors import InvalidInputError, JobError, RedisUnavailableError
from pipeline.jobs.admission import Demand, EncoderCapacity, admit
from pipeline.sources.limits import DEFAULT_MAX_FRAME_PIXELS
from pipeline.sources.policy import SourcePolicy
from pipeline.spec import MAX_FPS, AutoSize, JobSpec
from pipeline.streams import JobInfo, JobStatus, JobStore, Keys, MaskReader, read_events
from pipeline.streams.control import Command, send
from pipeline.streams.keys import JOB_ID, new_job_id
from pipeline.streams.retention import DEFAULT_KEEP_S, MAX_MAXLEN, check_keep, default_maxlen, format_keep

VERSION = "1"
T = TypeVar("T")
IMAGE_SIZES = (256, 512, 1024)  # the encoder takes multiples of 16; each size is compiled and kept
RETRY_AFTER_S = 30  # told to clients over the active-job limit: about the time a short job takes


class Backend(Protocol):
    """Where jobs run: the API creates a job in Redis, then asks the backend to run it."""

    def submit(self, job_id: str) -> None:
        """Start running the (queued) job, or resume it; returns at once."""

    def running(self, job_id: str) -> bool:
        """Whether something is running the job now."""


ADMISSIONS = ("none", "capacity")  # serve --admission


@dataclass(frozen=True)
class ApiSettings:
    """How the API behaves.

    Attributes:
        token: the bearer token every request must carry.
        policy: the sources it accepts.
        prefix: Redis key prefix.
        image_size: encoder size of jobs that do not choose one.
        weights: the weights of the service's model (stored in each job's spec).
        max_jobs: most jobs and streams queued or running at once (more: 429).
        max_tracks: most tracks of one job, those added while it runs included (more: 409).
        image_sizes: the encoder sizes a job may choose (others: 422); ``image_size`` is one.
        max_body_kb: largest request body in KiB (more: 413).
        keep_s: seconds a finished job's keys stay in Redis unless it asks for less (None: for ever).
        max_keep_s: the longest ``keep_s`` a job may ask for (None: no bound).
        max_maxlen: the most masks entries a job or stream may ask to keep.
        max_frame_pixels: the most pixels of a frame (``--max-frame-pixels``; None: no limit),
            and so of a mask prompt, refused larger before it is read.
        admission: ``none``, or ``capacity``: a live stream that would push a stream's fair
            share of the encoders below ``min_stream_fps`` is refused with 429
            (:mod:`pipeline.jobs.admission`).
        min_stream_fps: the floor of a stream's fair share under ``capacity`` admission.
    """

    token: str
    policy: SourcePolicy = field(default_factory=SourcePolicy)
    prefix: str = "samstream:"
    image_size: int = 1024
    weights: str = "official"
    max_jobs: int = 256
    max_tracks: int = MAX_TRACKS
    image_sizes: tuple[int, ...] = IMAGE_SIZES
    max_body_kb: int = 256
    keep_s: int | None = DEFAULT_KEEP_S
    max_keep_s: int | None = DEFAULT_KEEP_S
    max_maxlen: int = MAX_MAXLEN
    max_frame_pixels: int | None = DEFAULT_MAX_FRAME_PIXELS
    admission: str = "none"
    min_stream_fps: float = 1.0

    def __post_init__(self) -> None:
        if self.admission not in ADMISSIONS:
            raise InvalidInputError(
                f"--admission must be one of {', '.join(ADMISSIONS)}, got {self.admission!r}"
            )
        if not 0 < self.min_stream_fps <= MAX_FPS:
            raise InvalidInputError(
                f"--min-stream-fps must be > 0 and <= {MAX_FPS:g}, got {self.min_stream_fps}"
            )
        if not self.token:
            raise InvalidInputError("the API needs a token (--token or SAMSTREAM_API_TOKEN)")
        if self.max_jobs < 1:
            raise InvalidInputError(f"--max-jobs must be >= 1, got {self.max_jobs}")
        if not 1 <= self.max_tracks <= TRACKS_CEILING:
            raise InvalidInputError(f"--max-tracks must be 1 to {TRACKS_CEILING}, got {self.max_tracks}")
        if self.max_body_kb < 1:
            raise InvalidInputError(f"--max-body-kb must be >= 1, got {self.max_body_kb}")
        if not self.image_sizes or not all(is_image_size(n) for n in self.image_sizes):
            raise InvalidInputError(
                f"--image-sizes must list sizes, each {IMAGE_SIZE_RULE}, got {list(self.image_sizes)}"
            )
        if self.image_size not in self.image_sizes:
            raise InvalidInputError(
                f"the service's --image-size {self.image_size} must be one of --image-sizes "
                f"{','.join(map(str, self.image_sizes))}"
            )
        check_keep(self.keep_s, "--keep")
        check_keep(self.max_keep_s, "--max-keep")
        if self.max_keep_s is not None and (self.keep_s is None or self.keep_s > self.max_keep_s):
            raise InvalidInputError(
                f"--keep ({format_keep(self.keep_s)}) is longer than --max-keep ({format_keep(self.max_keep_s)})"
            )
        if isinstance(self.max_maxlen, bool) or not isinstance(self.max_maxlen, int) or self.max_maxlen < 1:
            raise InvalidInputError(f"--max-maxlen must be an int >= 1, got {self.max_maxlen!r}")
        pixels = self.max_frame_pixels
        if pixels is not None and (isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 1):
            raise InvalidInputError(f"--max-frame-pixels must be None or an int >= 1, got {pixels!r}")

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
    """An HTTP error answer: its status, ``detail`` (a message, or FastAPI's 422 list), headers."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail
        self.headers = headers


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing or wrong bearer token"},
    413: {"model": Problem, "description": "request body over the service's limit (--max-body-kb)"},
    422: {"model": Problem, "description": "invalid request (detail names the field)"},
    500: {"model": Problem, "description": "internal error: detail has an id the service's log holds"},
    503: {"model": Problem, "description": "Redis or the cluster is unreachable (detail has an error id)"},
}
_TOO_MANY: dict[int | str, dict[str, Any]] = {
    429: {
        "model": Problem,
        "description": "the service runs as many jobs and streams as it takes (--max-jobs)",
        "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    }
}
_TRACK_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {
        "model": Problem,
        "description": "the job is finished, or has as many tracks as it may (--max-tracks)",
    }
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
    # Added innermost first: the token is checked before a body is read or a route runs, and every
    # answer (the middlewares' own too) gets the security headers.
    app.add_middleware(InternalErrors)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_kb * 1024)
    sessions = Sessions(settings.token, client, keys)
    app.add_middleware(BearerAuth, token=settings.token, sessions=sessions, login_page=page("login.html"))
    app.add_middleware(SecurityHeaders)
    slots = TrackSlots(client, keys, settings.max_tracks)
    creating = CreationLock(client, keys)  # one count-then-create at a time, over all API processes
    commanding = threading.Lock()  # a track's slot and its command in the same order
    bearer = HTTPBearer(auto_error=False, description="the service's API token")
    secured = [Security(bearer)]

    @app.exception_handler(HttpError)
    async def _api_error(request: Request, exc: HttpError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RedisUnavailableError)
    @app.exception_handler(redis.RedisError)
    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        error_id = logged(f"{request.method} {request.url.path}: Redis failed", exc)
        detail = unavailable("service unavailable: its Redis does not answer", error_id)
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "5"})

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

    def check_limits(body: JobBody) -> None:
        """The service's own limits on a job's spec (the models hold only the absolute ones)."""
        if isinstance(body.image_size, int) and body.image_size not in settings.image_sizes:
            allowed = ", ".join(map(str, settings.image_sizes))
            msg = f"image_size must be one of {allowed} (this service's sizes), got {body.image_size}"
            raise HttpError(422, [invalid(["image_size"], msg)])
        if len(body.tracks) > settings.max_tracks:
            msg = f"a job has at most {settings.max_tracks} tracks on this service, got {len(body.tracks)}"
            raise HttpError(422, [invalid(["tracks"], msg)])

    def auto_of(body: JobBody, live: bool) -> AutoSize | None:
        if body.image_size != "auto":
            if body.target_fps is not None:
                raise HttpError(422, [invalid(["target_fps"], 'target_fps goes with image_size "auto"')])
            return None
        if not live:
            msg = 'image_size "auto" is for streams: a job encodes every frame at one size'
            raise HttpError(422, [invalid(["image_size"], msg)])
        return AutoSize(tuple(sorted(settings.image_sizes)), body.target_fps)

    def spec_of(body: JobBody, live: bool) -> JobSpec:
        check_limits(body)
        auto = auto_of(body, live)
        try:
            source = settings.policy.check(body.source)
            _check_kind(source, live)
        except InvalidInputError as exc:
            raise HttpError(422, [invalid(["source"], exc)]) from None
        tracks = []
        for i, t in enumerate(body.tracks):
            try:
                tracks.append(t.to_track(settings.max_frame_pixels))
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
                image_size=body.image_size if isinstance(body.image_size, int) else settings.image_size,
                weights=settings.weights,
                live=live,
                maxlen=maxlen,
                give_up_s=body.give_up_s,
                tracking=dict(body.tracking),
                weight=body.weight,
                max_fps=body.max_fps,
                auto_size=auto,
            )
        except InvalidInputError as exc:
            text = str(exc)
            where = ["tracking"] if "tracking" in text else ["tracks"] if "track" in text else []
            raise HttpError(422, [invalid(where, exc)]) from None

    def admit_stream(spec: JobSpec) -> None:
        """429 if this stream would push a stream's fair share below the floor (``capacity``)."""
        measured = store.capacity()
        capacity = None if measured is None else EncoderCapacity(*measured)
        running = []
        for info in store.list():
            if info.spec.get("live") and info.status in (JobStatus.QUEUED, JobStatus.RUNNING):
                other = JobSpec.from_dict(info.spec)
                caps = [c for c in (other.max_fps, info.requested_fps) if c]
                running.append(Demand(other.weight, _least_size(other), min(caps) if caps else None))
        new = Demand(spec.weight, _least_size(spec), spec.max_fps)
        refusal = admit(new, running, capacity, settings.min_stream_fps)
        if refusal is not None:
            raise HttpError(429, refusal.message(), {"Retry-After": str(RETRY_AFTER_S)})

    def add_routes(kind: str, live: bool) -> None:
        one = "stream" if live else "job"
        path_id = Path(pattern=JOB_ID, description=f"the {one}'s id")

        @app.post(
            f"/{kind}",
            status_code=201,
            response_model=JobView,
            operation_id=f"create_{one}",
            summary=f"Create a {one}",
            responses={**_CONFLICT, **_TOO_MANY},
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
            with creating.held():
                active = store.count_active()
                if active >= settings.max_jobs:
                    raise HttpError(
                        429,
                        f"this service runs {active} jobs and streams (queued or running), the most it "
                        f"takes (--max-jobs {settings.max_jobs}); try again when one has ended",
                        {"Retry-After": str(RETRY_AFTER_S)},
                    )
                if live and settings.admission == "capacity":
                    admit_stream(spec)
                try:
                    store.create(job_id, spec.to_dict(), keep_s=keep_s)
                except JobError:
                    raise HttpError(409, f"a job {job_id!r} exists already") from None
            try:
                backend.submit(job_id)
            except Exception as exc:
                error_id = logged(f"{one} {job_id} could not be started", exc)
                reason = "could not be started: the cluster did not take it"
                store.set_status(job_id, JobStatus.FAILED, f"{reason} (error id {error_id})")
                raise HttpError(503, f"{one} {job_id} {unavailable(reason, error_id)}") from None
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
            if info.status is JobStatus.QUEUED:
                # Only while still queued: a driver that took it up since reads the stop command.
                store.set_status(job_id, JobStatus.CANCELLED, "cancelled on request", only_from=[info.status])
            elif not backend.running(job_id):
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
            responses={**_NOT_FOUND, **_TRACK_CONFLICT},
            dependencies=secured,
            tags=[kind],
        )
        def add_track(body: TrackCommandBody, job_id: str = path_id) -> Accepted:
            info = job(job_id, live)
            if info.status.terminal:
                raise HttpError(409, f"{one} {job_id} is {info.status.value}: its tracks are final")
            try:
                prompt = body.to_prompt(settings.max_frame_pixels)
            except InvalidInputError as exc:
                raise HttpError(422, [invalid([], exc)]) from None
            with commanding:
                if body.action == "add":
                    fits, count = slots.take(job_id, body.id, spec_track_ids(info.spec))
                    if not fits:
                        raise HttpError(
                            409,
                            f"{one} {job_id} has {count} tracks, the most this service allows "
                            f"(--max-tracks {settings.max_tracks}): remove one first",
                        )
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
            with commanding:  # the command first: a slot is never free while its track may be there
                send(client, keys, job_id, Command("remove", track_id))
                slots.free(job_id, track_id, spec_track_ids(info.spec))
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
            source = str(job(job_id, live).spec.get("source", ""))
            found = _page(read_events(client, keys, job_id, after, count), count)
            page = [EventView.of(e, source) for e in found]
            return EventPage(events=page, next=page[-1].id if page else after)

    add_routes("jobs", live=False)
    add_routes("streams", live=True)
    app.include_router(viewer_router(client, keys, sessions))
    mount_static(app)

    @app.get("/healthz", response_model=Health, operation_id="health", dependencies=secured, tags=["service"])
    def health() -> Health:
        try:
            client.ping()
        except redis.RedisError as exc:
            raise HttpError(503, unavailable("Redis does not answer", logged("health check", exc))) from None
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
    from pipeline.sources.opening import kind_error

    error = kind_error(source, live)
    if error is not None:
        raise InvalidInputError(error)


def _least_size(spec: JobSpec) -> int:
    """The size a stream's share is counted at for admission: an ``auto`` stream's smallest (it
    moves down to make room)."""
    return spec.auto_size.sizes[0] if spec.auto_size is not None else spec.image_size
