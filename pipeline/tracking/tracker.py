"""Tracks that hold on: motion, appearance memory, search, and one object per track.

A :class:`Tracker` holds every track of a job (or of a shard of a job) and, once per frame, sends
all of their requests to the segmenter in one ``decode`` call against that frame's shared
embedding. Each frame, a track:

* **is prompted** by the user's prompt on its first frame and after a re-prompt (multimask when the
  prompt is a single point, as :attr:`Prompt.multimask` says; a mask prompt as SAM's mask input with
  the box around it, see :meth:`DecodeRequest.of`);
* **follows** its object afterwards: its motion (:mod:`~pipeline.tracking.motion`, a Kalman filter
  on the box in the frames' own time) predicts the box at this frame's time; the prompt is that box,
  grown by a margin and by the prediction's uncertainty, with the last good frame's logits moved
  as far as the box moved (the mask input), multimask, the best mask by predicted IoU kept;
* **checks** what came back: a mask is the object only if its predicted IoU and area pass, and,
  with an appearance memory (:mod:`~pipeline.tracking.memory`), its features match the object's
  (``keep_match``), so a wall in front of the object or another object is not taken for it;
* **searches** when its object is not found: it coasts along its motion's prediction (``coast_s``),
  and looks over the whole frame at the peaks of its memory's similarity map; each place is one
  more request in the same decode call. A place's mask re-finds the object only if it matches the
  memory well (``found_match``, and within ``found_margin`` of the track's typical match), or,
  without usable features, if it lies where the motion expects the object;
* **owns its pixels**: tracks of the tracker never claim the same pixels. Masks are taken in order
  of confidence (a user's prompt first, then the best memory match, then agreement with the
  motion, then predicted IoU); a later mask loses what earlier ones took, and is not taken at all
  if that is half of it. So two crossing objects keep their identities.

A track's status on each frame is ``active`` (the object found: its mask), ``searching`` (not found
on this frame: an empty mask while it coasts and searches), or ``lost`` (it gave up: after
``search_s`` seconds without its object, if set; not decoded until re-prompted). Events: ``lost``
after ``lost_after`` frames in a row without the object, ``found`` when a track that reported
``lost`` finds it again (with where and how well it matched), ``gave_up``, and ``added``,
``removed``, ``reprompted`` on the frame they take effect. With discovery
(:mod:`~pipeline.tracking.discovery`), the tracker also starts tracks of its own (``discovered``)
and ends them when their objects have gone (``ended``).

Time: :meth:`Tracker.step` takes each frame's time in seconds (presentation time of a file, capture
time of a live feed): motion, coasting and search limits are in seconds of that time, so strides,
dropped frames and variable rates count as the time they take. A frame without a time is taken as
``frame_index / 30`` s.

Invalid prompts: a prompt is checked against the frame size on the first frame it is decoded on
(only then is the size known). A prompt outside the frame (or a mask of another size) makes
:meth:`Tracker.step` raise :class:`TrackPromptError` (a :class:`PromptError` naming the track)
*before* anything is decoded or changed, so the caller can remove or re-prompt that track and call
``step`` again with the same frame; the other tracks lose nothing.

Coordinates are pixels of the original frame unless said otherwise; boxes are XYXY.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal, Protocol, get_args

import numpy as np

from pipeline.errors import InvalidInputError, PromptError
from pipeline.masks.rle import mask_bbox
from pipeline.model.types import DecodeRequest, Embedding, MaskBatch
from pipeline.prompts import POSITIVE, Box, Point, Prompt, TrackSpec
from pipeline.tracking.arrays import resize_square
from pipeline.tracking.discovery import (
    Candidate,
    DiscoveryConfig,
    Grid,
    detected,
    detection_requests,
    grid_points,
    grid_requests,
    select,
)
from pipeline.tracking.memory import PURE, FrameFeatures, Memory
from pipeline.tracking.motion import Motion
from pipeline.tracking.state import MaskBox, TrackingConfig, TrackState, TrackStatus

EventKind = Literal[
    "lost", "found", "added", "removed", "reprompted", "gave_up", "discovered", "ended", "discovery_full"
]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)
SNAPSHOT_VERSION = 2  # 2: motion, memory and search times per track; 1 still loads
SNAPSHOT_VERSIONS = (1, 2)
LOW_RES_STRIDE = 4  # encoder-input pixels per low-resolution logit (S / (S/4))
DEFAULT_FPS = 30.0  # a frame without a time is taken as frame_index / DEFAULT_FPS seconds
MAX_GROWTH = 0.5  # the prediction's uncertainty grows a box prompt by at most this share of its side
IN_SIGHT = 0.5  # share of a predicted box in the frame for motion alone to re-find its object
MOTION_GATE = 4.0  # without appearance, a coasting track re-finds only masks this many std away
CLAIM_KEEP = 0.5  # a mask that loses this share of its pixels to other tracks is not taken
SURE = 0.25  # a prediction whose spread is under this share of the box's side takes the mask input

Kind = Literal["prompt", "follow", "search"]
_RANK = {"prompt": 0, "follow": 1, "search": 2}


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
        status: active, or searching / lost (then ``mask`` is empty, ``score`` 0 and ``box`` None).
        score: predicted IoU of the mask.
        box: the mask's box, XYXY with exclusive right/bottom, original-frame pixels; None when
            the mask is empty.
        mask: (H, W) bool at the frame's original resolution (may be a view into the decoded batch).
        label: the detector's class of the track's object (None: not named).
    """

    track_id: int
    status: TrackStatus
    score: float
    box: MaskBox | None
    mask: np.ndarray
    label: str | None = None


