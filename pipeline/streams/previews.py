"""A job's ``:preview`` stream: small JPEGs of processed frames (see ``docs/wire-format.md``).

Written by the publish script of :mod:`pipeline.ledger.sink` (with the frame's masks entry, same
entry ID ``{frame}-1``); read here. Its ``jpeg`` field is raw bytes, so reads ask Redis for
undecoded replies whatever the client's ``decode_responses``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from pipeline.frames import FrameResult
from pipeline.streams.connection import redis_errors
from pipeline.streams.keys import Keys
from pipeline.streams.wire import WIRE_VERSION, WireFormatError, as_text


@dataclass(frozen=True)
class PreviewEntry:
    """One entry of a preview stream.

    Attributes:
        entry_id: ``"{frame}-1"``, the ID of the frame's masks entry too.
        frame: the frame index.
        pts: presentation time in seconds, or None.
        capture_time: when the frame was decoded (live: received), epoch seconds.
        width, height: the preview's size in pixels (the frame's own size is in its masks entry).
        jpeg: the JPEG file's bytes.
    """

    entry_id: str
    frame: int
    pts: float | None
    capture_time: float
    width: int
    height: int
    jpeg: bytes


def encode_preview(result: FrameResult) -> list[str | bytes]:
    """The field/value list of a frame's preview entry (``result.preview`` must be set)."""
    preview = result.preview
    if preview is None:
        raise WireFormatError(f"frame {result.frame_index} has no preview")
    return [
        "v",
        str(WIRE_VERSION),
        "frame",
        str(int(result.frame_index)),
        "pts",
        "" if result.pts is None else repr(float(result.pts)),
        "capture_time",
        repr(float(result.capture_time)),
        "width",
        str(int(preview.width)),
        "height",
        str(int(preview.height)),
        "jpeg",
        preview.jpeg,
    ]


def decode_preview(entry_id: str | bytes, fields: Mapping[Any, Any]) -> PreviewEntry:
    """Decode a preview entry (fields as bytes or str; ``jpeg`` must be bytes).

    Raises:
        WireFormatError: a field is missing or malformed, or the entry's version is newer than ours.
    """
    eid = as_text(entry_id)
    f = {as_text(k): v for k, v in fields.items()}
    try:
        version = int(as_text(f["v"]))
        if version > WIRE_VERSION:
            raise WireFormatError(
                f"preview entry {eid} has wire version {version}; this reader knows {WIRE_VERSION}"
            )
        pts = as_text(f.get("pts", b""))
        jpeg = f["jpeg"]
        return PreviewEntry(
            eid,
            int(as_text(f["frame"])),
            float(pts) if pts else None,
            float(as_text(f["capture_time"])),
            int(as_text(f["width"])),
            int(as_text(f["height"])),
            jpeg if isinstance(jpeg, bytes) else jpeg.encode("latin-1"),
        )
    except (KeyError, ValueError) as exc:
        raise WireFormatError(f"preview entry {eid} is malformed: {exc}") from None


class PreviewReader:
    """Reads one job's preview stream.

    Args:
        client: Redis client (either ``decode_responses``).
        keys: key names.
        job_id: the job.
    """

    def __init__(self, client: redis.Redis, keys: Keys, job_id: str) -> None:
        self.client = client
        self.key = keys.preview(job_id)
        self.job_id = job_id

    def _range(self, command: str, first: str, last: str, count: int) -> list[PreviewEntry]:
        with redis_errors(f"reading the previews of job {self.job_id!r}"):
            raw: Any = self.client.execute_command(
                command, self.key, first, last, "COUNT", count, NEVER_DECODE=True
            )
        return [decode_preview(eid, _pairs(fields)) for eid, fields in raw or []]

    def latest(self) -> PreviewEntry | None:
        """The newest preview, or None."""
        found = self._range("XREVRANGE", "+", "-", 1)
        return found[0] if found else None

    def after(self, entry_id: str | None, count: int) -> list[PreviewEntry]:
        """Up to ``count`` previews after ``entry_id`` (None: from the oldest kept), oldest first."""
        first = "-" if entry_id is None else f"({entry_id}"
        return self._range("XRANGE", first, "+", count)

    def frame(self, frame: int) -> PreviewEntry | None:
        """The preview of frame ``frame``, or None (never made, or trimmed)."""
        eid = f"{frame}-1"
        found = self._range("XRANGE", eid, eid, 1)
        return found[0] if found else None

    def index(self, count: int) -> list[tuple[int, float | None, float]]:
        """``(frame, pts, capture_time)`` of up to ``count`` kept previews, oldest first (no pixels)."""
        return [(p.frame, p.pts, p.capture_time) for p in self.after(None, count)]


def _pairs(fields: Any) -> dict[bytes, Any]:
    """A stream entry's fields from a raw reply: a flat list (RESP2) or a mapping."""
    if isinstance(fields, Mapping):
        return dict(fields)
    items = list(fields)
    return {items[i]: items[i + 1] for i in range(0, len(items), 2)}
