"""The versioned wire format of the masks and events streams (documented in ``docs/wire-format.md``).

Every field value is a string. A masks entry's ID is derived from its frame index
(``f"{frame_index}-1"``), so Redis itself rejects a frame that is published twice.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import SamstreamError
from pipeline.frames import FrameResult, TrackMask

WIRE_VERSION = 1
"""Bumped only for changes an old reader cannot ignore; new optional fields keep the version."""

TRACK_STATES = ("active", "searching", "lost")  # a reader treats any but "active" as no mask

_ENTRY_ID = re.compile(r"(\d+)-(\d+)")


class WireFormatError(SamstreamError, ValueError):
    """A stream entry or a result does not follow the wire format."""


@dataclass(frozen=True)
class MaskEntry:
    """One decoded entry of a masks stream.

    Attributes:
        entry_id: the stream entry ID, ``"{frame}-1"``.
        result: the frame's result (``timings`` is always empty: timings stay in the process).
        publish_time: wall-clock epoch seconds when the entry was encoded for publishing.
        notice: a warning that applies to the whole result (e.g. random weights), or None.
        version: the entry's wire version.
    """

    entry_id: str
    result: FrameResult
    publish_time: float
    notice: str | None = None
    version: int = WIRE_VERSION


@dataclass(frozen=True)
class Event:
    """One decoded entry of an events stream.

    Attributes:
        entry_id: the stream entry ID (Redis-generated, time-based).
        type: what happened: ``status``, ``track_lost``, ``track_found``, ``reconnect``, ``error``, ….
        time: wall-clock epoch seconds when it happened.
        frame: the frame index it refers to, or None.
        track: the track id it refers to, or None.
        detail: a short human-readable text (for ``status``: the new status), or None.
        data: free structured data (a JSON object on the wire), empty if none.
    """

    entry_id: str
    type: str
    time: float
    frame: int | None = None
    track: int | None = None
    detail: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def entry_id(frame_index: int) -> str:
    """The masks-stream entry ID of a frame: ``f"{frame_index}-1"`` (frame 0 is ``0-1``, above ``0-0``)."""
    if isinstance(frame_index, bool) or not isinstance(frame_index, int) or frame_index < 0:
        raise WireFormatError(f"frame index must be an int >= 0, got {frame_index!r}")
    return f"{frame_index}-1"


def frame_of(entry_id: str | bytes) -> int:
    """The frame index of a masks-stream entry ID (``"12-1"`` -> 12)."""
    text = as_text(entry_id)
    match = _ENTRY_ID.fullmatch(text)
    if match is None:
        raise WireFormatError(f"stream entry ID must look like '<int>-<int>', got {text!r}")
    return int(match.group(1))


def encode_entry(
    result: FrameResult, notice: str | None = None, *, publish_time: float | None = None
) -> dict[str, str]:
    """Encode one frame's result as the fields of a masks-stream entry.

    Args:
        result: the frame's result; every track's ``rle`` must be ``{"size": [height, width],
            "counts": str | bytes}`` at the frame's resolution (compressed COCO RLE).
        notice: a warning carried with the entry (e.g. "random weights: masks are meaningless").
        publish_time: epoch seconds to record; default now.

    Returns:
        ``{"v", "frame", "pts", "capture_time", "publish_time", "width", "height", "tracks"}``,
        ``"image_size"`` when the result says it and ``"notice"`` when given, all strings. ``pts``
        is ``""`` when unknown.

    Raises:
        WireFormatError: a value cannot be represented (bad track state, RLE size not the frame's,
            non-finite score, …).
    """
    entry_id(result.frame_index)  # validates the index
    fields = {
        "v": str(WIRE_VERSION),
        "frame": str(int(result.frame_index)),
        "pts": "" if result.pts is None else repr(float(result.pts)),
        "capture_time": repr(float(result.capture_time)),
        "publish_time": repr(float(time.time() if publish_time is None else publish_time)),
        "width": str(int(result.width)),
        "height": str(int(result.height)),
        "tracks": json.dumps(
            [_encode_track(t, result.height, result.width) for t in result.tracks],
            separators=(",", ":"),
            allow_nan=False,
        ),
    }
    if result.image_size is not None:
        fields["image_size"] = str(int(result.image_size))
    if notice is not None:
        fields["notice"] = str(notice)
    return fields


def decode_mask_entry(entry_id: str | bytes, fields: Mapping[Any, Any]) -> MaskEntry:
    """Decode a masks-stream entry, keeping its publish time and notice.

    Args:
        entry_id: the entry's stream ID.
        fields: the entry's fields as returned by redis-py, keys and values ``bytes`` or ``str``.
            Unknown fields are ignored (later versions may add optional ones).

    Raises:
        WireFormatError: a field is missing or malformed, or the entry's version is newer than
            :data:`WIRE_VERSION`.
    """
    eid = as_text(entry_id)
    f = {as_text(k): as_text(v) for k, v in fields.items()}
    version = _int(f, "v", eid)
    if version > WIRE_VERSION or version < 1:
        raise WireFormatError(
            f"masks entry {eid} has wire version {version}; this reader understands 1 to {WIRE_VERSION}"
        )
    try:
        tracks_raw = json.loads(_field(f, "tracks", eid))
        if not isinstance(tracks_raw, list):
            raise TypeError("tracks is not a JSON list")
        tracks = tuple(_decode_track(t) for t in tracks_raw)
    except (ValueError, TypeError, KeyError) as e:
        raise WireFormatError(f"masks entry {eid} has a malformed 'tracks' field: {e}") from e
    result = FrameResult(
        frame_index=_int(f, "frame", eid),
        pts=None if f.get("pts", "") == "" else _float(f, "pts", eid),
        capture_time=_float(f, "capture_time", eid),
        width=_int(f, "width", eid),
        height=_int(f, "height", eid),
        tracks=tracks,
        image_size=_int(f, "image_size", eid) if f.get("image_size") else None,
    )
    return MaskEntry(
        entry_id=eid,
        result=result,
        publish_time=_float(f, "publish_time", eid),
        notice=f.get("notice"),
        version=version,
    )


def decode_entry(entry_id: str | bytes, fields: Mapping[Any, Any]) -> FrameResult:
    """Decode a masks-stream entry into the :class:`FrameResult` that was encoded.

    ``decode_entry(id, encode_entry(r))`` equals ``r`` for any valid ``r`` with empty ``timings``
    (RLE ``counts`` given as bytes come back as str). Use :func:`decode_mask_entry` for the publish
    time and notice.
    """
    return decode_mask_entry(entry_id, fields).result


def encode_event(
    type: str,
    *,
    time_s: float | None = None,
    frame: int | None = None,
    track: int | None = None,
    detail: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Encode an events-stream entry.

    Returns:
        ``{"v", "type", "time"}`` plus ``"frame"``, ``"track"``, ``"detail"``, ``"data"`` (a JSON object)
        for those given, all strings.
    """
    if not isinstance(type, str) or not type:
        raise WireFormatError(f"event type must be a non-empty string, got {type!r}")
    fields = {
        "v": str(WIRE_VERSION),
        "type": type,
        "time": repr(float(time.time() if time_s is None else time_s)),
    }
    if frame is not None:
        fields["frame"] = str(int(frame))
    if track is not None:
        fields["track"] = str(int(track))
    if detail is not None:
        fields["detail"] = str(detail)
    if data:
        try:
            fields["data"] = json.dumps(dict(data), separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise WireFormatError(f"event data must be JSON-serialisable: {e}") from e
    return fields


def decode_event(entry_id: str | bytes, fields: Mapping[Any, Any]) -> Event:
    """Decode an events-stream entry (keys and values ``bytes`` or ``str``)."""
    eid = as_text(entry_id)
    f = {as_text(k): as_text(v) for k, v in fields.items()}
    data: dict[str, Any] = {}
    if f.get("data"):
        try:
            loaded = json.loads(f["data"])
        except ValueError as e:
            raise WireFormatError(f"event {eid} has a malformed 'data' field: {e}") from e
        if not isinstance(loaded, dict):
            raise WireFormatError(f"event {eid}: 'data' must be a JSON object, got {type(loaded).__name__}")
        data = loaded
    return Event(
        entry_id=eid,
        type=_field(f, "type", eid),
        time=_float(f, "time", eid),
        frame=_int(f, "frame", eid) if "frame" in f else None,
        track=_int(f, "track", eid) if "track" in f else None,
        detail=f.get("detail"),
        data=data,
    )


def _encode_track(track: TrackMask, height: int, width: int) -> dict[str, Any]:
    if track.state not in TRACK_STATES:
        raise WireFormatError(
            f"track {track.track_id}: state must be one of {TRACK_STATES}, got {track.state!r}"
        )
    score = float(track.score)
    if not math.isfinite(score):
        raise WireFormatError(f"track {track.track_id}: score must be finite, got {score}")
    rle = track.rle
    size = [int(s) for s in rle.get("size", ())]
    if size != [int(height), int(width)]:
        raise WireFormatError(
            f"track {track.track_id}: RLE size must be the frame's [height, width] = "
            f"[{height}, {width}], got {rle.get('size')!r}"
        )
    counts = rle.get("counts")
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if not isinstance(counts, str):
        raise WireFormatError(
            f"track {track.track_id}: RLE counts must be compressed (str or bytes), "
            f"got {type(counts).__name__}"
        )
    bbox = None if track.bbox is None else [int(v) for v in track.bbox]
    if bbox is not None and len(bbox) != 4:
        raise WireFormatError(f"track {track.track_id}: bbox must be (x0, y0, x1, y1), got {track.bbox!r}")
    out = {
        "id": int(track.track_id),
        "state": track.state,
        "score": score,
        "bbox": bbox,
        "rle": {"size": size, "counts": counts},
    }
    if track.label is not None:  # a detector's class; absent otherwise (older readers see no change)
        out["label"] = str(track.label)
    return out


def _decode_track(raw: Any) -> TrackMask:
    if not isinstance(raw, dict):
        raise TypeError(f"a track must be a JSON object, got {raw!r}")
    bbox = raw["bbox"]
    rle = raw["rle"]
    return TrackMask(
        track_id=int(raw["id"]),
        state=str(raw["state"]),
        score=float(raw["score"]),
        bbox=None if bbox is None else (int(bbox[0]), int(bbox[1]), int(bbox[2]), int(bbox[3])),
        rle={"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": str(rle["counts"])},
        label=None if raw.get("label") is None else str(raw["label"]),
    )


def as_text(value: str | bytes) -> str:
    """``value`` as str (redis-py returns bytes unless ``decode_responses=True``)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _field(f: Mapping[str, str], name: str, eid: str) -> str:
    try:
        return f[name]
    except KeyError:
        raise WireFormatError(f"stream entry {eid} has no {name!r} field") from None


def _int(f: Mapping[str, str], name: str, eid: str) -> int:
    value = _field(f, name, eid)
    try:
        return int(value)
    except ValueError:
        raise WireFormatError(f"stream entry {eid}: {name!r} must be an integer, got {value!r}") from None


def _float(f: Mapping[str, str], name: str, eid: str) -> float:
    value = _field(f, name, eid)
    try:
        return float(value)
    except ValueError:
        raise WireFormatError(f"stream entry {eid}: {name!r} must be a number, got {value!r}") from None