@dataclass(frozen=True)
class TrackEvent:
    """Something that happened to a track, on the frame it took effect.

    Attributes:
        kind: what happened.
        track_id, frame_index: to which track (0: the job's discovery, ``discovery_full``), on which
            frame.
        detail: one line for people.
        data: the same for programs (``found``: ``box``, ``score``, ``match``, ``needed``,
            ``frames``, ``by``; ``lost``: ``frames``; ``gave_up``: ``seconds``), or None.
    """

    kind: EventKind
    track_id: int
    frame_index: int
    detail: str = ""
    data: Mapping[str, Any] | None = field(default=None, hash=False)

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
            **({"data": dict(self.data)} if self.data is not None else {}),
        }


@dataclass(frozen=True)
class StepPlan:
    """What a tracker decodes on one frame (see :meth:`Tracker.plan`).

    Attributes:
        frame_index: the frame.
        size: (H, W) of the frame.
        started: the tracks started by this frame, in the order they were added.
        decoded: those of them with requests on it (active, searching, or waiting for their prompt).
        requests: every request of the frame, the tracks' in their order.
        owners: for each request, the index in ``decoded`` of its track.
        kinds: for each request, ``prompt`` (the user's), ``follow`` (the motion's prediction) or
            ``search`` (a peak of the memory's similarity).
        time: the frame's time, seconds.
        features: the frame's features as the memory reads them (None: memory off).
        predicted: for each decoded track, its motion carried to the frame's time (None: none).
        grid: a discovery frame's grid points; their requests follow the tracks' in ``requests``.
        input_size: (h, w) of the frame resized for the encoder.
        detections: a detection frame's detector boxes; their requests follow the tracks' (there is
            no grid then).
    """

    frame_index: int
    size: tuple[int, int]
    started: tuple[TrackState, ...]
    decoded: tuple[TrackState, ...]
    requests: tuple[DecodeRequest, ...]
    owners: tuple[int, ...] = ()
    kinds: tuple[Kind, ...] = ()
    time: float = 0.0
    features: FrameFeatures | None = None
    predicted: tuple[Motion | None, ...] = ()
    grid: tuple[tuple[float, float], ...] = ()
    input_size: tuple[int, int] = (0, 0)
    detections: tuple[Any, ...] = ()


@dataclass
class _Candidate:
    """One decoded request of a track, judged."""

    kind: Kind
    mask: np.ndarray
    score: float
    logits: np.ndarray
    box: MaskBox | None
    area: int
    match: float | None  # with the track's memory (None: no memory, no usable features, too thin)
    vector: np.ndarray | None  # its unit feature vector
    purity: float  # the largest share of one feature cell the mask covers
    agreement: float  # IoU of its box with the motion's prediction (0 without one)
    rank: int  # claims go first to 0 (a prompt's first try), then 1 (following), then 2 (searching)
    accepted: bool = False


