"""Tracking quality as DAVIS defines it: region similarity J and boundary F-measure, per object.

For semi-supervised video object segmentation (DAVIS 2017), each object of a sequence is scored on
every frame but the first (whose mask is given) and the last, then averaged over frames; the
dataset's J, F and J&F are the means over every object of every sequence (J&F the mean of the two),
reported in percent:

* **J** of a frame: the IoU of the predicted and true masks, 1 when both are empty.
* **F** of a frame: the F-measure of the two masks' boundaries, a boundary pixel matching when the
  other boundary lies within ``ceil(0.008 * the image's diagonal)`` pixels of it (the DAVIS disk).
  Boundaries are DAVIS's ``seg2bmap`` of each mask; precision is 1 and recall 0 for an empty
  prediction of a non-empty truth, the reverse for the reverse, and both 1 when both are empty.

An object is scored from the first evaluated frame where it appears in the truth or the prediction,
and counted in the totals if it appears in the truth; this follows the ``vos-benchmark`` evaluator
(``davis2017-evaluation``'s formulas, run frame by frame), whose numbers the tests compare with.
Pure numpy: the disk dilation is done row by row on the boundaries' bounding box.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

BOUNDARY = 0.008  # DAVIS's boundary tolerance, a share of the image's diagonal


@dataclass
class SequenceScore:
    """One sequence's scores: each object's mean J and F over the evaluated frames (0 to 1)."""

    name: str
    j: dict[int, float] = field(default_factory=dict)
    f: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetScore:
    """A dataset's J, F and J&F (0 to 1): means over every object of every sequence."""

    j: float
    f: float
    jf: float
    objects: int


def region_similarity(mask: np.ndarray, truth: np.ndarray) -> float:
    """J of one frame: the IoU of two (H, W) bool masks, 1 when both are empty."""
    inter = int(np.count_nonzero(mask & truth))
    total = int(np.count_nonzero(mask)) + int(np.count_nonzero(truth))
    return 1.0 if total == 0 else inter / (total - inter)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """DAVIS's ``seg2bmap``: the mask's boundary, one pixel wide, offset half a pixel towards the
    origin."""
    seg = mask.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def dilate_disk(bmap: np.ndarray, radius: int) -> np.ndarray:
    """``bmap`` dilated by a disk of ``radius`` (the pixels (dy, dx) with dy² + dx² <= radius²,
    as ``skimage.morphology.disk``); outside the image counts as empty."""
    out = np.zeros_like(bmap, dtype=bool)
    ys, xs = np.nonzero(bmap)
    if ys.size == 0:
        return out
    h, w = bmap.shape
    y0, y1 = max(int(ys.min()) - radius, 0), min(int(ys.max()) + radius + 1, h)
    x0, x1 = max(int(xs.min()) - radius, 0), min(int(xs.max()) + radius + 1, w)
    part = bmap[y0:y1, x0:x1]
    rows, cols = part.shape
    # Each row of the disk is a horizontal run of half-width floor(sqrt(r² - dy²)): dilate the rows
    # by each such width once (a running sum), then move them up and down.
    padded = np.concatenate((np.zeros((rows, 1), np.int32), np.cumsum(part, axis=1, dtype=np.int32)), axis=1)
    widened: dict[int, np.ndarray] = {}
    result = np.zeros_like(part, dtype=bool)
    for dy in range(-radius, radius + 1):
        half = math.isqrt(radius * radius - dy * dy)
        if half not in widened:
            lo = np.clip(np.arange(cols) - half, 0, cols)
            hi = np.clip(np.arange(cols) + half + 1, 0, cols)
            widened[half] = (padded[:, hi] - padded[:, lo]) > 0
        wide = widened[half]
        if abs(dy) >= rows:
            continue
        if dy >= 0:
            result[dy:] |= wide[: rows - dy]
        else:
            result[:dy] |= wide[-dy:]
    out[y0:y1, x0:x1] = result
    return out


def boundary_f(mask: np.ndarray, truth: np.ndarray, bound: float = BOUNDARY) -> float:
    """F of one frame: the boundary F-measure of two (H, W) bool masks (see the module)."""
    radius = math.ceil(bound * math.hypot(*mask.shape))
    mask_b, truth_b = boundary_map(mask), boundary_map(truth)
    n_fg, n_gt = int(np.count_nonzero(mask_b)), int(np.count_nonzero(truth_b))
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.count_nonzero(mask_b & dilate_disk(truth_b, radius)) / n_fg
        recall = np.count_nonzero(truth_b & dilate_disk(mask_b, radius)) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


class SequenceScorer:
    """Scores a sequence frame by frame (the first and last frames left out by the caller)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._seen: set[int] = set()
        self._in_truth: set[int] = set()
        self._j: dict[int, list[float]] = {}
        self._f: dict[int, list[float]] = {}

    def add(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        """One evaluated frame: (H, W) label maps, 0 the background, k > 0 object k."""
        present = {int(v) for v in np.unique(truth) if v != 0}
        self._in_truth |= present
        self._seen |= present | {int(v) for v in np.unique(prediction) if v != 0}
        for obj in sorted(self._seen):
            m, t = prediction == obj, truth == obj
            self._j.setdefault(obj, []).append(region_similarity(m, t))
            self._f.setdefault(obj, []).append(boundary_f(m, t))

    def result(self) -> SequenceScore:
        """Each object of the truth's mean J and F."""
        objects = sorted(self._in_truth)
        return SequenceScore(
            self.name,
            {o: float(np.mean(self._j[o])) for o in objects},
            {o: float(np.mean(self._f[o])) for o in objects},
        )


def score_sequence(name: str, frames: Iterable[tuple[np.ndarray, np.ndarray]]) -> SequenceScore:
    """Score a sequence from its evaluated frames, each a pair of label maps (prediction, truth)."""
    scorer = SequenceScorer(name)
    for prediction, truth in frames:
        scorer.add(prediction, truth)
    return scorer.result()


def score_dataset(sequences: Iterable[SequenceScore]) -> DatasetScore:
    """J, F and J&F over every object of every sequence."""
    scores = list(sequences)
    j = [v for s in scores for v in s.j.values()]
    f = [v for s in scores for v in s.f.values()]
    if not j:
        return DatasetScore(float("nan"), float("nan"), float("nan"), 0)
    mean_j, mean_f = float(np.mean(j)), float(np.mean(f))
    return DatasetScore(mean_j, mean_f, (mean_j + mean_f) / 2, len(j))
