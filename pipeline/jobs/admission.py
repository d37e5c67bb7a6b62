"""Admission by capacity: a new live stream is refused when it would push a stream's fair share of
the encoders below the service's floor (``serve --admission capacity --min-stream-fps F``).

The driver measures what the encoders take at each image size (:class:`~pipeline.jobs.pacing.Pacer`)
and records it (:meth:`~pipeline.streams.JobStore.record_capacity`, expiring when the driver stops
writing). The shares follow the driver's pacing: weighted fair queueing on frames, so stream ``i``
gets ``w_i · x`` frames a second, where one second of the encoders' work a second pays for every
stream's frames at its size's cost (``1 / capacity``); a stream that takes less (its ``max_fps``
or its feed's rate) leaves the rest to the others (water-filling).

A pool that can grow (``--max-encoders`` above the replicas running) admits every stream: its
demand is the autoscaler's to meet. Where no capacity is measured yet (no stream has run at that
size, or the driver is not writing) the stream is admitted: nothing says it would starve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Demand:
    """One live stream's claim on the encoders."""

    weight: float
    image_size: int
    cap: float | None = None  # the most frames a second it takes (max_fps, its feed's rate)


@dataclass(frozen=True)
class EncoderCapacity:
    """What the driver last measured: frames a second at each image size, and whether the pool
    may still grow."""

    fps: Mapping[int, float]
    can_grow: bool = False


@dataclass(frozen=True)
class Refusal:
    """Why a stream is not admitted: the capacity at its size, the least share it would leave."""

    capacity_fps: float
    share_fps: float
    floor_fps: float
    image_size: int

    def message(self) -> str:
        return (
            f"the encoders take about {self.capacity_fps:.2f} frames a second at {self.image_size} px; "
            f"with this stream a stream's fair share would be {self.share_fps:.2f} fps, below this "
            f"service's floor of {self.floor_fps:g} fps (--min-stream-fps); try again when a stream "
            "has ended"
        )


def fair_shares(demands: Sequence[Demand], capacity: Mapping[int, float]) -> list[float]:
    """Frames a second each stream gets (see the module docstring); a size with no measured
    capacity costs as much as the dearest measured one."""
    if not demands:
        return []
    dearest = min(capacity.values())
    cost = [1.0 / capacity.get(d.image_size, dearest) for d in demands]
    shares = [0.0] * len(demands)
    open_ = set(range(len(demands)))
    budget = 1.0  # seconds of encoder work a second, over all replicas (capacity counts them)
    while open_ and budget > 0:
        x = budget / sum(demands[i].weight * cost[i] for i in open_)
        capped = [i for i in open_ if (c := demands[i].cap) is not None and demands[i].weight * x >= c]
        if not capped:
            for i in open_:
                shares[i] = demands[i].weight * x
            break
        for i in capped:
            shares[i] = demands[i].cap or 0.0
            budget -= shares[i] * cost[i]
            open_.discard(i)
    return shares


def admit(
    new: Demand, running: Sequence[Demand], capacity: EncoderCapacity | None, floor_fps: float
) -> Refusal | None:
    """None if ``new`` may start beside ``running``; else why not (see the module docstring)."""
    if capacity is None or capacity.can_grow or new.image_size not in capacity.fps:
        return None
    demands = [*running, new]
    shares = fair_shares(demands, capacity.fps)
    least = None
    for demand, share in zip(demands, shares, strict=True):
        wanted = floor_fps if demand.cap is None else min(floor_fps, demand.cap)
        if share < wanted * (1 - 1e-9) and (least is None or share < least):
            least = share
    if least is None:
        return None
    return Refusal(capacity.fps[new.image_size], least, floor_fps, new.image_size)