class Tracker:
    """Follows any number of tracks through the frames of one video.

    Args:
        segmenter: decodes prompts against a frame embedding.
        config: options (defaults when None).
        discovery: find objects without prompts and follow them (None: only the tracks given).

    ``add``, ``remove`` and ``reprompt`` may be called between any two steps; their events are
    reported by the next :meth:`step`, with its frame index.
    """

    def __init__(
        self,
        segmenter: Segmenter,
        config: TrackingConfig | None = None,
        discovery: DiscoveryConfig | None = None,
    ) -> None:
        self.segmenter = segmenter
        self.config = config if config is not None else TrackingConfig()
        device = getattr(segmenter, "device", None)
        on_gpu = getattr(device, "type", None) == "cuda"
        self.discovery = discovery.for_device(on_gpu) if discovery is not None else None
        self._tracks: dict[int, TrackState] = {}
        self._pending: list[tuple[EventKind, int, str]] = []
        self._last_frame: int | None = None
        self._discovered: set[int] = set()  # the tracks discovery started, alive
        self._discovered_at: float | None = None  # frame time of the last discovery frame
        self._next_id = 1  # discovered tracks take ids from here up: never one used before
        self.discovering = True  # paused: no discovery frames (the tracks found go on)
        self._full = False  # discovery_full was told (until a discovered track ends)
        self._labels: dict[int, str] = {}  # a detector's class of the tracks it started

    def use(self, segmenter: Segmenter) -> None:
        """Decode with ``segmenter`` from the next frame on: an adaptive stream's frames moved to
        another encoder size, or a checkpoint made at another size was restored. Every track
        carries over: its low-resolution logits are resampled to the new model's side (they live in
        the square, padded encoder-input frame, which keeps the picture's place at any size); its
        box, motion and memory do not depend on the size."""
        self.segmenter = segmenter
        low = segmenter.low_res_size
        for tid, state in self._tracks.items():
            if state.logits is not None and state.logits.shape != (low, low):
                self._tracks[tid] = replace(state, logits=resize_square(state.logits, low))

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
        self._discovered.discard(track_id)
        self._labels.pop(track_id, None)
        self._pending.append(("removed", track_id, ""))

    def reprompt(self, track_id: int, prompt: Prompt) -> TrackState:
        """Give a track a new prompt, decoded on its next frame (a lost track is "found" when good).

        The new prompt may name another object: the track's motion and memory start again from it.
        A track that had reported ``lost`` stays ``lost`` (decoding its prompt each frame) until
        the prompt finds its object.
        """
        state = self._get(track_id)
        reported = state.status is TrackStatus.LOST or state.poor_frames >= self.config.lost_after
        state = replace(
            state,
            status=TrackStatus.LOST if reported else state.status,
            prompt=prompt,
            needs_prompt=True,
            poor_frames=0,
            logits=None,
            box=None,
            motion=None,
            memory=None,
            seen_at=None,
            searched_at=None,
        )
        self._tracks[track_id] = state
        self._pending.append(("reprompted", track_id, ""))
        return state

    def step(
        self, frame_index: int, embedding: Embedding, time: float | None = None
    ) -> tuple[list[TrackResult], list[TrackEvent]]:
        """Decode every started track on one frame.

        Args:
            frame_index: index of the frame, greater than the previous step's (gaps are fine).
            embedding: the frame's embedding; ``original_size`` is (H, W) of the frame.
            time: the frame's time in seconds (its presentation or capture time), increasing with
                the frames; None: ``frame_index / 30``.

        Returns:
            One result per track started by this frame (searching and lost ones included), in the
            order the tracks were added, and the events of this frame (pending add/remove/re-prompt
            first).

        Raises:
            TrackPromptError: a prompt decoded on this frame lies outside it; nothing has changed.
        """
        plan = self.plan(frame_index, embedding, time)
        batch = self.segmenter.decode(embedding, plan.requests) if plan.requests else None
        return self.commit(plan, batch)

    def plan(
        self,
        frame_index: int,
        embedding: Embedding,
        time: float | None = None,
        detections: Sequence[Any] | None = None,
    ) -> StepPlan:
        """The first half of :meth:`step`: what to decode on this frame. Changes nothing.

        A caller that follows many trackers decodes every plan's requests together (one model
        call over several frames and jobs), then gives each tracker its masks by :meth:`commit`.
        ``detections``: a detection frame's boxes (:class:`~pipeline.model.detector.Detection`), for
        a job that discovers with a detector (None: not a detection frame).

        Raises:
            InvalidInputError: the frame index is not after the last one stepped, or the time is
                not a finite number.
            TrackPromptError: a prompt decoded on this frame lies outside it.
        """
        if isinstance(frame_index, bool) or not isinstance(frame_index, int) or frame_index < 0:
            raise InvalidInputError(f"frame index must be an integer >= 0, got {frame_index!r}")
        if self._last_frame is not None and frame_index <= self._last_frame:
            raise InvalidInputError(
                f"frame {frame_index} is not after frame {self._last_frame}, the last one stepped; "
                "frames must increase"
            )
        t = frame_index / DEFAULT_FPS if time is None else float(time)
        if not math.isfinite(t):
            raise InvalidInputError(f"a frame's time must be a finite number of seconds, got {time!r}")
        height, width = embedding.original_size
        started = tuple(s for s in self._tracks.values() if s.start_frame <= frame_index)
        for s in started:
            if s.needs_prompt:
                try:
                    s.prompt.check_inside(width, height)
                except PromptError as exc:
                    raise TrackPromptError(
                        f"track {s.track_id}, frame {frame_index}: {exc}", s.track_id, frame_index
                    ) from None
        cfg = self.config
        features = (
            FrameFeatures(embedding.features, embedding.input_size, embedding.original_size)
            if cfg.memory
            else None
        )
        taken = [s.box for s in started if s.status is TrackStatus.ACTIVE and s.box is not None]
        decoded: list[TrackState] = []
        requests: list[DecodeRequest] = []
        owners: list[int] = []
        kinds: list[Kind] = []
        predicted: list[Motion | None] = []
        for s in started:
            motion = s.motion.predict(t) if cfg.motion and s.motion is not None else None
            made = self._requests(s, embedding, t, features, taken, motion)
            if made:
                decoded.append(s)
                predicted.append(motion)
                for kind, request in made:
                    requests.append(request)
                    owners.append(len(decoded) - 1)
                    kinds.append(kind)
        grid = self._grid(t, width, height)
        requests.extend(grid_requests(grid))
        found = self._detections(detections)
        requests.extend(detection_requests(found))
        return StepPlan(
            frame_index,
            (height, width),
            started,
            tuple(decoded),
            tuple(requests),
            tuple(owners),
            tuple(kinds),
            t,
            features,
            tuple(predicted),
            tuple(grid),
            tuple(embedding.input_size),  # type: ignore[arg-type]
            found,
        )

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
        judged: list[list[_Candidate]] = [[] for _ in plan.decoded]
        if batch is not None:
            for i, (owner, kind) in enumerate(zip(plan.owners, plan.kinds, strict=True)):
                state = plan.decoded[owner]
                judged[owner].append(
                    self._judge(
                        state, kind, batch.masks[i], float(batch.scores[i]), batch.logits[i], plan, owner
                    )
                )
        chosen = self._claim(plan, judged)
        outputs: dict[int, TrackResult] = {}
        for j, state in enumerate(plan.decoded):
            kinds = {c.kind for c in judged[j]}
            new, result, event = self._update(
                state, chosen.get(j), "search" in kinds, plan, plan.predicted[j]
            )
            self._tracks[state.track_id] = new
            outputs[state.track_id] = result
            if event is not None:
                events.append(event)
        results = []
        for s in plan.started:
            if s.track_id in outputs:
                results.append(outputs[s.track_id])
                continue
            new, event = self._not_decoded(s, plan)
            self._tracks[s.track_id] = new
            if event is not None:
                events.append(event)
            results.append(_empty_result(s.track_id, new.status, plan.size))
        if self._labels:  # before an ended track's label goes: its last result carries it too
            results = [replace(r, label=self._labels.get(r.track_id)) for r in results]
        events = self._end_discovered(events)
        if (plan.grid or plan.detections) and batch is not None:
            events += self._discover(plan, batch, results)
        self._last_frame = frame_index
        return results, events

    def snapshot(self, binary: bool = False) -> dict[str, Any]:
        """The whole tracking state as plain, JSON-serialisable data (see :meth:`restore`).

        With ``binary`` the tracks' arrays (logits, memory) are raw bytes rather than base64 (see
        :meth:`TrackState.to_dict`).
        """
        return {
            "version": SNAPSHOT_VERSION,
            "last_frame": self._last_frame,
            "tracks": [s.to_dict(binary) for s in self._tracks.values()],
            "pending_events": [{"kind": k, "track_id": t, "detail": d} for k, t, d in self._pending],
            "discovery": {
                "tracks": sorted(self._discovered),
                "at": self._discovered_at,
                "next_id": self._next_id,
                "on": self.discovering,
                "full": self._full,
                "labels": {str(tid): label for tid, label in sorted(self._labels.items())},
            },
        }

    def keep_only(self, owned: Callable[[int], bool]) -> None:
        """Drop, silently, every track (and its pending events) for which ``owned(id)`` is False:
        a tracker that follows a share of a job's tracks keeps its share of a restored snapshot."""
        self._tracks = {tid: s for tid, s in self._tracks.items() if owned(tid)}
        self._pending = [(k, tid, d) for k, tid, d in self._pending if owned(tid)]
        self._discovered = {tid for tid in self._discovered if owned(tid)}
        self._labels = {tid: label for tid, label in self._labels.items() if owned(tid)}

    def restore(self, data: Mapping[str, Any]) -> None:
        """Replace the whole state with a :meth:`snapshot` (of this version or an older one);
        raises :class:`InvalidInputError` if malformed."""
        if not isinstance(data, Mapping) or data.get("version") not in SNAPSHOT_VERSIONS:
            got = data.get("version") if isinstance(data, Mapping) else type(data).__name__
            versions = " or ".join(str(v) for v in SNAPSHOT_VERSIONS)
            raise InvalidInputError(f"expected a tracker snapshot of version {versions}, got {got!r}")
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
            found = data.get("discovery") or {}
            discovered = {int(t) for t in found.get("tracks", ())} & set(tracks)
            at = found.get("at")
            discovered_at = None if at is None else float(at)
            next_id = int(found.get("next_id", 1))
            discovering = bool(found.get("on", True))
            full = bool(found.get("full", False))
            labels = {int(t): str(v) for t, v in (found.get("labels") or {}).items() if int(t) in tracks}
        except InvalidInputError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed tracker snapshot: {exc!r}") from None
        self._tracks, self._pending, self._last_frame = tracks, pending, last_frame
        self._discovered, self._discovered_at, self._next_id = discovered, discovered_at, next_id
        self.discovering, self._full, self._labels = discovering, full, labels

    def _get(self, track_id: int) -> TrackState:
        try:
            return self._tracks[track_id]
        except KeyError:
            known = ", ".join(str(t) for t in self._tracks) or "none"
            raise InvalidInputError(f"no track {track_id} (tracks: {known})") from None

    # --- what a track asks of a frame ----------------------------------------------------------

    def _requests(
        self,
        state: TrackState,
        embedding: Embedding,
        time: float,
        features: FrameFeatures | None,
        taken: Sequence[MaskBox],
        predicted: Motion | None,
    ) -> list[tuple[Kind, DecodeRequest]]:
        """A track's requests on a frame: its prompt, its prediction, and the places it searches."""
        if state.needs_prompt or state.box is None:
            if state.status is TrackStatus.LOST and not state.needs_prompt:
                return []
            # multimask as Prompt.multimask says; a mask prompt's mask becomes the mask input
            return [("prompt", DecodeRequest.of(state.prompt, embedding, self.segmenter.low_res_size))]
        if state.status is TrackStatus.LOST:
            return []
        cfg = self.config
        if state.status is TrackStatus.ACTIVE:
            return [("follow", self._follow(state, embedding, features, predicted))]
        out: list[tuple[Kind, DecodeRequest]] = []
        since = time - (state.seen_at if state.seen_at is not None else time)
        limit = self._search_limit(state)
        if limit and since >= limit:
            return []  # gives up at commit
        coasting = since <= cfg.coast_s
        budget = cfg.search_candidates if cfg.search else 0
        follow_box: Box | None = None
        if coasting:
            request = self._follow(state, embedding, features, predicted)
            follow_box = request.prompt.box
            out.append(("follow", request))
            budget -= 1
        due = state.searched_at is None or time - state.searched_at >= cfg.search_interval_s
        if budget > 0 and due and state.memory is not None and features is not None and features.usable:
            sims = features.similarity(state.memory)
            floor = self._found_threshold(state.memory)
            avoid = [*taken, *([follow_box] if follow_box is not None else [])]
            for row, col, _ in features.peaks(sims, budget * 4, floor):
                x, y = features.cell_centre(row, col)
                if any(b[0] <= x < b[2] and b[1] <= y < b[3] for b in avoid):
                    continue
                out.append(("search", self._search(state, embedding, (x, y))))
                budget -= 1
                if budget == 0:
                    break
        return out

    def _follow(
        self,
        state: TrackState,
        embedding: Embedding,
        features: FrameFeatures | None,
        predicted: Motion | None,
    ) -> DecodeRequest:
        """The request that follows a track's object to where its motion predicts it."""
        cfg = self.config
        height, width = embedding.original_size
        assert state.box is not None  # callers check: a followed track has had a good frame
        box: Box = tuple(float(v) for v in state.box)  # type: ignore[assignment]
        spread = 0.0
        shift = (0, 0)
        if predicted is not None and state.motion is not None:
            box = predicted.box()
            spread = predicted.spread()
            # The logits move as the object is predicted to have moved since they were made (the
            # motion's own centres: a clipped box's centre is not the object's).
            shift = _shift_cells(state.motion.value[:2], predicted.value[:2], embedding)
        grown = grow_box(box, cfg.box_margin, cfg.min_margin, width, height, spread)
        points: tuple[Point, ...] = ()
        if cfg.add_peak_point and state.logits is not None:
            peak = peak_point(_shifted(state.logits, shift), embedding.input_size, embedding.original_size)
            points = (peak,) if peak is not None else ()
        elif features is not None and state.memory is not None and state.memory.clear and features.usable:
            # The place most like the object near the prediction (within one object size of the
            # box), if it is like enough: a positive point there (SAM-PT's point prompts, from the
            # memory), and the box moved onto it if it lies outside, so that a prediction that is
            # off (the object turned) still names the object, not what lies around it.
            side = max(box[2] - box[0], box[3] - box[1])
            window = grow_box(grown, 0.0, side, width, height)
            best = features.best_in(state.memory, window)
            if best is not None and best[2] >= self._found_threshold(state.memory):
                x, y = best[:2]
                points = ((x, y),)
                if not (grown[0] <= x < grown[2] and grown[1] <= y < grown[3]):
                    dx, dy = x - (grown[0] + grown[2]) / 2, y - (grown[1] + grown[3]) / 2
                    moved = (grown[0] + dx, grown[1] + dy, grown[2] + dx, grown[3] + dy)
                    grown = grow_box(moved, 0.0, 0.0, width, height)
        # The last mask, moved along, says where the object is only while the prediction is sure of
        # it: a new track's speed is unknown, and a coasting one's guess grows, so a mask input
        # then points at where the object was, not where it is.
        sure = spread <= SURE * min(box[2] - box[0], box[3] - box[1])
        mask_input = None
        if cfg.use_mask_input and state.logits is not None and sure:
            mask_input = _shifted(state.logits, shift)
        return DecodeRequest(Prompt(points, (POSITIVE,) * len(points), grown), mask_input, multimask=True)

    def _search(self, state: TrackState, embedding: Embedding, at: Point) -> DecodeRequest:
        """A request for the object at ``at``: a positive point there, in a box of its size."""
        cfg = self.config
        height, width = embedding.original_size
        w, h = _size_of(state)
        x, y = at
        box = grow_box(
            (x - w / 2, y - h / 2, x + w / 2, y + h / 2), cfg.box_margin, cfg.min_margin, width, height
        )
        point = (min(max(x, 0.0), float(width)), min(max(y, 0.0), float(height)))
        return DecodeRequest(Prompt((point,), (POSITIVE,), box), None, multimask=True)

    # --- what came back -------------------------------------------------------------------------

    def _judge(
        self,
        state: TrackState,
        kind: Kind,
        mask: np.ndarray,
        score: float,
        logits: np.ndarray,
        plan: StepPlan,
        owner: int,
    ) -> _Candidate:
        cfg = self.config
        box = mask_bbox(mask)
        area = 0 if box is None else int(np.count_nonzero(mask[box[1] : box[3], box[0] : box[2]]))
        vector = match = None
        purity = 0.0
        features = plan.features
        if features is not None and box is not None and features.usable:
            pooled = features.pool(logits)
            if pooled is not None:
                vector, purity = pooled
                if state.memory is not None and purity >= PURE:
                    match = state.memory.match(vector)
        predicted = plan.predicted[owner]
        agreement = 0.0 if box is None or predicted is None else _box_iou(box, predicted.box())
        # A prompt tried again (it found nothing before) ranks as a search: it does not take an
        # object another track holds.
        rank = 2 if kind == "prompt" and state.poor_frames else _RANK[kind]
        c = _Candidate(kind, mask, score, logits, box, area, match, vector, purity, agreement, rank)
        # min_score 0 asks for no score at all (random weights predict negative IoUs too).
        good = (cfg.min_score <= 0 or score >= cfg.min_score) and area >= cfg.min_area and box is not None
        if not good:
            return c
        if kind == "prompt":
            c.accepted = True
        elif state.status is TrackStatus.ACTIVE:  # following an object seen on the last frame
            c.accepted = match is None or match >= cfg.keep_match
        elif match is not None and state.memory is not None:  # re-finding: it must look like it
            c.accepted = match >= self._found_threshold(state.memory)
        elif kind == "follow" and predicted is not None and box is not None:  # no appearance:
            # where the motion expects it, and in sight: an object the motion puts out of the frame
            # cannot be seen, so a sliver at the edge is another one (its own return is re-found
            # by its look, once enough of it shows)
            c.accepted = predicted.distance(box) <= MOTION_GATE and _in_sight(predicted.box(), plan.size)
        return c

    def _found_threshold(self, memory: Memory) -> float:
        cfg = self.config
        return max(cfg.found_match, memory.typical - cfg.found_margin)

    def _claim(self, plan: StepPlan, judged: list[list[_Candidate]]) -> dict[int, _Candidate]:
        """Each decoded track's mask for the frame (by index in ``plan.decoded``), no two sharing a
        pixel: the most confident take theirs first (see the module's docstring)."""

        def confidence(item: tuple[int, _Candidate]) -> tuple[float, ...]:
            _, c = item
            return (c.rank, -(c.match if c.match is not None else 0.0), -c.agreement, -c.score)

        ranked = sorted(
            ((j, c) for j, cands in enumerate(judged) for c in cands if c.accepted), key=confidence
        )
        chosen: dict[int, _Candidate] = {}
        claimed: np.ndarray | None = None  # every chosen mask's pixels, made once two boxes meet
        for j, c in ranked:
            if j in chosen or c.box is None:
                continue
            if self.config.exclusive and any(_overlap(c.box, o.box) for o in chosen.values() if o.box):
                if claimed is None:
                    claimed = np.zeros(plan.size, dtype=bool)
                    for other in chosen.values():
                        _claim_pixels(claimed, other)
                x0, y0, x1, y1 = c.box
                taken = c.mask[y0:y1, x0:x1] & claimed[y0:y1, x0:x1]
                kept = c.area - int(np.count_nonzero(taken))
                if kept < CLAIM_KEEP * c.area or kept < self.config.min_area:
                    continue
                if kept < c.area:
                    mask = c.mask.copy()
                    mask[y0:y1, x0:x1] &= ~taken
                    c.mask, c.area, c.box = mask, kept, mask_bbox(mask)
            chosen[j] = c
            if claimed is not None:
                _claim_pixels(claimed, c)
        return chosen

    def _update(
        self,
        state: TrackState,
        found: _Candidate | None,
        searched: bool,
        plan: StepPlan,
        predicted: Motion | None,
    ) -> tuple[TrackState, TrackResult, TrackEvent | None]:
        cfg, t, frame_index = self.config, plan.time, plan.frame_index
        searched_at = t if searched else state.searched_at
        if found is not None:
            assert found.box is not None
            return self._found(state, found, plan, predicted)
        poor = state.poor_frames + 1
        seen_at = state.seen_at if state.seen_at is not None else t
        new = replace(
            state,
            status=TrackStatus.SEARCHING if state.status is not TrackStatus.LOST else TrackStatus.LOST,
            poor_frames=poor,
            last_score=0.0,
            seen_at=seen_at,
            searched_at=searched_at,
        )
        event = None
        limit = self._search_limit(state)
        if limit and t - seen_at >= limit:
            new = replace(new, status=TrackStatus.LOST, needs_prompt=False)
            event = _gave_up(state.track_id, frame_index, t - seen_at)
        elif poor == cfg.lost_after:
            what = "its prompt found nothing" if state.box is None else "its object was not found"
            event = TrackEvent(
                "lost",
                state.track_id,
                frame_index,
                f"{what} on {poor} frames in a row; searching",
                {"frames": poor},
            )
        return new, _empty_result(state.track_id, new.status, plan.size), event

    def _found(
        self, state: TrackState, c: _Candidate, plan: StepPlan, predicted: Motion | None
    ) -> tuple[TrackState, TrackResult, TrackEvent | None]:
        cfg, t = self.config, plan.time
        assert c.box is not None
        box = c.box
        motion = state.motion
        if cfg.motion:
            near = predicted is not None and t - predicted.seen <= cfg.coast_s and c.kind != "prompt"
            if near and predicted is not None:
                far = c.kind == "search" and predicted.distance(box) > MOTION_GATE
                motion = Motion.start(box, t) if far else predicted.update(box)
            else:
                motion = Motion.start(box, t)
        memory = state.memory
        if cfg.memory and c.vector is not None:
            if memory is None:
                if c.purity >= PURE:
                    memory = Memory.start(c.vector, plan.frame_index, c.area, c.purity)
            elif c.match is not None and memory.whole(c.area, c.purity):
                memory = memory.remember(
                    c.vector, plan.frame_index, c.match, c.area, cfg.memory_size, cfg.memory_novelty
                )
        event = None
        if state.poor_frames >= cfg.lost_after or state.status is TrackStatus.LOST:
            needed = (
                self._found_threshold(state.memory)
                if state.memory is not None and c.kind != "prompt"
                else None
            )
            how = (
                f"match {c.match:.3f} (needed {needed:.3f}), "
                if c.match is not None and needed is not None
                else ""
            )
            event = TrackEvent(
                "found",
                state.track_id,
                plan.frame_index,
                f"at {list(box)}: {how}score {c.score:.3f}, area {c.area}, after {state.poor_frames} frames",
                {
                    "box": list(box),
                    "score": c.score,
                    "match": c.match,
                    "needed": needed,
                    "frames": state.poor_frames,
                    "by": c.kind,
                },
            )
        kept = np.array(c.logits, dtype=np.float32, copy=True)
        kept.setflags(write=False)
        new = replace(
            state,
            status=TrackStatus.ACTIVE,
            logits=kept,
            box=box,
            poor_frames=0,
            last_score=c.score,
            needs_prompt=False,
            motion=motion if cfg.motion else None,
            memory=memory,
            seen_at=t,
            searched_at=None,
        )
        return new, TrackResult(state.track_id, TrackStatus.ACTIVE, c.score, box, c.mask), event

    def _not_decoded(self, state: TrackState, plan: StepPlan) -> tuple[TrackState, TrackEvent | None]:
        """A started track with no request this frame: lost, or a searching one out of time."""
        if state.status is TrackStatus.SEARCHING:
            seen_at = state.seen_at if state.seen_at is not None else plan.time
            limit = self._search_limit(state)
            if limit and plan.time - seen_at >= limit:
                new = replace(state, status=TrackStatus.LOST, needs_prompt=False)
                return new, _gave_up(state.track_id, plan.frame_index, plan.time - seen_at)
            return replace(state, poor_frames=state.poor_frames + 1), None
        return state, None

    # --- discovery ------------------------------------------------------------------------------

    def _search_limit(self, state: TrackState) -> float:
        """Seconds a track searches before it gives up (0: never); a discovered track gives up
        (and ends) after the discovery's ``forget_s`` at most."""
        limit = self.config.search_s
        forget = self.discovery.forget_s if self.discovery is not None else 0.0
        if forget and state.track_id in self._discovered:
            limit = min(limit, forget) if limit else forget
        return limit

    def _grid(self, time: float, width: int, height: int) -> list[tuple[float, float]]:
        """The discovery grid's points, if this frame is a discovery frame (else none)."""
        cfg = self.discovery
        if cfg is None or not self.discovering or cfg.detector is not None:
            return []
        if self._discovered_at is not None and time - self._discovered_at < cfg.every_s - 1e-9:
            return []
        return grid_points(width, height, cfg)

    def _detections(self, detections: Sequence[Any] | None) -> tuple[Any, ...]:
        """A detection frame's boxes, if this job discovers with a detector and is not paused."""
        cfg = self.discovery
        if cfg is None or cfg.detector is None or not self.discovering or detections is None:
            return ()
        return tuple(detections)

    def _end_discovered(self, events: list[TrackEvent]) -> list[TrackEvent]:
        """Discovered tracks that gave up end: ``ended`` in place of ``gave_up``, and they go."""
        ended = {tid for tid in self._discovered if self._tracks[tid].status is TrackStatus.LOST}
        if not ended:
            return events
        out = []
        for e in events:
            if e.kind == "gave_up" and e.track_id in ended:
                seconds = (e.data or {}).get("seconds", 0.0)
                e = replace(e, kind="ended", detail=f"not seen for {seconds:.1f} s: its object has gone")
            out.append(e)
        for tid in sorted(ended):
            del self._tracks[tid]
            self._discovered.discard(tid)
            self._labels.pop(tid, None)
        self._full = False
        return out

    def _discover(self, plan: StepPlan, batch: MaskBatch, results: Sequence[TrackResult]) -> list[TrackEvent]:
        """Start a track for each object the frame's grid found that no track holds or seeks."""
        cfg = self.discovery
        assert cfg is not None
        self._discovered_at = plan.time
        n = len(plan.owners)
        logits = batch.logits[n:]
        grid = Grid(plan.input_size, plan.size)
        held = np.zeros(plan.size, dtype=bool)
        for r in results:
            if r.status is TrackStatus.ACTIVE and r.box is not None:
                x0, y0, x1, y1 = r.box
                held[y0:y1, x0:x1] |= r.mask[y0:y1, x0:x1]
        # Tracks whose object is not held this frame: a candidate like one of them is that object.
        sought = [
            s for s in self._tracks.values() if s.status is not TrackStatus.ACTIVE and s.memory is not None
        ]
        events: list[TrackEvent] = []
        if plan.detections:
            candidates = detected(plan.detections, logits, grid, cfg)
        else:
            candidates = select(plan.grid, batch.scores[n:], logits, grid, cfg)
        for c in candidates:
            if len(self._discovered) >= cfg.max_tracks:
                if not self._full:  # once, until a discovered track ends
                    detail = f"{cfg.max_tracks} discovered tracks follow their objects, the most allowed: new objects wait"
                    events.append(
                        TrackEvent(
                            "discovery_full", 0, plan.frame_index, detail, {"max_tracks": cfg.max_tracks}
                        )
                    )
                    self._full = True
                break
            ys, xs = grid.pixels(c.rows, c.cols)
            if np.count_nonzero(held[ys, xs]) > cfg.covered * len(ys):
                continue
            owner = self._sought(plan, logits[c.index], sought)
            if owner is not None:
                self._hand_over(owner, c, plan.frame_index)
                sought = [s for s in sought if s.track_id != owner.track_id]
            else:
                events.append(self._start_discovered(c, plan.frame_index))
            held[ys, xs] = True  # its cells: a later candidate on them is this object
        return events

    def _start_discovered(self, c: Candidate, frame_index: int) -> TrackEvent:
        """A new track for a candidate, from the next frame, with an id never used in the job."""
        tid = self._next_id = max(self._next_id, max(self._tracks, default=0) + 1)
        self._next_id += 1
        x0, y0, x1, y1 = c.box
        prompt = Prompt((c.point,), (POSITIVE,), (float(x0), float(y0), float(x1), float(y1)))
        self._tracks[tid] = TrackState(tid, prompt, start_frame=frame_index + 1)
        self._discovered.add(tid)
        data = {"box": list(c.box), "point": list(c.point), "score": c.score,
                "stability": c.stability, "area": c.area, "by": c.by}  # fmt: skip
        by = "the grid"
        if c.label is not None:
            self._labels[tid] = data["label"] = c.label
            by = f"the detector as {c.label!r}"
        detail = f"found at {list(c.box)} by {by} (score {c.score:.3f}, area {c.area})"
        return TrackEvent("discovered", tid, frame_index, detail, data)

    def _sought(self, plan: StepPlan, logits: np.ndarray, sought: Sequence[TrackState]) -> TrackState | None:
        """The track, of those that do not hold their object now, whose object a candidate is (it
        looks like it as well as a re-find needs; the best match), or None."""
        features = plan.features
        if not sought or features is None or not features.usable:
            return None
        pooled = features.pool(logits)
        if pooled is None or pooled[1] < PURE:
            return None
        best, best_match = None, -math.inf
        for s in sought:
            assert s.memory is not None
            match = s.memory.match(pooled[0])
            if match >= self._found_threshold(s.memory) and match > best_match:
                best, best_match = s, match
        return best

    def _hand_over(self, state: TrackState, c: Candidate, frame_index: int) -> None:
        """A track's object, found by discovery: the track is prompted there on the next frame (its
        memory kept, so its ``found`` event says how well it matched), not a second track."""
        x0, y0, x1, y1 = c.box
        prompt = Prompt((c.point,), (POSITIVE,), (float(x0), float(y0), float(x1), float(y1)))
        status = TrackStatus.SEARCHING if state.status is TrackStatus.LOST else state.status
        self._tracks[state.track_id] = replace(
            state, prompt=prompt, needs_prompt=True, status=status, logits=None, box=None, motion=None,
            start_frame=min(state.start_frame, frame_index + 1), seen_at=None, searched_at=None,
        )  # fmt: skip

    def _check_batch(self, batch: MaskBatch, count: int, size: tuple[int, int]) -> None:
        low = self.segmenter.low_res_size
        expected = {"masks": (count, *size), "scores": (count,), "logits": (count, low, low)}
        for name, shape in expected.items():
            got = getattr(batch, name).shape
            if tuple(got) != shape:
                raise RuntimeError(
                    f"segmenter returned {name} of shape {tuple(got)} for {count} requests, expected {shape}"
                )


