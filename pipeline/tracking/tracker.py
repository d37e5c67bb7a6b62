"""Tracking by prompt propagation: each frame's prompt comes from the previous frame's mask.

A :class:`Tracker` holds every track of a job (or of a shard of a job) and, once per frame, sends
all of them to the segmenter in one ``decode`` call against that frame's shared embedding:

* On a track's first frame, and after a re-prompt, the user's prompt is decoded (multimask when
  the prompt is a single point, as :attr:`Prompt.multimask` says; a mask prompt as SAM's mask
  input with the box around it, see :meth:`DecodeRequest.of`).
* Afterwards a track is prompted with the last good mask's box, grown by a margin and clipped to
  the frame, plus (optionally) that frame's low-resolution logits as mask input and a positive
  point at their most confident pixel; the best of the multimask outputs by predicted IoU is kept.
* A frame is poor when its predicted IoU is below ``min_score`` or its mask is smaller than
  ``min_area``. A poor frame's mask is still reported, but the next frame is prompted from the
  last good box and logits. After ``lost_after`` consecutive poor frames the track is lost: it is
  no longer decoded, and reports an empty mask, until it is re-prompted.

Invalid prompts: a prompt is checked against the frame size on the first frame it is decoded on
(only then is the size known). A prompt outside the frame (or a mask of another size) makes :meth:`Tracker.step` raise
:class:`TrackPromptError` (a :class:`PromptError` naming the track) *before* anything is decoded
or changed, so the caller can remove or re-prompt that track and call ``step`` again with the
same frame; the other tracks lose nothing.

Coordinates are pixels of the original frame unless said otherwise; boxes are XYXY.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Literal, Protocol, get_args

import numpy as np

from pipeline.errors import InvalidInputError, PromptError
from pipeline.masks import mask_bbox
from pipeline.model.types import DecodeRequest, Embedding, MaskBatch
from pipeline.prompts import POSITIVE, Box, Point, Prompt, TrackSpec
from pipeline.tracking.state import MaskBox, TrackingConfig, TrackState, TrackStatus

EventKind = Literal["lost", "found", "added", "removed", "reprompted"]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)
SNAPSHOT_VERSION = 1
LOW_RES_STRIDE = 4  # encoder-input pixels per low-resolution logit (S / (S/4))


class Segmenter(Protocol):
    """What the tracker needs of a model (:class:`pipeline.model.MobileSam` is one)."""

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution logits (S/4)."""
        ...

    def decode(self, embedding: Embedding, requests: Sequence[DecodeRequest]) -> MaskBatch:
        """Masks for all requests on one frame, in request order."""
        ...


class TrackPromptError(PromptError):
    """A track's prompt does not fit the frame it is first decoded on."""

    def __init__(self, message: str, track_id: int, frame_index: int) -> None:
        super().__init__(message)
        self.track_id = track_id
        self.frame_index = frame_index

    def __reduce__(self) -> tuple[Any, ...]:  # keep the fields across processes (Ray pickles errors)
        return (type(self), (str(self), self.track_id, self.frame_index))


@dataclass(frozen=True)
class TrackResult:
    """One track on one frame.

    Attributes:
        track_id: the track.
        status: active, or lost (then ``mask`` is empty, ``score`` 0 and ``box`` None).
        score: predicted IoU of the mask.
        box: the mask's box, XYXY with exclusive right/bottom, original-frame pixels; None when
            the mask is empty.
        mask: (H, W) bool at the frame's original resolution (may be a view into the decoded batch).
    """

    track_id: int
    status: TrackStatus
    score: float
    box: MaskBox | None
    mask: np.ndarray


