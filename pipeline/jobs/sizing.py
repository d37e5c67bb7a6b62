"""Adaptive resolution: the image size each ``image_size: auto`` live stream is encoded at.

A stream that asks for ``auto`` names a rate it wants (``target_fps``; default its feed's rate)
and a ladder of sizes it may be encoded at (the service's sizes, e.g. 256, 512, 768, 1024). When
the encoders cannot give every stream its target at the size it has, streams are moved down the
ladder; when they could give it at a larger size, up again — with hysteresis, so that a size
holds while the load does.

The plan is a prediction, not a reaction: the driver knows each size's cost on the encoders
(:class:`~pipeline.jobs.pacing.Pacer`, estimated from a measured size where one is not measured
yet) and shares them as its pacing does (:func:`~pipeline.jobs.admission.fair_shares`: frames in
proportion to weight, each frame paid at its size's cost, water-filling over what streams do not
take). :meth:`SizePlanner.plan` fills the auto streams' sizes from the bottom up, one step at a
time, the smallest first, while every stream's predicted share still meets its target:
the sizes end within one step of each other (no stream gets 1024 while another is squeezed to
256), and the larger ones go to the streams that had them already.

Hysteresis:

* a stream moves **down** to the plan's size once the plan has said so ``down_after`` times in a
  row (a share below target is felt at once, but one noisy measure should not move it); its
  delivered rate counts too: a stream bound by the encoders and below ``shortfall`` of its target
  for ``down_after`` windows moves down a step even where the prediction said it would not (the
  prediction was wrong: a tracker host, not the encoders, held it back), and does not move
  above that size again for ``ceiling_s``; its rate counts only ``hold_s`` after it started or
  last changed (a new stream's source opens, the first frames of a new size wait for its model);
* a stream moves **up** one step at a time, only when the plan made with ``up_margin`` over
  every target (a larger size must leave room to spare) said so ``up_after`` times in a row, and
  not within ``hold_s`` of its start or last change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.jobs.admission import Demand, fair_shares
from pipeline.spec import AutoSize


@dataclass(frozen=True)
class Stream:
    """One stream as the planner sees it (a file job is a stream without ``auto``).

    Attributes:
        key: the job's id.
        weight: its share weight.
        size: the size it is encoded at now.
        cap: the most frames a second it takes (its feed's rate, its ``max_fps``), None: any.
        auto: its ladder and target, or None (its size is fixed).
        delivered_fps: what it got over the last window (None: not measured yet).
        bound: the encoders held it back in the last window.
    """

    key: str
    weight: float
    size: int
    cap: float | None = None
    auto: AutoSize | None = None
    delivered_fps: float | None = None
    bound: bool = False

    @property
    def target(self) -> float | None:
        """The rate it wants (None: no target known yet, or not auto)."""
        if self.auto is None:
            return None
        if self.auto.target_fps is None:
            return self.cap
        return self.auto.target_fps if self.cap is None else min(self.auto.target_fps, self.cap)


@dataclass(frozen=True)
class SizeChange:
    """A stream's size changes: from, to, and why (the event's text)."""

    key: str
    old: int
    new: int
    reason: str

    def detail(self) -> str:
        return f"{self.old} -> {self.new}: {self.reason}"


@dataclass
class SizePlanner:
    """Chooses the auto streams' sizes each window (see the module docstring).

    Args:
        down_after: windows in a row that ask for a smaller size before a stream moves down.
        up_after: windows in a row that allow a larger size before a stream moves up.
        margin: a size holds while every stream's predicted share is this much over its target
            (the prediction's noise: a share just at the target is below it half the time).
        up_margin: a larger size must leave every stream this much over its target.
        shortfall: a bound stream delivering below this share of its target is too slow, whatever
            the prediction says.
        hold_s: seconds after a change in which a stream does not move up.
        ceiling_s: seconds a stream moved down for its delivered rate stays at most at that size.
    """

    down_after: int = 2
    up_after: int = 4
    margin: float = 1.1
    up_margin: float = 1.3
    shortfall: float = 0.85
    hold_s: float = 8.0
    ceiling_s: float = 30.0
    _ceiling: dict[str, tuple[int, float]] = field(default_factory=dict)  # key -> (size, until)
    _down: dict[str, int] = field(default_factory=dict)
    _up: dict[str, int] = field(default_factory=dict)
    _slow: dict[str, int] = field(default_factory=dict)
    _changed_at: dict[str, float] = field(default_factory=dict)

    def plan(self, streams: Sequence[Stream], capacity: Mapping[int, float], now: float) -> list[SizeChange]:
        """This window's changes (``capacity``: frames a second the encoders take at each size
        a stream may have; a size missing from it is not chosen)."""
        auto = [s for s in streams if s.auto is not None and s.target is not None]
        for key in set(self._changed_at) - {s.key for s in auto}:  # every auto stream has a time
            self._forget(key)
        if not auto or not capacity:
            return []
        hold = _fill(streams, capacity, self.margin)
        roomy = _fill(streams, capacity, self.up_margin)
        changes: list[SizeChange] = []
        for s in auto:
            assert s.auto is not None and s.target is not None  # filtered above
            self._changed_at.setdefault(s.key, now)  # a new stream settles as a moved one does
            ladder = _ladder(s, capacity)
            here = ladder.index(s.size) if s.size in ladder else len(ladder) - 1
            settled = now - self._changed_at.get(s.key, -1e18) >= self.hold_s  # a change stalls a little
            slow = (
                settled
                and s.bound
                and s.delivered_fps is not None
                and s.delivered_fps < self.shortfall * s.target
            )
            self._slow[s.key] = self._slow.get(s.key, 0) + 1 if slow else 0
            self._down[s.key] = self._down.get(s.key, 0) + 1 if hold[s.key] < s.size else 0
            self._up[s.key] = self._up.get(s.key, 0) + 1 if roomy[s.key] > s.size else 0
            ceiling, until = self._ceiling.get(s.key, (ladder[-1], 0.0))
            if now >= until:
                ceiling = ladder[-1]
            if here > 0 and max(self._down[s.key], self._slow[s.key]) >= self.down_after:
                if hold[s.key] < s.size:
                    new = hold[s.key]
                    why = f"at {s.size} the encoders' share would be below the target {s.target:g} fps"
                else:
                    new = ladder[here - 1]
                    why = f"delivered {s.delivered_fps:.2f} fps, below the target {s.target:g}"
                    self._ceiling[s.key] = (new, now + self.ceiling_s)
                changes.append(SizeChange(s.key, s.size, new, why))
            elif (
                not slow
                and self._up[s.key] >= self.up_after
                and here + 1 < len(ladder)
                and ladder[here + 1] <= ceiling
                and now - self._changed_at.get(s.key, -1e18) >= self.hold_s
            ):
                changes.append(
                    SizeChange(
                        s.key,
                        s.size,
                        ladder[here + 1],
                        f"the encoders' share would meet the target {s.target:g} fps with room to spare",
                    )
                )
        for change in changes:
            self._down[change.key] = self._up[change.key] = self._slow[change.key] = 0
            self._changed_at[change.key] = now
        return changes

    def _forget(self, key: str) -> None:
        for table in (self._down, self._up, self._slow, self._changed_at, self._ceiling):
            table.pop(key, None)


def _ladder(stream: Stream, capacity: Mapping[int, float]) -> list[int]:
    """The sizes an auto stream may move over now: those of its ladder with a capacity known."""
    assert stream.auto is not None
    return [z for z in stream.auto.sizes if z in capacity] or [stream.size]


def _fill(streams: Sequence[Stream], capacity: Mapping[int, float], margin: float) -> dict[str, int]:
    """The largest sizes the auto streams may have, filled from the bottom of their ladders one
    step at a time (the smallest size first; at a tie, the stream that has the larger size now):
    a step is kept while every auto stream's predicted share stays at ``margin`` times its target."""
    sizes = {s.key: s.size for s in streams}
    auto = [s for s in streams if s.auto is not None and s.target is not None]
    ladders = {s.key: _ladder(s, capacity) for s in auto}
    for s in auto:
        sizes[s.key] = ladders[s.key][0]

    def meets() -> bool:
        demands = [Demand(s.weight, sizes[s.key], s.cap) for s in streams]
        shares = fair_shares(demands, capacity)
        return all(
            share >= margin * (s.target or 0) * (1 - 1e-9)
            for s, share in zip(streams, shares, strict=True)
            if s.auto is not None and s.target is not None
        )

    if not meets():  # not even the smallest sizes meet the targets: they are the best there is
        return sizes
    full: set[str] = set()
    while len(full) < len(auto):
        candidates = [s for s in auto if s.key not in full]
        s = min(candidates, key=lambda c: (sizes[c.key], -c.size, c.key))
        ladder = ladders[s.key]
        step = ladder.index(sizes[s.key]) + 1
        if step >= len(ladder):
            full.add(s.key)
            continue
        sizes[s.key] = ladder[step]
        if not meets():
            sizes[s.key] = ladder[step - 1]
            break  # the smallest cannot grow: a larger one growing instead would leave it behind
    return sizes
