"""Per-track state and the tracking options, as frozen values.

Coordinates are pixels of the original frame (x right, y down, origin at the top-left corner of
the top-left pixel). A mask box is XYXY with exclusive right/bottom edges, so a one-pixel mask at
column 3, row 5 has the box (3, 5, 4, 6).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from pipeline.errors import InvalidInputError
from pipeline.prompts import Prompt
from pipeline.tracking.arrays import decode_array, encode_array
from pipeline.tracking.memory import Memory
from pipeline.tracking.motion import Motion

MaskBox = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), original-frame pixels
MAX_LOGITS_SIDE = 1024  # S/4 of the largest encoder size (4096)
MAX_MEMORY = 64  # vectors a track may keep
MAX_CANDIDATES = 16  # places a searching track may decode a frame


class TrackStatus(str, Enum):
    """Whether a track's object is seen, and whether it is looked for."""

    ACTIVE = "active"  # the object was found on this frame (its mask is published)
    SEARCHING = "searching"  # not found on this frame: the track coasts on its motion and searches
    LOST = "lost"  # given up (a search limit, or never found): not decoded until re-prompted


def check_int(what: str, value: object, least: int, most: int | None = None) -> None:
    """``value`` is an integer (not a bool) from ``least`` to ``most``, or a one-line error naming
    ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least or (most and value > most):
        bound = f" and <= {most}" if most else ""
        raise InvalidInputError(f"{what} must be an integer >= {least}{bound}, got {value!r}")


@dataclass(frozen=True)
class TrackingConfig:
    """How tracks follow and find their objects.

    Attributes:
        box_margin: fraction of the predicted box's width (height) added on the left and right
            (top and bottom) of the box prompt of the next frame.
        min_margin: at least this many pixels are added on each side.
        min_score: a mask whose predicted IoU is below this is not taken (0: any score is taken).
        min_area: a mask with fewer pixels than this is not taken.
        lost_after: after this many frames in a row without its object a track reports ``lost``
            (it searches from the first such frame on).
        use_mask_input: also prompt with the last good frame's low-resolution logits, moved as
            the object is predicted to have moved.
        add_peak_point: also prompt with a positive point at the most confident pixel of the last
            good frame's logits (moved likewise).
        motion: predict each track's box at the frame's time (Kalman filter) and prompt there; off,
            the last good mask's box is used as it was.
        coast_s: seconds (frame time) a track that lost its object keeps prompting where its motion
            says the object went.
        memory: keep each track's appearance (feature vectors under good masks) and check every
            mask against it: a mask of something else is not taken, and a lost object is searched
            for by it. Off, or with a model that has no usable features, tracks follow by motion
            and prompt alone.
        memory_size: most vectors a track keeps (the first good mask's among them).
        memory_novelty: a good mask's vector joins the bank when its best similarity is below this.
        keep_match: a followed mask whose match with the memory is below this is not the object
            (something in front of it, or another object).
        found_match: the least match that re-finds a searched object ...
        found_margin: ... and a re-found mask's match must be at least the track's typical match
            less this, so that a look-alike is not taken for it.
        search: a track that lost its object looks for it over the whole frame by its memory.
        search_candidates: places decoded per searching track and frame (the best peaks of the
            memory's similarity map, the motion's prediction while coasting among them).
        search_interval_s: at least this many seconds of frame time between two searches of a
            track (0: every frame); fewer decodes under load.
        search_s: a track gives up (``lost``, no more decoding) after this many seconds of frame
            time without its object; 0: never (a file job searches to its end, a live job for ever).
        exclusive: tracks never claim the same pixels (one object, one track); off, each takes its
            mask whatever the others took.
    """

    box_margin: float = 0.1
    min_margin: float = 4.0
    min_score: float = 0.5
    min_area: int = 16
    lost_after: int = 5
    use_mask_input: bool = True
    add_peak_point: bool = False
    motion: bool = True
    coast_s: float = 2.0
    memory: bool = True
    memory_size: int = 8
    memory_novelty: float = 0.95
    keep_match: float = 0.5
    found_match: float = 0.6
    found_margin: float = 0.12
    search: bool = True
    search_candidates: int = 2
    search_interval_s: float = 0.0
    search_s: float = 0.0
    exclusive: bool = True

    def __post_init__(self) -> None:
        floats = ("box_margin", "min_margin", "min_score", "coast_s", "memory_novelty", "keep_match",
                  "found_match", "found_margin", "search_interval_s", "search_s")  # fmt: skip
        for name in floats:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidInputError(f"tracking {name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.box_margin < 0:
            raise InvalidInputError(
                f"tracking box_margin must be >= 0 (a fraction of the box size), got {self.box_margin}"
            )
        if self.min_margin < 0:
            raise InvalidInputError(f"tracking min_margin must be >= 0 pixels, got {self.min_margin}")
        for name in ("min_score", "memory_novelty", "found_margin"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidInputError(f"tracking {name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("keep_match", "found_match"):
            if not -1 <= getattr(self, name) <= 1:
                raise InvalidInputError(
                    f"tracking {name} must be in [-1, 1] (a cosine similarity), got {getattr(self, name)}"
                )
        for name in ("coast_s", "search_interval_s", "search_s"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"tracking {name} must be >= 0 seconds, got {getattr(self, name)}")
        for name, least, most in (
            ("min_area", 0, None),
            ("lost_after", 1, None),
            ("memory_size", 1, MAX_MEMORY),
            ("search_candidates", 0, MAX_CANDIDATES),
        ):
            check_int(f"tracking {name}", getattr(self, name), least, most)
        for name in ("use_mask_input", "add_peak_point", "motion", "memory", "search", "exclusive"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise InvalidInputError(f"tracking {name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class TrackState:
    """One track between two frames.

    Attributes:
        track_id: the track's id (>= 1).
        prompt: the user's prompt, in original-frame pixels.
        status: active, searching or lost.
        start_frame: the first frame the track is decoded on.
        logits: (S/4, S/4) float32 read-only low-resolution logits of the last good frame (in the
            padded, resized encoder-input frame), or None before the first good frame.
        box: the last good mask's box, XYXY exclusive, original-frame pixels, or None.
        poor_frames: frames in a row without the object so far (0 after a good frame).
        last_score: predicted IoU of the last decoded frame (0 before the first).
        needs_prompt: the next decode uses :attr:`prompt` (the track's first frame, a re-prompt,
            or no good frame since either) instead of the previous box and logits.
        motion: the box's motion estimate (None before the first good frame, or without motion).
        memory: the object's appearance bank (None before the first good frame, or without it).
        seen_at: frame time of the last good frame (None before the first).
        searched_at: frame time of the last search (None: none since the object was lost).
    """

    track_id: int
    prompt: Prompt
    status: TrackStatus = TrackStatus.ACTIVE
    start_frame: int = 0
    logits: np.ndarray | None = None
    box: MaskBox | None = None
    poor_frames: int = 0
    last_score: float = 0.0
    needs_prompt: bool = True
    motion: Motion | None = None
    memory: Memory | None = None
    seen_at: float | None = None
    searched_at: float | None = None

    def to_dict(self, binary: bool = False) -> dict[str, Any]:
        """Plain, JSON-serialisable data; arrays travel as base64 of little-endian float32 bytes.

        With ``binary`` the arrays' ``data`` is the raw bytes instead (not JSON: for a store that
        keeps bytes, saving the base64 and JSON work on 256 KB per track). :meth:`from_dict`
        reads both.
        """
        return {
            "id": self.track_id,
            "prompt": self.prompt.to_dict(),
            "status": self.status.value,
            "start_frame": self.start_frame,
            "logits": encode_array(self.logits, binary),
            "box": list(self.box) if self.box is not None else None,
            "poor_frames": self.poor_frames,
            "last_score": self.last_score,
            "needs_prompt": self.needs_prompt,
            "motion": None if self.motion is None else self.motion.to_dict(),
            "memory": None if self.memory is None else self.memory.to_dict(binary),
            "seen_at": self.seen_at,
            "searched_at": self.searched_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrackState:
        """Inverse of :meth:`to_dict` (a version 1 snapshot's track has no motion, memory or
        times: they start again at its next good frame); raises :class:`InvalidInputError` on
        malformed data."""
        try:
            box = data.get("box")
            if box is not None:
                x0, y0, x1, y1 = (int(v) for v in box)
                box = (x0, y0, x1, y1)
            motion, memory = data.get("motion"), data.get("memory")
            seen_at, searched_at = data.get("seen_at"), data.get("searched_at")
            return cls(
                track_id=int(data["id"]),
                prompt=Prompt.from_dict(data["prompt"]),
                status=TrackStatus(data["status"]),
                start_frame=int(data.get("start_frame", 0)),
                logits=decode_array(data.get("logits"), max_shape=(MAX_LOGITS_SIDE, MAX_LOGITS_SIDE)),
                box=box,
                poor_frames=int(data.get("poor_frames", 0)),
                last_score=float(data.get("last_score", 0.0)),
                needs_prompt=bool(data.get("needs_prompt", True)),
                motion=None if motion is None else Motion.from_dict(motion),
                memory=None if memory is None else Memory.from_dict(memory),
                seen_at=None if seen_at is None else float(seen_at),
                searched_at=None if searched_at is None else float(searched_at),
            )
        except InvalidInputError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed track state {data.get('id', '?')!r}: {exc!r}") from None
