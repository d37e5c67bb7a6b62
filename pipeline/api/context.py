"""What every route of the API shares: its settings, Redis, the job store and the backend, and
the checks a request's job goes through (found, of the right kind, its spec within the service's
limits, a stream's admission)."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import redis
from fastapi import Query, Security
from fastapi.security import HTTPBearer

from pipeline.api.models import JobBody, JobView, Problem, invalid
from pipeline.api.settings import ApiSettings
from pipeline.errors import InvalidInputError, JobError
from pipeline.jobs.admission import Capacity, Demand, admit
from pipeline.ledger import JobInfo, JobStatus, JobStore
from pipeline.ledger.slots import CreationLock, TrackSlots
from pipeline.model.detector import open_detector
from pipeline.spec import AutoSize, JobSpec, discovered_at_most
from pipeline.streams import Keys
from pipeline.tracking.discovery import DiscoveryConfig

T = TypeVar("T")
RETRY_AFTER_S = 30  # told to clients over the active-job limit: about the time a short job takes


class Backend(Protocol):
    """Where jobs run: the API creates a job in Redis, then asks the backend to run it."""

    def submit(self, job_id: str) -> None:
        """Start running the (queued) job, or resume it; returns at once."""

    def running(self, job_id: str) -> bool:
        """Whether something is running the job now."""


class HttpError(Exception):
    """An HTTP error answer: its status, ``detail`` (a message, or FastAPI's 422 list), headers."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail
        self.headers = headers


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing or wrong bearer token"},
    413: {"model": Problem, "description": "request body over the service's limit (--max-body-kb)"},
    422: {"model": Problem, "description": "invalid request (detail names the field)"},
    500: {"model": Problem, "description": "internal error: detail has an id the service's log holds"},
    503: {"model": Problem, "description": "Redis or the cluster is unreachable (detail has an error id)"},
}
TOO_MANY: dict[int | str, dict[str, Any]] = {
    429: {
        "model": Problem,
        "description": "the service runs as many jobs and streams as it takes (--max-jobs)",
        "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    }
}
TRACK_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {
        "model": Problem,
        "description": "the job is finished, or has as many tracks as it may (--max-tracks)",
    }
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "no such job"}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": Problem, "description": "state forbids it"}}


AFTER = Query(default=None, pattern=r"^\d{1,19}-\d{1,19}$", description="the last entry id seen")
COUNT = Query(default=100, ge=1, le=1000, description="most entries to return")


