"""Where a track's object is now: a constant-velocity Kalman filter on its box, in frame time.

The state is the box's centre and size and their rates, ``(cx, cy, w, h, vx, vy, vw, vh)``, in
original-frame pixels and pixels per second. Time is the frames' own (presentation timestamps of a
file, capture times of a live feed), so a stride, a dropped live frame or a variable frame rate is
just a longer step: the prediction moves the box by velocity × the time that passed, and its
uncertainty grows with it. Like SAMURAI's motion model for SAM 2, and SORT's before it, but in
seconds rather than frames.

Noise scales with the object's size (a small object and a large one moving alike in their own
widths are treated alike):

* the measured box is trusted to :data:`MEASURE_NOISE` of its size;
* a centre may accelerate by about :data:`ACCELERATION` sizes per second per second, and a size
  change a quarter of that (white-noise acceleration);
* a new track's speed is unknown to :data:`INITIAL_SPEED` sizes per second, so its first
  measurement after the prompt sets the velocity almost alone.

A measurement clipped by an occluder or the frame's edge is not taken as a shrinking, slowing box:
see :meth:`Motion.update`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import InvalidInputError

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in original-frame pixels

MEASURE_NOISE = 0.05  # std of a measured box's centre and size, as a fraction of its size
ACCELERATION = 6.0  # std of a centre's acceleration, sizes / s^2
INITIAL_SPEED = 12.0  # std of a new track's speed, sizes / s
SIZE_RATE = 0.25  # a size's noise relative to a centre's
CLIP_TOLERANCE = 0.08  # an edge this share of the side inside the prediction (and the other not) is clipped
MIN_SIDE = 2.0  # pixels: no box is predicted narrower


@dataclass(frozen=True)
class Motion:
    """A track's motion estimate at one time.

    Attributes:
        mean: (8,) float64: ``cx, cy, w, h`` (pixels) and their rates (pixels / s).
        cov: (8, 8) float64 covariance of ``mean``.
        time: the frame time it describes (seconds).
        seen: the frame time of the last measurement folded in.
    """

    mean: np.ndarray
    cov: np.ndarray
    time: float
    seen: float

    @classmethod
    def start(cls, box: Box, time: float) -> Motion:
        """A new estimate at ``box``, speed unknown."""
        cx, cy, w, h = _centre_size(box)
        size = _size(w, h)
        mean = np.array([cx, cy, w, h, 0.0, 0.0, 0.0, 0.0])
        pos = (MEASURE_NOISE * size) ** 2
        speed = (INITIAL_SPEED * size) ** 2
        cov = np.diag([pos, pos, pos, pos, speed, speed, SIZE_RATE**2 * speed, SIZE_RATE**2 * speed])
        return cls(_frozen(mean), _frozen(cov), float(time), float(time))

    def predict(self, time: float) -> Motion:
        """The estimate carried to ``time`` (a time before this one changes nothing)."""
        dt = float(time) - self.time
        if dt <= 0:
            return self
        size = _size(self.mean[2], self.mean[3])
        f = np.eye(8)
        f[:4, 4:] = np.eye(4) * dt
        q = np.zeros((8, 8))
        for i, scale in enumerate((1.0, 1.0, SIZE_RATE, SIZE_RATE)):
            a2 = (ACCELERATION * scale * size) ** 2
            q[i, i] = a2 * dt**3 / 3
            q[i, i + 4] = q[i + 4, i] = a2 * dt**2 / 2
            q[i + 4, i + 4] = a2 * dt
        mean = f @ self.mean
        mean[2:4] = np.maximum(mean[2:4], MIN_SIDE)
        return Motion(_frozen(mean), _frozen(f @ self.cov @ f.T + q), float(time), self.seen)

    def update(self, box: Box) -> Motion:
        """Fold in the box measured at this estimate's time (call :meth:`predict` first).

        A side clipped by an occluder or the frame's edge is not taken for a shrinking object:
        where one edge of the measured box lies where the prediction puts it and the opposite edge
        lies well inside the predicted box (an object sliding behind a wall or out of the frame:
        the hidden edge stops, the other goes on), the predicted size is kept on that axis, placed
        against the edge that agrees, so the centre and its velocity keep following the object as
        it goes out of view, and as it comes back. A true change of size moves both edges.
        """
        pcx, pcy, pw, ph = (float(v) for v in self.mean[:4])
        x0, x1 = _unclipped(box[0], box[2], pcx - pw / 2, pcx + pw / 2)
        y0, y1 = _unclipped(box[1], box[3], pcy - ph / 2, pcy + ph / 2)
        if (x0, x1) != (box[0], box[2]) or (y0, y1) != (box[1], box[3]):
            # A clipped shape's other side is no measure of size either (a disc half behind a
            # wall is shorter too): that side keeps its centre and the predicted length.
            if (x0, x1) == (box[0], box[2]):
                x0, x1 = (x0 + x1 - pw) / 2, (x0 + x1 + pw) / 2
            if (y0, y1) == (box[1], box[3]):
                y0, y1 = (y0 + y1 - ph) / 2, (y0 + y1 + ph) / 2
        z = np.array(_centre_size((x0, y0, x1, y1)))
        size = _size(z[2], z[3])
        r = np.eye(4) * (MEASURE_NOISE * size) ** 2
        h = np.zeros((4, 8))
        h[:, :4] = np.eye(4)
        s = h @ self.cov @ h.T + r
        gain = np.linalg.solve(s, h @ self.cov).T  # cov H^T S^-1 (S is symmetric)
        mean = self.mean + gain @ (z - h @ self.mean)
        mean[2:4] = np.maximum(mean[2:4], MIN_SIDE)
        cov = (np.eye(8) - gain @ h) @ self.cov
        return Motion(_frozen(mean), _frozen((cov + cov.T) / 2), self.time, self.time)

    def box(self) -> Box:
        """The estimated box, XYXY pixels (not clipped to the frame)."""
        cx, cy, w, h = (float(v) for v in self.mean[:4])
        return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)

    def spread(self) -> float:
        """Standard deviation of the centre's position, pixels (the larger axis)."""
        return math.sqrt(max(float(self.cov[0, 0]), float(self.cov[1, 1]), 0.0))

    def distance(self, box: Box) -> float:
        """How far ``box``'s centre lies from the estimate, in standard deviations (Mahalanobis,
        with the measurement noise of a box of the estimate's size)."""
        cx, cy, _, _ = _centre_size(box)
        size = _size(self.mean[2], self.mean[3])
        s = self.cov[:2, :2] + np.eye(2) * (MEASURE_NOISE * size) ** 2
        d = np.array([cx, cy]) - self.mean[:2]
        return math.sqrt(max(float(d @ np.linalg.solve(s, d)), 0.0))

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable data (float64 values survive JSON exactly)."""
        return {
            "mean": [float(v) for v in self.mean],
            "cov": [[float(v) for v in row] for row in self.cov],
            "time": self.time,
            "seen": self.seen,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Motion:
        """Inverse of :meth:`to_dict`; raises :class:`InvalidInputError` on malformed data."""
        try:
            mean = np.array(data["mean"], dtype=np.float64)
            cov = np.array(data["cov"], dtype=np.float64)
            time, seen = float(data["time"]), float(data["seen"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed motion state: {exc!r}") from None
        if (
            mean.shape != (8,)
            or cov.shape != (8, 8)
            or not (np.isfinite(mean).all() and np.isfinite(cov).all())
        ):
            raise InvalidInputError(
                f"motion state needs 8 finite values and an 8x8 covariance, got {mean.shape}"
            )
        return cls(_frozen(mean), _frozen(cov), time, seen)


def _unclipped(m0: float, m1: float, p0: float, p1: float) -> tuple[float, float]:
    """One axis of a measured box (``m0``, ``m1``) against the predicted one (``p0``, ``p1``): as it
    is, or, when one edge agrees with the prediction and the other lies well inside it, the
    predicted length against the edge that agrees."""
    length = p1 - p0
    tol = CLIP_TOLERANCE * length + 1.0
    r0, r1 = m0 - p0, p1 - m1  # how far each measured edge lies inside the predicted box
    if r1 > tol and abs(r0) < r1 / 2:
        return m0, m0 + length
    if r0 > tol and abs(r1) < r0 / 2:
        return m1 - length, m1
    return m0, m1


def _centre_size(box: Box) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return ((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, MIN_SIDE), max(y1 - y0, MIN_SIDE))


def _size(w: float, h: float) -> float:
    return math.sqrt(max(float(w), MIN_SIDE) * max(float(h), MIN_SIDE))


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a
