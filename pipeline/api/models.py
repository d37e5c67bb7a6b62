"""The REST API's request and response bodies (pydantic models: they make the OpenAPI spec).

Requests are checked twice: by these models (types, ranges: a 422 names the field), then by the
library's own constructors (:class:`~pipeline.spec.JobSpec`, :class:`~pipeline.prompts.Prompt`),
whose :class:`~pipeline.errors.InvalidInputError` is turned into a 422 naming the same field.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.config import IMAGE_SIZE_RULE, is_image_size
from pipeline.errors import InvalidInputError
from pipeline.ledger import JobInfo
from pipeline.prompts import Prompt, TrackSpec
from pipeline.sources.opening import redact, redact_text
from pipeline.spec import MAX_FPS, MAX_WEIGHT
from pipeline.streams import Event
from pipeline.streams.keys import JOB_ID

Coordinate = float
MAX_TRACKS = 64  # the default of a service's --max-tracks
TRACKS_CEILING = 1024  # what any service takes at most (a job's checkpoint grows with its tracks)


def _finite(values: list[float]) -> list[float]:
    if not all(math.isfinite(v) for v in values):
        raise ValueError("coordinates must be finite numbers")
    return values


class MaskBody(BaseModel):
    """A binary mask of the object as a COCO RLE, of the source frame's size (pycocotools' format)."""

    model_config = ConfigDict(extra="forbid")

    size: list[int] = Field(min_length=2, max_length=2, description="[H, W]", examples=[[240, 320]])
    counts: str | list[int] = Field(
        description="compressed counts string (as pycocotools writes it), or the list of run "
        "lengths (column-major, starting with background)",
        examples=["heT11]74M2O0O20N101N3LjVT1"],
    )


class PromptBody(BaseModel):
    """Points (with labels: 1 object, 0 background), a box and/or a mask, in the source frame's pixels.

    A mask is decoded as SAM's mask input, with the box around it unless a box is given.
    """

    model_config = ConfigDict(extra="forbid")

    points: list[list[Coordinate]] = Field(
        default_factory=list, max_length=64, description="[[x, y], ...]", examples=[[[320, 240]]]
    )
    labels: list[Literal[0, 1]] | None = Field(
        default=None, max_length=64, description="one per point; default all 1"
    )
    box: list[Coordinate] | None = Field(
        default=None,
        min_length=4,
        max_length=4,
        description="[x0, y0, x1, y1]",
        examples=[[10, 20, 200, 180]],
    )

    mask: MaskBody | None = Field(default=None, description="the object's mask (COCO RLE)")

    @field_validator("points")
    @classmethod
    def _points(cls, points: list[list[float]]) -> list[list[float]]:
        for p in points:
            if len(p) != 2:
                raise ValueError(f"a point is [x, y], got {p}")
            _finite(p)
        return points

    @field_validator("box")
    @classmethod
    def _box(cls, box: list[float] | None) -> list[float] | None:
        return None if box is None else _finite(box)

    def to_prompt(self, max_mask_pixels: int | None = None) -> Prompt:
        """The prompt; a mask over ``max_mask_pixels`` (the service's ``--max-frame-pixels``;
        None: no limit but the library's own) is refused before its counts are read.

        Raises:
            InvalidInputError: a bad prompt.
        """
        data: dict[str, Any] = {"points": self.points}
        if self.labels is not None:
            data["labels"] = self.labels
        if self.box is not None:
            data["box"] = self.box
        if self.mask is not None:
            data["mask"] = {"size": self.mask.size, "counts": self.mask.counts}
        if max_mask_pixels is None:
            return Prompt.from_dict(data)
        return Prompt.from_dict(data, max_mask_pixels)


class TrackBody(PromptBody):
    """One object to follow: an id and its prompt (applied at ``start_frame``)."""

    id: int = Field(ge=1, le=2**31 - 1)
    start_frame: int = Field(default=0, ge=0, le=2**31 - 1)

    def to_track(self, max_mask_pixels: int | None = None) -> TrackSpec:
        return TrackSpec(self.id, self.to_prompt(max_mask_pixels), self.start_frame)


class JobBody(BaseModel):
    """A job (a video file or URL: every frame) or a live stream (a feed: the newest frames)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=4096, examples=["https://example.com/clip.mp4"])
    tracks: list[TrackBody] = Field(
        default_factory=list,
        max_length=TRACKS_CEILING,
        description="at most the service's --max-tracks (64), with discover's max_tracks; none only "
        "with discover",
    )
    job_id: str | None = Field(default=None, pattern=JOB_ID, description="default: a new id is made")
    stride: int = Field(default=1, ge=1, le=10_000, description="process every n-th frame (jobs)")
    image_size: int | Literal["auto"] | None = Field(
        default=None,
        description="encoder input size, one of the service's --image-sizes (256, 512, 1024); "
        "default the service's. Streams: \"auto\" moves over the service's sizes to keep "
        "target_fps when the encoders cannot (starting at the service's size)",
    )
    target_fps: float | None = Field(
        default=None,
        gt=0,
        le=MAX_FPS,
        description="streams with image_size auto: the rate to keep; default its feed's rate",
    )
    maxlen: int | None = Field(
        default=None,
        ge=1,
        le=10**9,
        description="keep about this many masks entries; default: streams 10000, jobs all "
        "(at most the service's maximum, 1000000 unless it says otherwise)",
    )
    give_up_s: float = Field(
        default=30.0, gt=0, le=86_400, description="live: fail after this long without frames"
    )
    tracking: dict[str, bool | int | float] = Field(
        default_factory=dict,
        max_length=32,
        description="tracking settings: min_score, lost_after, box_margin, search_s, "
        "search_interval_s, … (see docs/tracking.md)",
        examples=[{"min_score": 0.5}],
    )
    keep_s: int | None = Field(
        default=None,
        ge=1,
        le=100 * 365 * 86_400,
        description="seconds its data (masks, events, record) stays once it has ended; default and "
        "maximum: the service's (7 days unless it says otherwise)",
    )
    weight: float = Field(
        default=1.0,
        gt=0,
        le=MAX_WEIGHT,
        description="live: its share of the encoders beside other streams' when they cannot take "
        "every frame (1: an even share)",
    )
    max_fps: float | None = Field(
        default=None, gt=0, le=MAX_FPS, description="live: its most frames a second; default: its share"
    )
    discover: bool | dict[str, float | int | str | list[float] | list[str] | None] | None = Field(
        default=None,
        description="find objects without a prompt and follow each (segment-everything on a grid, or "
        "a detector of the service's --detector-dir): true for the defaults, or settings: every_s, grid, "
        "min_score, min_stability, nms_iou, min_area, max_area, roi [x0, y0, x1, y1], max_tracks, "
        "covered, forget_s, detector (NAME.onnx), classes [names], detector_score (see docs/tracking.md)",
        examples=[{"every_s": 1.0, "grid": 8, "max_tracks": 8}],
    )

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        """One message (not one per member of the union) for a size that is neither."""
        if value is None or value == "auto":
            return value
        if not is_image_size(value):
            raise ValueError(f'image_size must be "auto" or {IMAGE_SIZE_RULE}, got {value!r}')
        return value