@dataclass(frozen=True)
class ApiContext:
    """The API's shared parts, made once by :func:`~pipeline.api.app.create_app` and handed to each
    router.

    Attributes:
        settings: the service's settings.
        client: its Redis.
        backend: where jobs run.
        keys: the key names.
        store: the job hashes.
        slots: the track slots (``--max-tracks``, atomic in Redis).
        creating: one admit-then-create of a live stream at a time, over all API processes
            (``--admission capacity``).
        commanding: a track's slot and its command in the same order.
        secured: the dependencies that put the bearer token in the OpenAPI spec.
    """

    settings: ApiSettings
    client: redis.Redis
    backend: Backend
    keys: Keys
    store: JobStore
    slots: TrackSlots
    creating: CreationLock
    commanding: threading.Lock
    secured: list[Any]

    @classmethod
    def of(cls, settings: ApiSettings, client: redis.Redis, backend: Backend) -> ApiContext:
        keys = Keys(settings.prefix)
        bearer = HTTPBearer(auto_error=False, description="the service's API token")
        return cls(
            settings=settings,
            client=client,
            backend=backend,
            keys=keys,
            store=JobStore(client, keys),
            slots=TrackSlots(client, keys, settings.max_tracks),
            creating=CreationLock(client, keys),
            commanding=threading.Lock(),
            secured=[Security(bearer)],
        )

    def job(self, job_id: str, live: bool) -> JobInfo:
        """The job of the request: 404 when there is none, or it is of the other kind."""
        try:
            info = self.store.get(job_id)
        except JobError:
            raise HttpError(404, f"no {'stream' if live else 'job'} {job_id!r}") from None
        if bool(info.spec.get("live")) != live:
            where = "/streams" if info.spec.get("live") else "/jobs"
            raise HttpError(404, f"no {'stream' if live else 'job'} {job_id!r} (it is under {where})")
        return info

    def view(self, info: JobInfo) -> JobView:
        return JobView.of(info, self.keys.masks(info.job_id), self.keys.events(info.job_id))

    def _check_limits(self, body: JobBody) -> None:
        """The service's own limits on a job's spec (the models hold only the absolute ones)."""
        if isinstance(body.image_size, int) and body.image_size not in self.settings.image_sizes:
            allowed = ", ".join(map(str, self.settings.image_sizes))
            msg = f"image_size must be one of {allowed} (this service's sizes), got {body.image_size}"
            raise HttpError(422, [invalid(["image_size"], msg)])
        if len(body.tracks) > self.settings.max_tracks:
            msg = (
                f"a job has at most {self.settings.max_tracks} tracks on this service, got {len(body.tracks)}"
            )
            raise HttpError(422, [invalid(["tracks"], msg)])

    def _discovery_of(self, body: JobBody) -> DiscoveryConfig | None:
        """The job's discovery, its discovered tracks within ``--max-tracks`` beside its own."""
        if body.discover is None or body.discover is False:
            return None
        try:
            discovery = DiscoveryConfig.from_dict(body.discover)
        except InvalidInputError as exc:
            raise HttpError(422, [invalid(["discover"], exc)]) from None
        if discovery.detector is not None:
            discovery = replace(discovery, detector=self._detector(discovery))
        if len(body.tracks) + discovery.max_tracks > self.settings.max_tracks:
            msg = (
                f"a job has at most {self.settings.max_tracks} tracks on this service: {len(body.tracks)} "
                f"given and up to {discovery.max_tracks} discovered (discover max_tracks) is more"
            )
            raise HttpError(422, [invalid(["discover", "max_tracks"], msg)])
        return discovery

    def _detector(self, discovery: DiscoveryConfig) -> str:
        """The path of the detector a job names (a file of ``--detector-dir``), checked.

        Raises:
            HttpError: 422 where the service offers no detectors, the name is not a file name of
                its folder, or the file is not a detector (its message names the file, not the folder).
        """
        name = str(discovery.detector)
        folder = self.settings.detector_dir
        if folder is None:
            msg = "this service offers no detectors (serve --detector-dir); use the grid (no detector)"
            raise HttpError(422, [invalid(["discover", "detector"], msg)])
        if name != os.path.basename(name) or name.startswith(".") or not name.endswith(".onnx"):
            msg = (
                f"detector must be the file name of one of this service's detectors (NAME.onnx), got {name!r}"
            )
            raise HttpError(422, [invalid(["discover", "detector"], msg)])
        path = os.path.join(folder, name)
        try:
            open_detector(path, discovery.detector_score, discovery.classes)
        except InvalidInputError as exc:
            raise HttpError(422, [invalid(["discover", "detector"], str(exc).replace(path, name))]) from None
        return path

    def _auto_of(self, body: JobBody, live: bool) -> AutoSize | None:
        if body.image_size != "auto":
            if body.target_fps is not None:
                raise HttpError(422, [invalid(["target_fps"], 'target_fps goes with image_size "auto"')])
            return None
        if not live:
            msg = 'image_size "auto" is for streams: a job encodes every frame at one size'
            raise HttpError(422, [invalid(["image_size"], msg)])
        return AutoSize(tuple(sorted(self.settings.image_sizes)), body.target_fps)

    def spec_of(self, body: JobBody, live: bool) -> JobSpec:
        """The spec of a job asked for, within the service's limits: 422 naming the field otherwise."""
        self._check_limits(body)
        auto = self._auto_of(body, live)
        try:
            source = self.settings.policy.check(body.source)
            _check_kind(source, live)
        except InvalidInputError as exc:
            raise HttpError(422, [invalid(["source"], exc)]) from None
        tracks = []
        for i, t in enumerate(body.tracks):
            try:
                tracks.append(t.to_track(self.settings.max_frame_pixels))
            except InvalidInputError as exc:
                raise HttpError(422, [invalid(["tracks", i], exc)]) from None
        try:
            maxlen = self.settings.maxlen_of(body.maxlen, live)
        except InvalidInputError as exc:
            raise HttpError(422, [invalid(["maxlen"], exc)]) from None
        try:
            return JobSpec(
                source=source,
                tracks=tuple(tracks),
                stride=body.stride,
                image_size=body.image_size if isinstance(body.image_size, int) else self.settings.image_size,
                weights=self.settings.weights,
                live=live,
                maxlen=maxlen,
                give_up_s=body.give_up_s,
                tracking=dict(body.tracking),
                weight=body.weight,
                max_fps=body.max_fps,
                auto_size=auto,
                discover=self._discovery_of(body),
            )
        except InvalidInputError as exc:
            text = str(exc)
            where = ["tracking"] if "tracking" in text else ["tracks"] if "track" in text else []
            raise HttpError(422, [invalid(where, exc)]) from None

    def admit_stream(self, spec: JobSpec) -> None:
        """429 if this stream would push a stream's fair share below the floor (``capacity``)."""
        measured = self.store.capacity()
        capacity = None if measured is None else Capacity(*measured)
        running = []
        for info in self.store.list():
            if info.spec.get("live") and info.status in (JobStatus.QUEUED, JobStatus.RUNNING):
                other = JobSpec.from_dict(info.spec)
                caps = [c for c in (other.max_fps, info.requested_fps) if c]
                cap = min(caps) if caps else None
                running.append(Demand(other.weight, _least_size(other), cap, _tracks(other)))
        new = Demand(spec.weight, _least_size(spec), spec.max_fps, _tracks(spec))
        refusal = admit(new, running, capacity, self.settings.min_stream_fps)
        if refusal is not None:
            raise HttpError(429, refusal.message(), {"Retry-After": str(RETRY_AFTER_S)})


def page_of(entries: Iterator[T], count: int) -> list[T]:
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


def _tracks(spec: JobSpec) -> int:
    """The tracks a stream's frames are decoded for, as its tracker host is placed: its own and
    those its discovery may start (at least one: a frame costs its host something)."""
    return max(1, len(spec.tracks) + discovered_at_most(spec.discover))
