"""Discovery: objects found without a prompt, by MobileSAM's "segment everything" on frames the
encoder has already made embeddings of.

Every ``every_s`` seconds of the feed's own time, a grid of single positive points (``grid`` a side,
over the region of interest or the whole frame) is decoded on that frame's embedding, in the same
decode call as the tracks' requests: no extra encode. As MobileSAM's automatic mask generator does,
a candidate is kept only if its predicted IoU reaches ``min_score`` and its *stability* (the IoU of
the mask thresholded at ``+offset`` and at ``-offset`` of its logits) reaches ``min_stability``;
overlapping candidates are suppressed by box IoU (``nms_iou``), the best scored kept. A kept
candidate starts a new track when:

* its area is within ``min_area`` pixels and ``max_area`` (a share of the frame), and its box's
  centre lies in the region of interest;
* no track holds it already (at most ``covered`` of its pixels under this frame's masks);
* it is not the object of a track that searches for it (its features match that track's memory as
  well as a re-find would need): the track's own search takes it, so one object never gets two
  tracks;
* fewer than ``max_tracks`` discovered tracks are alive.

With a ``detector`` (an ONNX model the user brings, :mod:`pipeline.model.detector`), the candidates
are its boxes instead of the grid's: the job's source host runs it on one frame every ``every_s``
seconds of the feed (:func:`detection_frame`), each kept box (``classes``, ``detector_score``) is
decoded as a box prompt on that frame's embedding, and its mask is held to the same limits; the new
track carries the box's class as its ``label``.

A discovered track is prompted with the candidate's box and a point at its mask's centre (if that
lies on the mask; else the grid point that found it), from the next frame on. It ends by itself when it has searched ``forget_s`` seconds without its object (or the
tracking's ``search_s``, if that is set and shorter): a ``ended`` event, and its id is never used
again in the job. Every decision depends only on the frames and the state a snapshot holds, so a
resumed job discovers the same tracks on the same frames.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from pipeline.errors import InvalidInputError
from pipeline.model.types import DecodeRequest
from pipeline.prompts import POSITIVE, Box, Prompt
from pipeline.tracking.state import check_int

MAX_GRID = 64  # points a side: 4096 decodes a discovery frame at most
GPU_GRID, CPU_GRID = 16, 8  # the grid when none is given: a CPU decodes each point ~25 ms at 1024
STABILITY_OFFSET = 1.0  # logits: MobileSAM's automatic mask generator's stability_score_offset
LOW = 4  # encoder-input pixels a low-resolution logit spans


@dataclass(frozen=True)
class DiscoveryConfig:
    """How a job finds objects by itself (see the module's docstring).

    Attributes:
        every_s: seconds of the feed's time between two discovery frames.
        grid: points a side of the grid decoded on a discovery frame (grid² decodes); None: 16
            where the model runs on a GPU, 8 on a CPU (see :meth:`for_device`).
        min_score: least predicted IoU of a candidate (0: any; random weights predict anything).
        min_stability: least stability of a candidate, in [0, 1] (0: any).
        nms_iou: candidates whose boxes overlap more than this (IoU) keep only the best scored.
        min_area: least pixels of a candidate.
        max_area: most of the frame a candidate covers (a share in (0, 1]): the background is not
            an object.
        roi: the region of interest, XYXY pixels of the frame (None: the whole frame): the grid
            covers it, and a candidate's box centre must lie in it.
        max_tracks: most discovered tracks alive at once.
        covered: a candidate with more than this share of its pixels under the frame's track masks
            is held already.
        forget_s: seconds a discovered track searches for its object before it ends.
        detector: an ONNX detector file whose boxes are the candidates instead of the grid's
            (None: the grid).
        classes: with a detector, only objects of these classes get tracks (None: every class).
        detector_score: with a detector, the least score of a box.
    """

    every_s: float = 1.0
    grid: int | None = None
    min_score: float = 0.85
    min_stability: float = 0.9
    nms_iou: float = 0.7
    min_area: int = 64
    max_area: float = 0.25
    roi: Box | None = None
    max_tracks: int = 16
    covered: float = 0.5
    forget_s: float = 5.0
    detector: str | None = None
    classes: tuple[str, ...] | None = None
    detector_score: float = 0.25

    def __post_init__(self) -> None:
        names = ("every_s", "min_score", "min_stability", "nms_iou", "max_area", "covered", "forget_s",
                 "detector_score")  # fmt: skip
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidInputError(f"discovery {name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.every_s <= 0:
            raise InvalidInputError(f"discovery every_s must be > 0 seconds, got {self.every_s:g}")
        if self.forget_s < 0:
            raise InvalidInputError(f"discovery forget_s must be >= 0 seconds, got {self.forget_s:g}")
        for name in ("min_score", "min_stability", "nms_iou", "covered", "detector_score"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidInputError(f"discovery {name} must be in [0, 1], got {getattr(self, name):g}")
        if not 0 < self.max_area <= 1:
            raise InvalidInputError(
                f"discovery max_area must be a share of the frame in (0, 1], got {self.max_area:g}"
            )
        if self.grid is not None:
            check_int("discovery grid", self.grid, 1, MAX_GRID)
        check_int("discovery min_area", self.min_area, 0)
        check_int("discovery max_tracks", self.max_tracks, 1)
        if self.roi is not None:
            try:
                x0, y0, x1, y1 = (float(v) for v in self.roi)
            except (TypeError, ValueError):
                raise InvalidInputError(f"discovery roi must be [x0, y0, x1, y1], got {self.roi!r}") from None
            if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or not (0 <= x0 < x1 and 0 <= y0 < y1):
                raise InvalidInputError(
                    f"discovery roi must be [x0, y0, x1, y1] with 0 <= x0 < x1 and 0 <= y0 < y1, got {list(self.roi)}"
                )
            object.__setattr__(self, "roi", (x0, y0, x1, y1))
        self._check_detector()

    def _check_detector(self) -> None:
        if self.detector is not None and (not isinstance(self.detector, str) or not self.detector.strip()):
            raise InvalidInputError(f"discovery detector must be a file name, got {self.detector!r}")
        if self.classes is not None:
            if isinstance(self.classes, str) or not all(isinstance(c, str) and c for c in self.classes):
                raise InvalidInputError(
                    f"discovery classes must be a list of class names, got {self.classes!r}"
                )
            if not self.classes:
                raise InvalidInputError("discovery classes must name at least one class (or be left out)")
            object.__setattr__(self, "classes", tuple(self.classes))
            if self.detector is None:
                raise InvalidInputError(
                    "discovery classes need a detector (the grid finds objects of no class)"
                )
        if self.detector is not None and self.grid is not None:
            raise InvalidInputError("discovery takes a grid or a detector, not both")

    def for_device(self, gpu: bool) -> DiscoveryConfig:
        """The settings with the grid chosen for where the model runs, when none was given."""
        if self.grid is not None or self.detector is not None:
            return self
        return replace(self, grid=GPU_GRID if gpu else CPU_GRID)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["roi"] = None if self.roi is None else list(self.roi)
        out["classes"] = None if self.classes is None else list(self.classes)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | bool | None) -> DiscoveryConfig:
        """From a spec's ``discover`` (``true``: the defaults; a mapping: those fields).

        Raises:
            InvalidInputError: an unknown field or a bad value, naming it.
        """
        if data is True or data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"discover must be true or a mapping of settings, got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(
                f"unknown discovery setting(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(known))}"
            )
        values = dict(data)
        if values.get("roi") is not None and not isinstance(values["roi"], (list, tuple)):
            raise InvalidInputError(f"discovery roi must be [x0, y0, x1, y1], got {values['roi']!r}")
        if values.get("roi") is not None:
            values["roi"] = tuple(values["roi"])
        if isinstance(values.get("classes"), list):
            values["classes"] = tuple(values["classes"])
        return cls(**values)


@dataclass(frozen=True)
class Candidate:
    """An object a discovery frame found, kept (not yet checked against the tracks).

    Attributes:
        point: where its track is prompted, (x, y) frame pixels: its mask's centre, or the grid
            point that found it where the centre is off the mask.
        box: its mask's box, XYXY exclusive, frame pixels.
        score: its predicted IoU.
        stability: its stability (see the module's docstring).
        area: its pixels (as its low-resolution mask counts them).
        index: its request's index among the discovery frame's grid requests.
        rows, cols: its low-resolution mask's cells (see :class:`Grid`).
        by: what found it: ``grid`` or ``detector``.
        label: the detector's class of it (None: the grid's).
    """

    point: tuple[float, float]
    box: tuple[int, int, int, int]
    score: float
    stability: float
    area: int
    index: int
    rows: np.ndarray
    cols: np.ndarray
    by: str = "grid"
    label: str | None = None


@dataclass(frozen=True)
class Grid:
    """Where the low-resolution logits lie on the frame: the cells of the resized frame (the
    padding aside), ``LOW`` encoder pixels a side.

    Attributes:
        input_size: (h, w) of the frame resized for the encoder.
        original_size: (H, W) of the frame.
    """

    input_size: tuple[int, int]
    original_size: tuple[int, int]

    @property
    def cells(self) -> tuple[int, int]:
        """Rows and columns of the logits that lie on the picture."""
        return math.ceil(self.input_size[0] / LOW), math.ceil(self.input_size[1] / LOW)

    @property
    def step(self) -> tuple[float, float]:
        """Frame pixels a cell spans, (x, y)."""
        return LOW * self.original_size[1] / self.input_size[1], LOW * self.original_size[
            0
        ] / self.input_size[0]

    def pixels(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The frame pixels (y, x) under the cells' centres."""
        sx, sy = self.step
        height, width = self.original_size
        ys = np.minimum(((rows + 0.5) * sy).astype(np.int64), height - 1)
        xs = np.minimum(((cols + 0.5) * sx).astype(np.int64), width - 1)
        return ys, xs


def grid_points(width: int, height: int, config: DiscoveryConfig) -> list[tuple[float, float]]:
    """The grid's points, row by row: cell centres over the region of interest (clipped to the
    frame) or the whole frame."""
    x0, y0, x1, y1 = config.roi if config.roi is not None else (0.0, 0.0, float(width), float(height))
    x1, y1 = min(x1, float(width)), min(y1, float(height))
    if x0 >= x1 or y0 >= y1:
        return []
    n = config.grid or CPU_GRID
    xs = [x0 + (i + 0.5) * (x1 - x0) / n for i in range(n)]
    ys = [y0 + (j + 0.5) * (y1 - y0) / n for j in range(n)]
    return [(x, y) for y in ys for x in xs]


def grid_requests(points: Sequence[tuple[float, float]]) -> list[DecodeRequest]:
    """One request a point: a single positive point, the best of SAM's three masks, judged by its
    low-resolution logits (no frame-sized mask)."""
    return [DecodeRequest(Prompt((p,), (POSITIVE,)), None, multimask=True, low_res_only=True) for p in points]


def detection_requests(detections: Sequence[Any]) -> list[DecodeRequest]:
    """One request a detector's box: the box as the prompt, SAM's single mask, judged by its
    low-resolution logits."""
    return [DecodeRequest(Prompt(box=tuple(d.box)), None, low_res_only=True) for d in detections]


def stability(logits: np.ndarray, offset: float = STABILITY_OFFSET) -> float:
    """IoU of ``logits > offset`` and ``logits > -offset`` (1: the mask's edge is sharp); 0 for an
    empty mask."""
    loose = int(np.count_nonzero(logits > -offset))
    return int(np.count_nonzero(logits > offset)) / loose if loose else 0.0


def select(
    points: Sequence[tuple[float, float]],
    scores: np.ndarray,
    logits: np.ndarray,
    grid: Grid,
    config: DiscoveryConfig,
) -> list[Candidate]:
    """The grid's candidates that pass the score, stability, area and region limits, overlapping
    ones suppressed, best scored first. Judged on the low-resolution logits (``logits``: (K, S/4,
    S/4)), their boxes and areas brought to the frame's pixels."""
    height, width = grid.original_size
    most = config.max_area * height * width
    n_rows, n_cols = grid.cells
    sx, sy = grid.step
    kept: list[Candidate] = []
    order = sorted(range(len(points)), key=lambda i: (-float(scores[i]), i))
    for i in order:
        score = float(scores[i])
        if config.min_score > 0 and score < config.min_score:
            continue
        valid = logits[i][:n_rows, :n_cols]
        steady = stability(valid)
        if steady < config.min_stability:
            continue
        rows, cols = np.nonzero(valid > 0)
        if rows.size == 0:
            continue
        area = round(rows.size * sx * sy)
        box = (
            int(cols.min() * sx),
            int(rows.min() * sy),
            min(width, math.ceil((cols.max() + 1) * sx)),
            min(height, math.ceil((rows.max() + 1) * sy)),
        )
        if area < config.min_area or area > most or not _centre_in(box, config.roi):
            continue
        if any(box_iou(box, k.box) > config.nms_iou for k in kept):
            continue
        point = _inside(valid, rows, cols, grid, points[i])
        kept.append(Candidate(point, box, score, steady, area, i, rows, cols))
    return kept


def detected(
    detections: Sequence[Any], logits: np.ndarray, grid: Grid, config: DiscoveryConfig
) -> list[Candidate]:
    """The detector's boxes (best scored first, each decoded as a box prompt: ``logits``) whose
    masks pass the area and region limits, overlapping ones suppressed (any class)."""
    height, width = grid.original_size
    most = config.max_area * height * width
    n_rows, n_cols = grid.cells
    sx, sy = grid.step
    kept: list[Candidate] = []
    for i, d in enumerate(detections):
        valid = logits[i][:n_rows, :n_cols]
        rows, cols = np.nonzero(valid > 0)
        if rows.size == 0:
            continue
        area = round(rows.size * sx * sy)
        x0, y0, x1, y1 = d.box
        box = (int(x0), int(y0), min(width, math.ceil(x1)), min(height, math.ceil(y1)))
        if area < config.min_area or area > most or not _centre_in(box, config.roi):
            continue
        if any(box_iou(box, k.box) > config.nms_iou for k in kept):
            continue
        centre = ((x0 + x1) / 2, (y0 + y1) / 2)
        point = _inside(valid, rows, cols, grid, centre)
        kept.append(
            Candidate(point, box, float(d.score), stability(valid), area, i, rows, cols, "detector", d.label)
        )
    return kept


def detection_frame(time: float, before: float | None, every_s: float) -> bool:
    """Whether a frame at ``time`` s is a detection frame: the first, or the first of a new
    ``every_s`` slot of the feed's time (``before``: the time of the frame before it)."""
    return before is None or math.floor(time / every_s + 1e-9) > math.floor(before / every_s + 1e-9)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two XYXY boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _inside(
    valid: np.ndarray, rows: np.ndarray, cols: np.ndarray, grid: Grid, found_at: tuple[float, float]
) -> tuple[float, float]:
    """The centre of the mask's cells where it lies on the mask (a point well inside an object,
    which a moving object does not leave by the next frame), else the grid point that found it."""
    r, c = int(rows.mean()), int(cols.mean())
    if valid[r, c] <= 0:
        return found_at
    ys, xs = grid.pixels(np.array([r]), np.array([c]))
    return (float(xs[0]) + 0.5, float(ys[0]) + 0.5)


def _centre_in(box: Sequence[int], roi: Box | None) -> bool:
    if roi is None:
        return True
    x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return roi[0] <= x < roi[2] and roi[1] <= y < roi[3]