class DiscoveryBody(BaseModel):
    """Discovery on or off (the tracks it found go on either way)."""

    model_config = ConfigDict(extra="forbid")

    on: bool = Field(description="false pauses discovery; true resumes it")


class TrackCommandBody(PromptBody):
    """A track to add (a new id) or re-prompt (an existing id)."""

    id: int = Field(ge=1, le=2**31 - 1)
    action: Literal["add", "reprompt"] = "add"


class StreamRate(BaseModel):
    """A live stream's pace: measured by the service about once a second."""

    requested_fps: float | None = Field(description="its feed's rate (up to its max_fps); null until known")
    delivered_fps: float | None = Field(description="frames published a second; null until measured")
    capacity_bound: bool = Field(description="the encoders cannot take every frame it asks for")
    dropped: int = Field(description="frames skipped to keep its latency bounded")
    image_size: int | None = Field(
        default=None, description="the size its frames are encoded at now (image_size auto: it moves)"
    )


class JobView(BaseModel):
    """A job or live stream as stored: its spec, status and progress.

    Its ``source`` and ``error`` are redacted (credentials, query, fragment hidden): whoever may
    read the job is not told the secrets its submitter gave to reach the video.
    """

    id: str
    kind: Literal["job", "stream"]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    source: str
    tracks: list[dict[str, Any]]
    frames_done: int
    frames_total: int | None
    last_frame: int | None
    error: str | None
    created: float
    started: float | None
    finished: float | None
    masks_stream: str
    events_stream: str
    keep_s: int | None = Field(
        default=None, description="seconds its data stays once it has ended; null: kept"
    )
    expires: float | None = Field(
        default=None, description="when its data goes (epoch s); null while it runs or if kept"
    )
    rate: StreamRate | None = Field(default=None, description="streams: the rate asked for and delivered")
    discover: dict[str, Any] | None = Field(
        default=None, description="its discovery settings; null: it follows only the tracks given"
    )

    @classmethod
    def of(cls, info: JobInfo, masks: str, events: str) -> JobView:
        source = str(info.spec.get("source", ""))
        return cls(
            id=info.job_id,
            kind="stream" if info.spec.get("live") else "job",
            status=info.status.value,
            source=redact(source),
            tracks=list(info.spec.get("tracks", [])),
            discover=_shown_discovery(info.spec.get("discover")),
            frames_done=info.frames_done,
            frames_total=info.frames_total,
            last_frame=info.last_frame,
            error=None if info.error is None else redact_text(info.error, source),
            created=info.created,
            started=info.started,
            finished=info.finished,
            masks_stream=masks,
            events_stream=events,
            keep_s=info.keep_s,
            expires=info.expires,
            rate=StreamRate(
                requested_fps=info.requested_fps,
                delivered_fps=info.delivered_fps,
                capacity_bound=info.capacity_bound,
                dropped=info.dropped,
                image_size=info.image_size if info.image_size is not None else info.spec.get("image_size"),
            )
            if info.spec.get("live")
            else None,
        )


