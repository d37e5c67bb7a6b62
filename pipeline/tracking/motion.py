"""Where a track's object is now: a constant-velocity Kalman filter on its box, in frame time.

The state is the box's centre and size and their rates, ``(cx, cy, w, h)`` and ``(vx, vy, vw, vh)``,
in original-frame pixels and pixels per second. Time is the frames' own (presentation timestamps
of a file, capture times of a live feed), so a stride, a dropped live frame or a variable frame
rate is just a longer step: the prediction moves the box by velocity × the time that passed, and
its uncertainty grows with it. Like SAMURAI's motion model for SAM 2, and SORT's before it, but in
seconds rather than frames.

The four quantities move, and are measured, independently (the transition, the noises and the
measurement are per quantity), so the filter is four filters of a value and its rate, each with a
2 x 2 covariance: plain float arithmetic, a few microseconds a step.

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
Vec4 = tuple[float, float, float, float]
Cov = tuple[tuple[float, float, float], ...]  # per quantity: (var value, cov value-rate, var rate)

MEASURE_NOISE = 0.05  # std of a measured box's centre and size, as a fraction of its size
ACCELERATION = 6.0  # std of a centre's acceleration, sizes / s^2
INITIAL_SPEED = 12.0  # std of a new track's speed, sizes / s
SIZE_RATE = 0.25  # a size's noise relative to a centre's
SCALES = (1.0, 1.0, SIZE_RATE, SIZE_RATE)  # acceleration of cx, cy, w, h relative to a centre's
CLIP_TOLERANCE = 0.08  # an edge this share of the side inside the prediction (and the other not) is clipped
MIN_SIDE = 2.0  # pixels: no box is predicted narrower


@dataclass(frozen=True)
class Motion:
    """A track's motion estimate at one time.

    Attributes:
        value: ``(cx, cy, w, h)`` in pixels.
        rate: their rates, pixels / s.
        cov: per quantity, the covariance of it and its rate: ``(var, cov, var rate)``.
        time: the frame time it describes (seconds).
        seen: the frame time of the last measurement folded in.
    """

    value: Vec4
    rate: Vec4
    cov: Cov
    time: float
    seen: float

    @property
    def mean(self) -> np.ndarray:
        """(8,) ``cx, cy, w, h, vx, vy, vw, vh`` (a copy, for reading)."""
        return np.array([*self.value, *self.rate])

    @classmethod
    def start(cls, box: Box, time: float) -> Motion:
        """A new estimate at ``box``, speed unknown."""
        value = _centre_size(box)
        size = _size(value[2], value[3])
        pos = (MEASURE_NOISE * size) ** 2
        speed = (INITIAL_SPEED * size) ** 2
        cov = tuple((pos, 0.0, speed * scale * scale) for scale in SCALES)
        return cls(value, (0.0, 0.0, 0.0, 0.0), cov, float(time), float(time))

    def predict(self, time: float) -> Motion:
        """The estimate carried to ``time`` (a time before this one changes nothing)."""
        dt = float(time) - self.time
        if dt <= 0:
            return self
        size = _size(self.value[2], self.value[3])
        value = [v + r * dt for v, r in zip(self.value, self.rate, strict=True)]
        value[2], value[3] = max(value[2], MIN_SIDE), max(value[3], MIN_SIDE)
        cov = []
        for (pp, pv, vv), scale in zip(self.cov, SCALES, strict=True):
            a2 = (ACCELERATION * scale * size) ** 2
            cov.append(
                (
                    pp + 2 * dt * pv + dt * dt * vv + a2 * dt**3 / 3,
                    pv + dt * vv + a2 * dt * dt / 2,
                    vv + a2 * dt,
                )
            )
        return Motion(_four(value), self.rate, tuple(cov), float(time), self.seen)

    def update(self, box: Box) -> Motion:
        """Fold in the box measured at this estimate's time (call :meth:`predict` first).

        A side clipped by an occluder or the frame's edge is not taken for a shrinking object:
        where one edge of the measured box lies where the prediction puts it and the opposite edge
        lies well inside the predicted box (an object sliding behind a wall or out of the frame:
        the hidden edge stops, the other goes on), the predicted size is kept on that axis, placed
        against the edge that agrees, so the centre and its velocity keep following the object as
        it goes out of view, and as it comes back. A true change of size moves both edges.
        """
        pcx, pcy, pw, ph = self.value
        x0, x1 = _unclipped(box[0], box[2], pcx - pw / 2, pcx + pw / 2)
        y0, y1 = _unclipped(box[1], box[3], pcy - ph / 2, pcy + ph / 2)
        if (x0, x1) != (box[0], box[2]) or (y0, y1) != (box[1], box[3]):
            # A clipped shape's other side is no measure of size either (a disc half behind a
            # wall is shorter too): that side keeps its centre and the predicted length.
            if (x0, x1) == (box[0], box[2]):
                x0, x1 = (x0 + x1 - pw) / 2, (x0 + x1 + pw) / 2
            if (y0, y1) == (box[1], box[3]):
                y0, y1 = (y0 + y1 - ph) / 2, (y0 + y1 + ph) / 2
        z = _centre_size((x0, y0, x1, y1))
        r = (MEASURE_NOISE * _size(z[2], z[3])) ** 2
        value, rate, cov = [], [], []
        for v, dv, (pp, pv, vv), m in zip(self.value, self.rate, self.cov, z, strict=True):
            s = pp + r
            k_value, k_rate = pp / s, pv / s  # the gain
            innovation = m - v
            value.append(v + k_value * innovation)
            rate.append(dv + k_rate * innovation)
            cov.append((pp - k_value * pp, pv - k_value * pv, vv - k_rate * pv))
        value[2], value[3] = max(value[2], MIN_SIDE), max(value[3], MIN_SIDE)
        return Motion(_four(value), _four(rate), tuple(cov), self.time, self.time)

    def box(self) -> Box:
        """The estimated box, XYXY pixels (not clipped to the frame)."""
        cx, cy, w, h = self.value
        return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)

    def spread(self) -> float:
        """Standard deviation of the centre's position, pixels (the larger axis)."""
        return math.sqrt(max(self.cov[0][0], self.cov[1][0], 0.0))

    def distance(self, box: Box) -> float:
        """How far ``box``'s centre lies from the estimate, in standard deviations (Mahalanobis,
        with the measurement noise of a box of the estimate's size)."""
        cx, cy, _, _ = _centre_size(box)
        r = (MEASURE_NOISE * _size(self.value[2], self.value[3])) ** 2
        dx, dy = cx - self.value[0], cy - self.value[1]
        return math.sqrt(dx * dx / (self.cov[0][0] + r) + dy * dy / (self.cov[1][0] + r))

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable data (floats survive JSON exactly)."""
        return {
            "value": list(self.value),
            "rate": list(self.rate),
            "cov": [list(c) for c in self.cov],
            "time": self.time,
            "seen": self.seen,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Motion:
        """Inverse of :meth:`to_dict`; raises :class:`InvalidInputError` on malformed data."""
        try:
            value = _four([float(v) for v in data["value"]])
            rate = _four([float(v) for v in data["rate"]])
            cov = tuple(_three([float(v) for v in c]) for c in data["cov"])
            time, seen = float(data["time"]), float(data["seen"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed motion state: {exc!r}") from None
        numbers = [*value, *rate, *(v for c in cov for v in c), time, seen]
        if len(cov) != 4 or not all(math.isfinite(v) for v in numbers):
            raise InvalidInputError("motion state needs 4 finite values, rates and covariances")
        return cls(value, rate, cov, time, seen)


def _four(values: list[float]) -> Vec4:
    if len(values) != 4:
        raise ValueError(f"expected 4 numbers, got {len(values)}")
    a, b, c, d = values
    return (a, b, c, d)


def _three(values: list[float]) -> tuple[float, float, float]:
    if len(values) != 3:
        raise ValueError(f"expected 3 numbers, got {len(values)}")
    a, b, c = values
    return (a, b, c)


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


def _centre_size(box: Box) -> Vec4:
    x0, y0, x1, y1 = (float(v) for v in box)
    return ((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, MIN_SIDE), max(y1 - y0, MIN_SIDE))


def _size(w: float, h: float) -> float:
    return math.sqrt(max(float(w), MIN_SIDE) * max(float(h), MIN_SIDE))
