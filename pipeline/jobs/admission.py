"""Admission by capacity: a new live stream is refused when it would push a stream's fair share of
the encoders or the tracker hosts below the service's floor (``serve --admission capacity
--min-stream-fps F``).

The driver measures what the encoders take at each image size (:class:`~pipeline.jobs.pacing.Pacer`)
and records it (:meth:`~pipeline.streams.JobStore.record_capacity`, expiring when the driver stops
writing). The shares follow the driver's pacing: weighted fair queueing on frames, so stream ``i``
gets ``w_i · x`` frames a second, where one second of the encoders' work a second pays for every
stream's frames at its size's cost (``1 / capacity``); a stream that takes less (its ``max_fps``
or its feed's rate) leaves the rest to the others (water-filling).

The tracker hosts are a second budget. Each takes its calls one at a time, so together they take
at most so many track-frames a second: one over the seconds a track-frame takes each host, summed
(measured by the driver, :class:`~pipeline.jobs.pacing.TrackerLoad`). A frame of a stream costs
its tracks. The shares are filled evenly (by weight) until either budget is spent: streams of many
tracks can be held back by the tracker hosts while the encoders have room.

A pool that can grow (``--max-encoders`` above the replicas running) admits every stream: its
demand is the autoscaler's to meet. Where no capacity is measured yet (no stream has run at that
size, or the driver is not writing) the stream is admitted: nothing says it would starve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Demand:
    """One live stream's claim on the encoders and its tracker host."""

    weight: float
    image_size: int
    cap: float | None = None  # the most frames a second it takes (max_fps, its feed's rate)
    tracks: int = 1  # the tracks each of its frames is decoded for (those discovery may start too)


@dataclass(frozen=True)
class Capacity:
    """What the driver last measured: the encoders' frames a second at each image size, whether
    their pool may still grow, and the track-frames a second the tracker hosts take (None: not
    measured)."""

    fps: Mapping[int, float]
    can_grow: bool = False
    track_frames: float | None = None


@dataclass(frozen=True)
class Refusal:
    """Why a stream is not admitted: the capacity that binds, the least share it would leave."""

    capacity_fps: float
    share_fps: float
    floor_fps: float
    image_size: int
    track_frames: float | None = None  # set when the tracker hosts bind, not the encoders

    def message(self) -> str:
        if self.track_frames is not None:
            capacity = f"the tracker hosts take about {self.track_frames:.1f} track-frames a second"
        else:
            capacity = (
                f"the encoders take about {self.capacity_fps:.2f} frames a second at {self.image_size} px"
            )
        return (
            f"{capacity}; with this stream a stream's fair share would be {self.share_fps:.2f} fps, "
            f"below this service's floor of {self.floor_fps:g} fps (--min-stream-fps); try again "
            "when a stream has ended"
        )


def fair_shares(
    demands: Sequence[Demand], capacity: Mapping[int, float], track_frames: float | None = None
) -> list[float]:
    """Frames a second each stream gets (see the module docstring); a size with no measured
    capacity costs as much as the dearest measured one. Without ``track_frames`` the tracker
    hosts are taken to keep up."""
    return _fill(demands, capacity, track_frames)[0]


def _fill(
    demands: Sequence[Demand], capacity: Mapping[int, float], track_frames: float | None
) -> tuple[list[float], bool]:
    """The shares, and whether the tracker hosts' budget was the one that ran out."""
    if not demands:
        return [], False
    dearest = min(capacity.values())
    # Seconds of work a frame of each stream costs on each budget (one second a second each).
    costs = [[1.0 / capacity.get(d.image_size, dearest) for d in demands]]
    if track_frames:
        costs.append([d.tracks / track_frames for d in demands])
    budgets = [1.0] * len(costs)
    shares = [0.0] * len(demands)
    open_ = set(range(len(demands)))
    trackers_bind = False
    while open_:
        rates = [
            b / used if (used := sum(demands[i].weight * cost[i] for i in open_)) > 0 else math.inf
            for b, cost in zip(budgets, costs, strict=True)
        ]
        x = min(rates)
        capped = [i for i in open_ if (c := demands[i].cap) is not None and demands[i].weight * x >= c]
        if not capped:
            for i in open_:
                shares[i] = demands[i].weight * x
            trackers_bind = len(rates) > 1 and rates[1] < rates[0]
            break
        for i in capped:
            shares[i] = demands[i].cap or 0.0
            for k, cost in enumerate(costs):
                budgets[k] = max(0.0, budgets[k] - shares[i] * cost[i])
            open_.discard(i)
    return shares, trackers_bind


def admit(
    new: Demand, running: Sequence[Demand], capacity: Capacity | None, floor_fps: float
) -> Refusal | None:
    """None if ``new`` may start beside ``running``; else why not (see the module docstring)."""
    if capacity is None or capacity.can_grow or new.image_size not in capacity.fps:
        return None
    demands = [*running, new]
    shares, trackers_bind = _fill(demands, capacity.fps, capacity.track_frames)
    least = None
    for demand, share in zip(demands, shares, strict=True):
        wanted = floor_fps if demand.cap is None else min(floor_fps, demand.cap)
        if share < wanted * (1 - 1e-9) and (least is None or share < least):
            least = share
    if least is None:
        return None
    track_frames = capacity.track_frames if trackers_bind else None
    return Refusal(capacity.fps[new.image_size], least, floor_fps, new.image_size, track_frames)