class JobList(BaseModel):
    items: list[JobView]


class Accepted(BaseModel):
    """A command was queued for the job; it applies from the job's next frame."""

    id: str
    command: str
    track: int | None = None


class MaskEntryView(BaseModel):
    id: str
    frame: int
    pts: float | None
    capture_time: float | None
    publish_time: float
    width: int
    height: int
    tracks: list[dict[str, Any]]


class MaskPage(BaseModel):
    """Mask entries after ``after``; ask again with ``after=next`` for the following ones."""

    entries: list[MaskEntryView]
    next: str | None
    status: str


class EventView(BaseModel):
    """One event; its ``detail`` and the text in ``data`` redacted as :class:`JobView` is."""

    id: str
    type: str
    time: float
    frame: int | None
    track: int | None
    detail: str | None
    data: dict[str, Any]

    @classmethod
    def of(cls, event: Event, source: str) -> EventView:
        """The view of ``event`` of a job reading ``source``."""
        return cls(
            id=event.entry_id,
            type=event.type,
            time=event.time,
            frame=event.frame,
            track=event.track,
            detail=None if event.detail is None else redact_text(event.detail, source),
            data=_redacted(json.loads(json.dumps(event.data, default=str)), source),
        )


class EventPage(BaseModel):
    events: list[EventView]
    next: str | None


class Health(BaseModel):
    status: Literal["ok"]
    redis: bool


class Problem(BaseModel):
    """An error: ``detail`` says what is wrong (for 422: a list of ``{loc, msg}``)."""

    detail: Any


def _redacted(value: Any, source: str) -> Any:
    """A JSON value with every string in it (keys too) passed through :func:`redact_text`."""
    if isinstance(value, str):
        return redact_text(value, source)
    if isinstance(value, dict):
        return {_redacted(k, source): _redacted(v, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, source) for v in value]
    return value


def invalid(where: Sequence[str | int], exc: InvalidInputError | str) -> dict[str, Any]:
    """One item of a 422 ``detail`` list, in FastAPI's own shape."""
    return {"loc": ["body", *where], "msg": str(exc), "type": "value_error"}


def _shown_discovery(discover: Any) -> Any:
    """A job's discovery as the API shows it: its detector by file name (the folder is the service's)."""
    if isinstance(discover, dict) and isinstance(discover.get("detector"), str):
        return {**discover, "detector": os.path.basename(discover["detector"])}
    return discover
