"""The job spec: everything that defines a job's output, stored with the job in Redis."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from pipeline.config import IMAGE_SIZE_RULE, is_image_size
from pipeline.errors import InvalidInputError
from pipeline.prompts import TrackSpec, check_unique_ids
from pipeline.tracking import TrackingConfig
from pipeline.tracking.discovery import DiscoveryConfig

MAX_WEIGHT = 1000.0  # a live feed's largest share weight
MAX_FPS = 1000.0  # a live feed's largest max_fps


@dataclass(frozen=True)
class AutoSize:
    """A live stream's ``image_size: auto`` (see :mod:`pipeline.jobs.sizing`).

    Attributes:
        sizes: the sizes it may be encoded at, ascending (the job's ``image_size`` is where it starts).
        target_fps: the rate it wants (None: its feed's rate, up to its ``max_fps``).
    """

    sizes: tuple[int, ...]
    target_fps: float | None = None

    def __post_init__(self) -> None:
        if (
            not self.sizes
            or list(self.sizes) != sorted(set(self.sizes))
            or not all(map(is_image_size, self.sizes))
        ):
            raise InvalidInputError(
                f"auto sizes must be distinct, ascending, each {IMAGE_SIZE_RULE}, got {list(self.sizes)}"
            )
        if self.target_fps is not None and not (0 < self.target_fps <= MAX_FPS):
            raise InvalidInputError(f"target_fps must be > 0 and <= {MAX_FPS:g}, got {self.target_fps}")

    def to_dict(self) -> dict[str, Any]:
        return {"sizes": list(self.sizes), "target_fps": self.target_fps}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AutoSize:
        target = data.get("target_fps")
        return cls(tuple(int(s) for s in data["sizes"]), None if target is None else float(target))


@dataclass(frozen=True)
class JobSpec:
    """A video job.

    Attributes:
        source: a file path or URL.
        tracks: the objects to follow.
        stride: process every n-th frame.
        image_size: encoder input size.
        weights: ``official`` (a checkpoint) or ``random``.
        live: a live feed (drop stale frames) rather than a file (process every frame).
        maxlen: keep about this many masks entries (None: all).
        give_up_s: live feeds: fail after this long without a frame (reconnecting meanwhile).
        tracking: overrides of :class:`~pipeline.tracking.TrackingConfig` fields.
        weight: a live feed's share of the encoders beside other live feeds' when they cannot
            take every frame (1: an even share).
        max_fps: a live feed's most frames a second (None: as many as its share allows).
        auto_size: a live feed's adaptive size (``image_size`` is where it starts), or None: every
            frame at ``image_size``.
        discover: find objects without prompts and follow them (see
            :mod:`pipeline.tracking.discovery`), or None: only the tracks given.
        extra: free data kept with the spec.
    """

    source: str
    tracks: tuple[TrackSpec, ...]
    stride: int = 1
    image_size: int = 1024
    weights: str = "official"
    live: bool = False
    maxlen: int | None = None
    give_up_s: float = 30.0
    tracking: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0
    max_fps: float | None = None
    auto_size: AutoSize | None = None
    discover: DiscoveryConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.source:
            raise InvalidInputError("a job needs a source (a file path or URL)")
        if not self.tracks and self.discover is None:
            raise InvalidInputError(
                "a job needs at least one track, or discovery: give --point, --box, --mask-prompt, "
                "--prompts or --discover"
            )
        check_unique_ids(self.tracks)
        if self.stride < 1:
            raise InvalidInputError(f"stride must be >= 1, got {self.stride}")
        if self.maxlen is not None and self.maxlen < 1:
            raise InvalidInputError(f"maxlen must be >= 1, got {self.maxlen}")
        if not self.give_up_s > 0:
            raise InvalidInputError(f"give-up time must be > 0 seconds, got {self.give_up_s}")
        if not (0 < self.weight <= MAX_WEIGHT):
            raise InvalidInputError(f"weight must be > 0 and <= {MAX_WEIGHT:g}, got {self.weight}")
        if self.max_fps is not None and not (0 < self.max_fps <= MAX_FPS):
            raise InvalidInputError(f"max_fps must be > 0 and <= {MAX_FPS:g}, got {self.max_fps}")
        if self.auto_size is not None:
            if not self.live:
                raise InvalidInputError(
                    "image_size auto is for live streams (a file's every frame is encoded)"
                )
            if self.image_size not in self.auto_size.sizes:
                raise InvalidInputError(
                    f"an auto stream starts at one of its sizes {list(self.auto_size.sizes)}, got {self.image_size}"
                )
        self.tracking_config()  # validates

    def tracking_config(self) -> TrackingConfig:
        known = {f.name for f in fields(TrackingConfig)}
        unknown = sorted(set(self.tracking) - known)
        if unknown:
            raise InvalidInputError(f"unknown tracking settings {unknown}; known: {sorted(known)}")
        return TrackingConfig(**self.tracking)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "tracks": [t.to_dict() for t in self.tracks],
            "stride": self.stride,
            "image_size": self.image_size,
            "weights": self.weights,
            "live": self.live,
            "maxlen": self.maxlen,
            "give_up_s": self.give_up_s,
            **({"tracking": self.tracking} if self.tracking else {}),
            **({"weight": self.weight} if self.weight != 1.0 else {}),
            **({"max_fps": self.max_fps} if self.max_fps is not None else {}),
            **({"auto_size": self.auto_size.to_dict()} if self.auto_size is not None else {}),
            **({"discover": self.discover.to_dict()} if self.discover is not None else {}),
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        try:
            return cls(
                source=str(data["source"]),
                tracks=tuple(TrackSpec.from_dict(t) for t in data["tracks"]),
                stride=int(data.get("stride", 1)),
                image_size=int(data.get("image_size", 1024)),
                weights=str(data.get("weights", "official")),
                live=bool(data.get("live", False)),
                maxlen=None if data.get("maxlen") is None else int(data["maxlen"]),
                give_up_s=float(data.get("give_up_s", 30.0)),
                tracking=dict(data.get("tracking") or {}),
                weight=float(data.get("weight", 1.0)),
                max_fps=None if data.get("max_fps") is None else float(data["max_fps"]),
                auto_size=None if data.get("auto_size") is None else AutoSize.from_dict(data["auto_size"]),
                discover=_discovery(data.get("discover")),
                extra=dict(data.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"invalid job spec: {exc}") from None


def discovered_at_most(discovery: DiscoveryConfig | None) -> int:
    """The tracks a job's discovery may start (0 without one): its tracker host is placed, and
    its frames counted, for them as for its own."""
    return discovery.max_tracks if discovery is not None else 0


def _discovery(value: Any) -> DiscoveryConfig | None:
    """A stored or given ``discover``: absent, null or false: none; true: the defaults; a mapping."""
    if value is None or value is False:
        return None
    return DiscoveryConfig.from_dict(value)