def feed_time(index: int, pts: float | None, capture_time: float, live: bool) -> float:
    """A frame's time as the tracker reads it: a live frame's capture time (a feed's timestamps
    restart when it reconnects), a file frame's presentation time, or ``index / DEFAULT_FPS`` for a
    file whose frames carry none."""
    if live:
        return capture_time
    return pts if pts is not None else index / DEFAULT_FPS


def grow_box(
    box: MaskBox | Box, margin: float, min_margin: float, width: int, height: int, spread: float = 0.0
) -> Box:
    """``box`` grown each side by ``margin`` of its size (>= ``min_margin`` px) and by ``spread``
    pixels (the prediction's uncertainty; at most :data:`MAX_GROWTH` of the side), clipped to the
    frame. A box wholly outside the frame is kept at least a pixel inside its nearest edge."""
    x0, y0, x1, y1 = (float(v) for v in box)
    mx = max(margin * (x1 - x0), min_margin) + min(spread, MAX_GROWTH * (x1 - x0))
    my = max(margin * (y1 - y0), min_margin) + min(spread, MAX_GROWTH * (y1 - y0))
    gx0, gy0 = min(max(0.0, x0 - mx), width - 1.0), min(max(0.0, y0 - my), height - 1.0)
    gx1, gy1 = max(min(float(width), x1 + mx), gx0 + 1.0), max(min(float(height), y1 + my), gy0 + 1.0)
    return (gx0, gy0, gx1, gy1)


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


