"""Per-track state and the tracking thresholds, as frozen values.

Coordinates are pixels of the original frame (x right, y down, origin at the top-left corner of
the top-left pixel). A mask box is XYXY with exclusive right/bottom edges, so a one-pixel mask at
column 3, row 5 has the box (3, 5, 4, 6).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from pipeline.errors import InvalidInputError
from pipeline.prompts import Prompt

MaskBox = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), original-frame pixels


class TrackStatus(str, Enum):
    """Whether a track is being decoded."""

    ACTIVE = "active"  # decoded every frame (possibly with a poor mask, not yet lost)
    LOST = "lost"  # not decoded until re-prompted


@dataclass(frozen=True)
class TrackingConfig:
    """Thresholds and options of prompt propagation.

    Attributes:
        box_margin: fraction of the previous mask box's width (height) added on the left and right
            (top and bottom) of the box prompt of the next frame.
        min_margin: at least this many pixels are added on each side.
        min_score: a frame whose predicted IoU is below this is poor.
        min_area: a frame whose mask has fewer pixels than this is poor.
        lost_after: a track is lost after this many consecutive poor frames.
        use_mask_input: also prompt with the previous frame's low-resolution logits.
        add_peak_point: also prompt with a positive point at the most confident pixel of the
            previous frame's logits.
    """

    box_margin: float = 0.1
    min_margin: float = 4.0
    min_score: float = 0.5
    min_area: int = 16
    lost_after: int = 5
    use_mask_input: bool = True
    add_peak_point: bool = False

    def __post_init__(self) -> None:
        for name in ("box_margin", "min_margin", "min_score"):
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
        if not 0 <= self.min_score <= 1:
            raise InvalidInputError(
                f"tracking min_score must be in [0, 1] (a predicted IoU), got {self.min_score}"
            )
        for name, least in (("min_area", 0), ("lost_after", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InvalidInputError(f"tracking {name} must be an integer >= {least}, got {value!r}")
        for name in ("use_mask_input", "add_peak_point"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise InvalidInputError(f"tracking {name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class TrackState:
    """One track between two frames.

    Attributes:
        track_id: the track's id (>= 1).
        prompt: the user's prompt, in original-frame pixels.
        status: active or lost.
        start_frame: the first frame the track is decoded on.
        logits: (S/4, S/4) float32 read-only low-resolution logits of the last good frame (in the
            padded, resized encoder-input frame), or None before the first good frame.
        box: the last good mask's box, XYXY exclusive, original-frame pixels, or None.
        poor_frames: consecutive poor frames so far (0 after a good frame).
        last_score: predicted IoU of the last decoded frame (0 before the first).
        needs_prompt: the next decode uses :attr:`prompt` (the track's first frame, a re-prompt,
            or no good frame since either) instead of the previous box and logits.
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

    def to_dict(self, binary: bool = False) -> dict[str, Any]:
        """Plain, JSON-serialisable data; logits travel as base64 of little-endian float32 bytes.

        With ``binary`` the logits' ``data`` is the raw bytes instead (not JSON: for a store that
        keeps bytes, saving the base64 and JSON work on 256 KB per track). :meth:`from_dict`
        reads both.
        """
        return {
            "id": self.track_id,
            "prompt": self.prompt.to_dict(),
            "status": self.status.value,
            "start_frame": self.start_frame,
            "logits": _encode_array(self.logits, binary),
            "box": list(self.box) if self.box is not None else None,
            "poor_frames": self.poor_frames,
            "last_score": self.last_score,
            "needs_prompt": self.needs_prompt,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrackState:
        """Inverse of :meth:`to_dict`; raises :class:`InvalidInputError` on malformed data."""
        try:
            box = data.get("box")
            if box is not None:
                x0, y0, x1, y1 = (int(v) for v in box)
                box = (x0, y0, x1, y1)
            return cls(
                track_id=int(data["id"]),
                prompt=Prompt.from_dict(data["prompt"]),
                status=TrackStatus(data["status"]),
                start_frame=int(data.get("start_frame", 0)),
                logits=_decode_array(data.get("logits")),
                box=box,
                poor_frames=int(data.get("poor_frames", 0)),
                last_score=float(data.get("last_score", 0.0)),
                needs_prompt=bool(data.get("needs_prompt", True)),
            )
        except InvalidInputError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed track state {data.get('id', '?')!r}: {exc!r}") from None


def _encode_array(array: np.ndarray | None, binary: bool = False) -> dict[str, Any] | None:
    if array is None:
        return None
    raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    data: bytes | str = raw if binary else base64.b64encode(raw).decode("ascii")
    return {"shape": list(array.shape), "dtype": "float32", "data": data}


def _decode_array(data: Mapping[str, Any] | None) -> np.ndarray | None:
    if data is None:
        return None
    if data.get("dtype") != "float32":
        raise InvalidInputError(f"track logits must be float32, got {data.get('dtype')!r}")
    shape = tuple(int(v) for v in data["shape"])
    encoded = data["data"]
    raw = encoded if isinstance(encoded, bytes) else base64.b64decode(encoded, validate=True)
    if len(raw) != 4 * math.prod(shape):
        raise InvalidInputError(
            f"track logits of shape {shape} need {4 * math.prod(shape)} bytes, got {len(raw)}"
        )
    out = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)
    out.setflags(write=False)
    return out
