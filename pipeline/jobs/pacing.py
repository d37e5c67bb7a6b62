"""Pacing: how many frames may start now, from the encoders' measured cost, not a fixed window.

A frame read before an encoder can take it waits in the encoder's queue, and a live frame that
waits is late: with a fixed number of frames in flight per live job, latency grows with the number
of streams (Little's law: frames in flight / throughput). The :class:`Pacer` keeps what is in
flight to what the encoders can start by the time a read's frames reach them:

* it learns each image size's **cost**: the encoder's own compute time per frame (the batch's
  time over its frames, from the frames' timings: no queueing, no transfer, so pacing cannot
  talk itself into a lower capacity) and its spread, the **lead**: how long a read takes to
  come back, and the **overhead**: how long an encode call takes beyond its compute;
* it plays the work in flight (encode calls not done, reads on their way) onto ``slots``
  encoder servers, each starting a call once it is free and the call has arrived, each frame
  planned at its mean cost and twice its spread;
* a new read may bring the frames that some server would start within ``lead + slack`` of now
  (one frame a server on a CPU, where a frame costs hundreds of milliseconds; any number with
  the null model, whose frames cost microseconds).

So a live frame is read about when an encoder frees, and waits for nothing but its own encode:
latency stays about one service interval whatever the number of streams, and frames the
encoders cannot take are never read (the source host replaces a live job's unread frame by a
newer one, counted as dropped). Which job's frame goes first is the driver's (fair shares).

The tracker hosts are the second stage a frame may wait at: :class:`TrackerLoad` measures each
one's cost a frame and backlog, and the driver reads no frame for a host that would still be more
than one call behind when the frame got there.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field

# Weight of a new sample in the moving averages of cost and lead.
ALPHA = 0.3


@dataclass
class _Work:
    frames: int
    size: int
    sent: float
    arrives: float  # at the encoder (a read: sent + lead; an encode call: sent)
    alone: bool = False  # an encode call sent while no other was in flight


@dataclass
class Pacer:
    """Measures the encoders and answers how many frames may be read now (see the module docstring).

    Args:
        slots: encoder servers working at once (replicas; each takes one batch at a time).
        slack_s: how far past a read's arrival a frame may be due to start and still be read now
            (the driver's loop turns at least every 20 ms, and at once when a call returns).
    """

    slots: int = 1
    slack_s: float = 0.02
    cost: dict[int, float] = field(default_factory=dict)  # image size -> compute seconds a frame
    spread: dict[int, float] = field(default_factory=dict)  # image size -> its mean deviation
    lead: float = 0.0  # seconds from a read's send to its reply (its frames then go to encode)
    overhead: float = 0.0  # seconds an encode call takes beyond its compute (routing, transfers)
    _reads: dict[Hashable, _Work] = field(default_factory=dict)
    _encodes: dict[Hashable, _Work] = field(default_factory=dict)
    _last_done: float = 0.0

    # -- what the driver tells it --

    def read_sent(self, key: Hashable, frames: int, size: int, now: float) -> None:
        """A read that may bring up to ``frames`` frames of ``size`` left at ``now``."""
        if frames > 0:
            self._reads[key] = _Work(frames, size, now, now + self.lead + self.overhead)

    def read_done(self, key: Hashable, now: float | None) -> None:
        """A read came back (its frames, if any, go on as encode calls: :meth:`encode_sent`);
        ``now`` None: given up (no measure of the lead)."""
        work = self._reads.pop(key, None)
        if work is not None and now is not None:
            self.lead = _average(self.lead, now - work.sent, first=self.lead == 0.0)

    def encode_sent(self, key: Hashable, frames: int, size: int, now: float) -> None:
        if frames > 0:
            alone = not self._encodes  # measures the call's overhead: nothing queued before it
            self._encodes[key] = _Work(frames, size, now, now + self.overhead, alone)

    def encode_done(self, key: Hashable, now: float) -> None:
        work = self._encodes.pop(key, None)
        if work is None:
            return
        self._last_done = now
        cost = self.cost.get(work.size)
        if work.alone and cost is not None:
            sample = max(0.0, now - work.sent - work.frames * cost)
            self.overhead = _average(self.overhead, sample, first=self.overhead == 0.0)

    def cost_seen(self, size: int, seconds_per_frame: float) -> None:
        """A frame of ``size`` cost the encoder this much compute (its batch's time over its frames)."""
        if seconds_per_frame >= 0 and math.isfinite(seconds_per_frame):
            first = size not in self.cost
            if not first:
                deviation = abs(seconds_per_frame - self.cost[size])
                self.spread[size] = _average(
                    self.spread.get(size, 0.0), deviation, first=size not in self.spread
                )
            self.cost[size] = _average(self.cost.get(size, 0.0), seconds_per_frame, first=first)

    def planned(self, size: int) -> float:
        """The cost a frame of ``size`` is planned at: its mean and twice its deviation (as TCP
        times out on its round trips): a slow encode rarely finds the next frame queued behind it,
        and a fast one is seen done and read after at once. A size not measured yet is planned at
        its :meth:`estimate` (0 while no size is measured)."""
        if size not in self.cost:
            return self.estimate(size) or 0.0
        return self.cost[size] + 2 * self.spread.get(size, 0.0)

    def estimate(self, size: int) -> float | None:
        """A frame's compute at ``size``: measured, or scaled from the nearest measured size by the
        pixels (the encoder's work grows with them: its attention is windowed), None while no size
        is measured. An adaptive stream's first frames at a new size are paced by it."""
        if self.cost.get(size):
            return self.cost[size]
        known = [s for s, c in self.cost.items() if c > 0]
        if not known:
            return None
        near = min(known, key=lambda s: (abs(s - size), s))
        return self.cost[near] * (size / near) ** 2

    def forget(self) -> None:
        """Work the driver gave up on (a host replaced): what is in flight is no longer known."""
        self._reads.clear()
        self._encodes.clear()

    # -- the answer --

    def capacity(self, size: int, estimated: bool = False) -> float:
        """Frames a second the encoders can take at ``size`` (inf while its cost is unknown;
        ``estimated``: from another size's where this one's is not measured)."""
        cost = self.estimate(size) if estimated else self.cost.get(size)
        return math.inf if not cost else self.slots / cost

    def room(self, size: int, now: float, pending: Mapping[int, int] | None = None) -> float:
        """Frames of ``size`` that a read sent now may bring (inf: no limit known), besides the
        ``pending`` frames (image size -> frames) of reads about to be sent now."""
        if not self.estimate(size):
            return math.inf
        cost = self.planned(size)
        extra = [
            _Work(n, s, now, now + self.lead + self.overhead) for s, n in (pending or {}).items() if n > 0
        ]
        free = self._free_at(now, extra)
        due = now + self.lead + self.overhead  # when a read sent now reaches the encoders
        horizon = due + max(self.slack_s, 0.0)
        room = 0.0
        for at in free:
            start = max(at, due)
            if start <= horizon:
                room += 1 + math.floor((horizon - start) / cost)
        return room

    def backlog_s(self, now: float) -> float:
        """Seconds of encoder work committed beyond now on the least busy server (0: one is idle)."""
        return max(0.0, min(self._free_at(now)) - now)

    def _free_at(self, now: float, extra: list[_Work] | None = None) -> list[float]:
        """When each server is free once the work in flight is done, in the order it arrives."""
        start = min(self._last_done, now)
        free = [start] * max(1, self.slots)
        heapq.heapify(free)
        work = sorted(
            [*self._encodes.values(), *self._reads.values(), *(extra or [])], key=lambda w: w.arrives
        )
        for w in work:
            cost = self.planned(w.size)
            at = max(heapq.heappop(free), w.arrives)
            heapq.heappush(free, at + w.frames * cost)
        return [max(t, now) for t in free]


def _average(old: float, new: float, first: bool) -> float:
    return new if first else (1 - ALPHA) * old + ALPHA * new


@dataclass
class _Call:
    decoder: int
    frames: int
    sent: float
    tracks: int = 0  # track-frames: each frame times the tracks it is decoded for


@dataclass
class TrackerLoad:
    """How far behind each tracker host is, from the decode calls it was given and returned.

    A tracker host takes its calls one at a time, so a call's own time is from when it was sent or
    the host's previous call returned, whichever is later, to its return: over its frames, the
    host's **cost** a frame (a moving average: it follows the tracks a host holds). Its **backlog**
    is the work it was given and has not returned, plus the frames on their way to it (encoded or
    encoding), at that cost, less what its current call has done already.

    A live frame read now reaches its tracker host after the read and its encode; if the host will
    still be busy by then with more than one call's work, the frame would wait in its queue, and
    the wait would grow with every stream it serves (the encoders' pacing cannot see it). The
    driver reads it later instead (:meth:`late`), and the source host replaces it by a newer one.
    """

    cost: dict[int, float] = field(default_factory=dict)  # tracker host -> seconds a frame
    call_frames: dict[int, float] = field(default_factory=dict)  # tracker host -> frames a call
    track_cost: dict[int, float] = field(default_factory=dict)  # tracker host -> seconds a track-frame
    _calls: dict[Hashable, _Call] = field(default_factory=dict)
    _free: dict[int, float] = field(default_factory=dict)  # tracker host -> its last return

    def sent(self, key: Hashable, decoder: int, frames: int, now: float, tracks: int = 0) -> None:
        """A call of ``frames`` frames went to tracker host ``decoder``; ``tracks``: its
        track-frames (each frame times the tracks it is decoded for; 0: not said)."""
        if frames > 0:
            self._calls[key] = _Call(decoder, frames, now, tracks)

    def done(self, key: Hashable, now: float | None) -> None:
        """A call returned at ``now`` (None: it failed; no measure)."""
        call = self._calls.pop(key, None)
        if call is None or now is None:
            return
        start = max(call.sent, self._free.get(call.decoder, 0.0))
        self._free[call.decoder] = now
        d = call.decoder
        first = d not in self.cost
        took = max(0.0, now - start)
        self.cost[d] = _average(self.cost.get(d, 0.0), took / call.frames, first)
        self.call_frames[d] = _average(self.call_frames.get(d, 0.0), float(call.frames), first)
        if call.tracks > 0:
            self.track_cost[d] = _average(
                self.track_cost.get(d, 0.0), took / call.tracks, d not in self.track_cost
            )

    def track_frames(self, hosts: Iterable[int]) -> float | None:
        """Track-frames a second ``hosts`` take together, each one call at a time (None while
        none of them is measured: a host not measured yet adds nothing)."""
        rates = [1.0 / c for d in hosts if (c := self.track_cost.get(d, 0.0)) > 0]
        return sum(rates) if rates else None

    def backlog_s(self, decoder: int, coming: int, now: float) -> float:
        """Seconds of work the host holds beyond now, with ``coming`` more frames on their way to it
        (0 while its cost is not measured)."""
        cost = self.cost.get(decoder)
        if not cost:
            return 0.0
        calls = [c for c in self._calls.values() if c.decoder == decoder]
        frames = sum(c.frames for c in calls) + coming
        running_since = max([min(c.sent for c in calls), self._free.get(decoder, 0.0)]) if calls else now
        return max(0.0, frames * cost - (now - running_since))

    def late(self, decoder: int, coming: int, reach_s: float, now: float) -> bool:
        """Whether a frame read now would wait at the host: it reaches it in ``reach_s`` (the read
        and its encode), and the host's backlog is more than that and one call of its usual size."""
        cost = self.cost.get(decoder)
        if not cost:
            return False
        one_call = cost * max(1.0, self.call_frames.get(decoder, 1.0))
        return self.backlog_s(decoder, coming, now) > reach_s + one_call