def _gave_up(track_id: int, frame_index: int, seconds: float) -> TrackEvent:
    detail = f"not seen for {seconds:.1f} s: it stops searching (re-prompt it to follow again)"
    return TrackEvent("gave_up", track_id, frame_index, detail, {"seconds": seconds})


def _empty_result(track_id: int, status: TrackStatus, size: tuple[int, ...]) -> TrackResult:
    return TrackResult(track_id, status, 0.0, None, np.zeros(size, dtype=bool))


def _in_sight(box: Box, size: tuple[int, int]) -> bool:
    """Whether at least half of ``box`` lies in a frame of ``size`` (H, W)."""
    height, width = size
    area = (box[2] - box[0]) * (box[3] - box[1])
    inside = max(0.0, min(box[2], width) - max(box[0], 0.0)) * max(
        0.0, min(box[3], height) - max(box[1], 0.0)
    )
    return area > 0 and inside >= IN_SIGHT * area


def _box_iou(a: MaskBox | Box, b: MaskBox | Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _claim_pixels(claimed: np.ndarray, c: _Candidate) -> None:
    """Add a chosen mask's pixels (all inside its box) to ``claimed``."""
    assert c.box is not None
    x0, y0, x1, y1 = c.box
    claimed[y0:y1, x0:x1] |= c.mask[y0:y1, x0:x1]


def _overlap(a: MaskBox, b: MaskBox) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _size_of(state: TrackState) -> tuple[float, float]:
    """The object's (w, h) as last known: the motion's size, else the last box's."""
    if state.motion is not None:
        return state.motion.value[2], state.motion.value[3]
    assert state.box is not None
    return float(state.box[2] - state.box[0]), float(state.box[3] - state.box[1])


def _shift_cells(before: Sequence[float], after: Sequence[float], embedding: Embedding) -> tuple[int, int]:
    """How many low-resolution cells (rows, cols) a centre moved from ``before`` to ``after``
    ((x, y), original-frame pixels)."""
    height, width = embedding.original_size
    h, w = embedding.input_size
    dx = float(after[0] - before[0]) * w / width / LOW_RES_STRIDE
    dy = float(after[1] - before[1]) * h / height / LOW_RES_STRIDE
    return round(dy), round(dx)


def _shifted(logits: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """``logits`` moved by (rows, cols) cells, the uncovered cells filled with their lowest value."""
    dy, dx = shift
    if dy == 0 and dx == 0:
        return logits
    n, m = logits.shape
    out = np.full_like(logits, float(logits.min()))
    if abs(dy) < n and abs(dx) < m:
        out[max(dy, 0) : n + min(dy, 0), max(dx, 0) : m + min(dx, 0)] = logits[
            max(-dy, 0) : n - max(dy, 0), max(-dx, 0) : m - max(dx, 0)
        ]
    out.setflags(write=False)
    return out