@dataclass(frozen=True)
class TrackEvent:
    """Something that happened to a track, on the frame it took effect."""

    kind: EventKind
    track_id: int
    frame_index: int
    detail: str = ""

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise InvalidInputError(
                f"track event kind must be one of {', '.join(EVENT_KINDS)}, got {self.kind!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "track_id": self.track_id,
            "frame_index": self.frame_index,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class StepPlan:
    """What a tracker decodes on one frame (see :meth:`Tracker.plan`).

    Attributes:
        frame_index: the frame.
        size: (H, W) of the frame.
        started: the tracks started by this frame, in the order they were added.
        decoded: those of them decoded on it (active, or waiting for their prompt).
        requests: one request per decoded track, in the same order.
    """

    frame_index: int
    size: tuple[int, int]
    started: tuple[TrackState, ...]
    decoded: tuple[TrackState, ...]
    requests: tuple[DecodeRequest, ...]


class Tracker:
    """Follows any number of tracks through the frames of one video.

    Args:
        segmenter: decodes prompts against a frame embedding.
        config: thresholds and options (defaults when None).

    ``add``, ``remove`` and ``reprompt`` may be called between any two steps; their events are
    reported by the next :meth:`step`, with its frame index.
    """

    def __init__(self, segmenter: Segmenter, config: TrackingConfig | None = None) -> None:
        self.segmenter = segmenter
        self.config = config if config is not None else TrackingConfig()
        self._tracks: dict[int, TrackState] = {}
        self._pending: list[tuple[EventKind, int, str]] = []
        self._last_frame: int | None = None

    @property
    def tracks(self) -> Mapping[int, TrackState]:
        """Read-only view of every track's state by id, in the order they were added."""
        return MappingProxyType(self._tracks)

    @property
    def last_frame(self) -> int | None:
        """Index of the last frame stepped, or None before the first."""
        return self._last_frame

    def add(self, spec: TrackSpec | int, prompt: Prompt | None = None, start_frame: int = 0) -> TrackState:
        """Start a track: ``add(TrackSpec(...))`` or ``add(track_id, prompt, start_frame)``.

        A ``start_frame`` at or before the next frame starts it on the next frame.
        Raises :class:`InvalidInputError` when the id is taken.
        """
        if isinstance(spec, TrackSpec):
            if prompt is not None or start_frame != 0:
                raise InvalidInputError("give either a TrackSpec or a track id with a prompt, not both")
        else:
            if prompt is None:
                raise InvalidInputError(f"track {spec}: a prompt is needed to add a track by id")
            spec = TrackSpec(spec, prompt, start_frame)
        if spec.track_id in self._tracks:
            raise InvalidInputError(f"track {spec.track_id} already exists")
        state = TrackState(spec.track_id, spec.prompt, start_frame=spec.start_frame)
        self._tracks[spec.track_id] = state
        self._pending.append(("added", spec.track_id, f"starts at frame {spec.start_frame}"))
        return state

    def remove(self, track_id: int) -> None:
        """Stop a track; it gives no more results. Raises :class:`InvalidInputError` if unknown."""
        self._get(track_id)
        del self._tracks[track_id]
        self._pending.append(("removed", track_id, ""))

    def reprompt(self, track_id: int, prompt: Prompt) -> TrackState:
        """Give a track a new prompt, decoded on its next frame (a lost track is "found" when good)."""
        state = replace(
            self._get(track_id), prompt=prompt, needs_prompt=True, poor_frames=0, logits=None, box=None
        )
        self._tracks[track_id] = state
        self._pending.append(("reprompted", track_id, ""))
        return state

    def step(self, frame_index: int, embedding: Embedding) -> tuple[list[TrackResult], list[TrackEvent]]:
        """Decode every started track on one frame.

        Args:
            frame_index: index of the frame, greater than the previous step's (gaps are fine).
            embedding: the frame's embedding; ``original_size`` is (H, W) of the frame.

        Returns:
            One result per track started by this frame (lost ones included), in the order the
            tracks were added, and the events of this frame (pending add/remove/re-prompt first).

        Raises:
            TrackPromptError: a prompt decoded on this frame lies outside it; nothing has changed.
        """
        plan = self.plan(frame_index, embedding)
        batch = self.segmenter.decode(embedding, plan.requests) if plan.requests else None
        return self.commit(plan, batch)

    def plan(self, frame_index: int, embedding: Embedding) -> StepPlan:
        """The first half of :meth:`step`: what to decode on this frame. Changes nothing.

        A caller that follows many trackers decodes every plan's requests together (one model
        call over several frames and jobs), then gives each tracker its masks by :meth:`commit`.

        Raises:
            InvalidInputError: the frame index is not after the last one stepped.
            TrackPromptError: a prompt decoded on this frame lies outside it.
        """
        if isinstance(frame_index, bool) or not isinstance(frame_index, int) or frame_index < 0:
            raise InvalidInputError(f"frame index must be an integer >= 0, got {frame_index!r}")
        if self._last_frame is not None and frame_index <= self._last_frame:
            raise InvalidInputError(
                f"frame {frame_index} is not after frame {self._last_frame}, the last one stepped; "
                "frames must increase"
            )
        height, width = embedding.original_size
        started = tuple(s for s in self._tracks.values() if s.start_frame <= frame_index)
        decoded = tuple(s for s in started if s.status is TrackStatus.ACTIVE or s.needs_prompt)
        for s in decoded:
            if s.needs_prompt or s.box is None:
                try:
                    s.prompt.check_inside(width, height)
                except PromptError as exc:
                    raise TrackPromptError(
                        f"track {s.track_id}, frame {frame_index}: {exc}", s.track_id, frame_index
                    ) from None
        requests = tuple(self._request(s, embedding) for s in decoded)
        return StepPlan(frame_index, (height, width), started, decoded, requests)

    def commit(self, plan: StepPlan, batch: MaskBatch | None) -> tuple[list[TrackResult], list[TrackEvent]]:
        """The second half of :meth:`step`: take the masks of ``plan``'s requests (None when it has
        none) and move every track on. See :meth:`step` for what it returns."""
        if batch is not None:
            self._check_batch(batch, len(plan.requests), plan.size)
        elif plan.requests:
            raise RuntimeError(f"no masks given for the {len(plan.requests)} requests of the plan")
        frame_index = plan.frame_index
        events = [TrackEvent(kind, tid, frame_index, detail) for kind, tid, detail in self._pending]
        self._pending = []
        outputs: dict[int, TrackResult] = {}
        if batch is not None:
            for i, s in enumerate(plan.decoded):
                state, result, event = self._update(
                    s, batch.masks[i], float(batch.scores[i]), batch.logits[i], frame_index
                )
                self._tracks[s.track_id] = state
                outputs[s.track_id] = result
                if event is not None:
                    events.append(event)
        results = [
            outputs[s.track_id] if s.track_id in outputs else _lost_result(s.track_id, plan.size)
            for s in plan.started
        ]
        self._last_frame = frame_index
        return results, events

    def snapshot(self, binary: bool = False) -> dict[str, Any]:
        """The whole tracking state as plain, JSON-serialisable data (see :meth:`restore`).

        With ``binary`` the tracks' logits are raw bytes rather than base64 (see
        :meth:`TrackState.to_dict`).
        """
        return {
            "version": SNAPSHOT_VERSION,
            "last_frame": self._last_frame,
            "tracks": [s.to_dict(binary) for s in self._tracks.values()],
            "pending_events": [{"kind": k, "track_id": t, "detail": d} for k, t, d in self._pending],
        }

    def keep_only(self, owned: Callable[[int], bool]) -> None:
        """Drop, silently, every track (and its pending events) for which ``owned(id)`` is False:
        a tracker that follows a share of a job's tracks keeps its share of a restored snapshot."""
        self._tracks = {tid: s for tid, s in self._tracks.items() if owned(tid)}
        self._pending = [(k, tid, d) for k, tid, d in self._pending if owned(tid)]

    def restore(self, data: Mapping[str, Any]) -> None:
        """Replace the whole state with a :meth:`snapshot`; raises :class:`InvalidInputError` if malformed."""
        if not isinstance(data, Mapping) or data.get("version") != SNAPSHOT_VERSION:
            got = data.get("version") if isinstance(data, Mapping) else type(data).__name__
            raise InvalidInputError(f"expected a tracker snapshot of version {SNAPSHOT_VERSION}, got {got!r}")
        try:
            tracks: dict[int, TrackState] = {}
            for item in data["tracks"]:
                state = TrackState.from_dict(item)
                if state.track_id in tracks:
                    raise InvalidInputError(f"track {state.track_id} appears twice in the snapshot")
                tracks[state.track_id] = state
            pending: list[tuple[EventKind, int, str]] = []
            for e in data.get("pending_events", []):
                event = TrackEvent(e["kind"], int(e["track_id"]), 0, str(e.get("detail", "")))
                pending.append((event.kind, event.track_id, event.detail))
            last = data.get("last_frame")
            last_frame = None if last is None else int(last)
        except InvalidInputError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed tracker snapshot: {exc!r}") from None
        self._tracks, self._pending, self._last_frame = tracks, pending, last_frame

    def _get(self, track_id: int) -> TrackState:
        try:
            return self._tracks[track_id]
        except KeyError:
            known = ", ".join(str(t) for t in self._tracks) or "none"
            raise InvalidInputError(f"no track {track_id} (tracks: {known})") from None

    def _request(self, state: TrackState, embedding: Embedding) -> DecodeRequest:
        if state.needs_prompt or state.box is None:
            # multimask as Prompt.multimask says; a mask prompt's mask becomes the mask input
            return DecodeRequest.of(state.prompt, embedding, self.segmenter.low_res_size)
        cfg = self.config
        height, width = embedding.original_size
        box = grow_box(state.box, cfg.box_margin, cfg.min_margin, width, height)
        points: tuple[Point, ...] = ()
        if cfg.add_peak_point and state.logits is not None:
            peak = peak_point(state.logits, embedding.input_size, embedding.original_size)
            points = (peak,) if peak is not None else ()
        mask_input = state.logits if cfg.use_mask_input else None
        return DecodeRequest(Prompt(points, (POSITIVE,) * len(points), box), mask_input, multimask=True)

    def _update(
        self, state: TrackState, mask: np.ndarray, score: float, logits: np.ndarray, frame_index: int
    ) -> tuple[TrackState, TrackResult, TrackEvent | None]:
        cfg = self.config
        box = mask_bbox(mask)
        area = 0 if box is None else int(np.count_nonzero(mask[box[1] : box[3], box[0] : box[2]]))
        if score >= cfg.min_score and area >= cfg.min_area:
            kept = np.array(logits, dtype=np.float32, copy=True)
            kept.setflags(write=False)
            event = None
            if state.status is TrackStatus.LOST:
                event = TrackEvent("found", state.track_id, frame_index, f"score {score:.3f}, area {area}")
            new = replace(
                state,
                status=TrackStatus.ACTIVE,
                logits=kept,
                box=box,
                poor_frames=0,
                last_score=score,
                needs_prompt=False,
            )
            return new, TrackResult(state.track_id, TrackStatus.ACTIVE, score, box, mask), event
        poor = state.poor_frames + 1
        if poor >= cfg.lost_after:
            detail = (
                f"{poor} poor frames in a row (last: score {score:.3f}, min {cfg.min_score:g}; "
                f"area {area}, min {cfg.min_area})"
            )
            new = replace(
                state,
                status=TrackStatus.LOST,
                logits=None,
                box=None,
                poor_frames=poor,
                last_score=score,
                needs_prompt=False,
            )
            return (
                new,
                _lost_result(state.track_id, mask.shape),
                TrackEvent("lost", state.track_id, frame_index, detail),
            )
        # Not lost yet: report what the model saw, but keep prompting from the last good frame.
        new = replace(state, poor_frames=poor, last_score=score)
        if state.status is TrackStatus.LOST:  # re-prompted, not found yet
            return new, _lost_result(state.track_id, mask.shape), None
        return new, TrackResult(state.track_id, TrackStatus.ACTIVE, score, box, mask), None

    def _check_batch(self, batch: MaskBatch, count: int, size: tuple[int, int]) -> None:
        low = self.segmenter.low_res_size
        expected = {"masks": (count, *size), "scores": (count,), "logits": (count, low, low)}
        for name, shape in expected.items():
            got = getattr(batch, name).shape
            if tuple(got) != shape:
                raise RuntimeError(
                    f"segmenter returned {name} of shape {tuple(got)} for {count} requests, expected {shape}"
                )


def grow_box(box: MaskBox, margin: float, min_margin: float, width: int, height: int) -> Box:
    """``box`` grown each side by ``margin`` of its size (>= ``min_margin`` px), clipped to the frame."""
    x0, y0, x1, y1 = box
    mx = max(margin * (x1 - x0), min_margin)
    my = max(margin * (y1 - y0), min_margin)
    return (max(0.0, x0 - mx), max(0.0, y0 - my), min(float(width), x1 + mx), min(float(height), y1 + my))


def peak_point(
    logits: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int]
) -> Point | None:
    """Original-frame (x, y) of the most confident low-resolution logit, or None if none is positive.

    Args:
        logits: (S/4, S/4) float32 logits in the padded encoder-input frame.
        input_size: (h, w) of the frame resized for the encoder (the unpadded part).
        original_size: (H, W) of the frame.
    """
    h, w = input_size
    height, width = original_size
    valid = logits[: math.ceil(h / LOW_RES_STRIDE), : math.ceil(w / LOW_RES_STRIDE)]  # not the padding
    if valid.size == 0:
        return None
    i, j = np.unravel_index(int(np.argmax(valid)), valid.shape)
    if not valid[i, j] > 0:
        return None
    x = min((j + 0.5) * LOW_RES_STRIDE, w) * width / w
    y = min((i + 0.5) * LOW_RES_STRIDE, h) * height / h
    return (float(x), float(y))


def _lost_result(track_id: int, size: tuple[int, ...]) -> TrackResult:
    return TrackResult(track_id, TrackStatus.LOST, 0.0, None, np.zeros(size, dtype=bool))
