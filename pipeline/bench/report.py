"""Measuring and reporting: medians, ratios, a table and one JSON line per result."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO


def timed(fn: Callable[[], Any], runs: int, warmup: int = 1) -> list[float]:
    """Seconds of ``runs`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def timed_pair(
    ours: Callable[[], Any], baseline: Callable[[], Any], runs: int, warmup: int = 1
) -> tuple[list[float], list[float]]:
    """Seconds of ``runs`` calls of each, taken in turn after ``warmup`` calls of each: a machine
    whose speed drifts over a minute (a shared VM's neighbours, turbo) moves both alike, and their
    ratio holds where two blocks of runs apart would not. The order alternates (ours, baseline,
    baseline, ours, …), so that a steady drift favours neither."""
    for _ in range(warmup):
        ours()
        baseline()
    ours_s: list[float] = []
    base_s: list[float] = []
    for run in range(runs):
        pair = ((ours, ours_s), (baseline, base_s))
        for fn, out in pair if run % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return ours_s, base_s


def median(values: list[float]) -> float:
    return float(statistics.median(values))


@dataclass(frozen=True)
class Result:
    """One benchmark result.

    Attributes:
        suite, name: what was measured.
        ours, baseline: the two measurements, in ``unit``.
        ratio: ours against baseline as the target is stated (a speed-up for rates, a time
            fraction for times); None for an absolute figure, whose target applies to ``ours``.
        better: ``higher`` or ``lower``: which way the ratio improves.
        target, goal: the ratio asked for and the ratio aimed at (None: informational).
        detail: other figures of the same run.
    """

    suite: str
    name: str
    ours: float
    baseline: float | None
    unit: str
    ratio: float | None
    better: str = "higher"
    target: float | None = None
    goal: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def meets_target(self) -> bool | None:
        """Whether the ratio (or, for an absolute figure with no baseline, ``ours``) meets the target."""
        if self.target is None:
            return None
        value = self.ratio if self.ratio is not None else self.ours
        return value >= self.target if self.better == "higher" else value <= self.target

    def to_json(self) -> str:
        data = asdict(self)
        data["meets_target"] = self.meets_target
        return json.dumps(data, sort_keys=True, default=float)


def rate_result(suite: str, name: str, ours_s: float, base_s: float, **kw: Any) -> Result:
    """A frames/s comparison from seconds per frame."""
    return Result(suite, name, 1.0 / ours_s, 1.0 / base_s, "frames/s", base_s / ours_s, "higher", **kw)


def print_table(results: list[Result], out: TextIO = sys.stdout) -> None:
    head = f"{'suite':<10} {'measure':<40} {'ours':>10} {'baseline':>10} {'unit':<9} {'ratio':>7} {'target':>8}  ok"
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in results:
        base = f"{r.baseline:10.3f}" if r.baseline is not None else f"{'-':>10}"
        ratio = f"{r.ratio:7.2f}" if r.ratio is not None else f"{'-':>7}"
        sign = ">=" if r.better == "higher" else "<="
        target = f"{sign}{r.target:.2f}" if r.target is not None else ""
        ok = {True: "yes", False: "NO", None: ""}[r.meets_target]
        print(
            f"{r.suite:<10} {r.name:<40} {r.ours:10.3f} {base} {r.unit:<9} {ratio} {target:>8}  {ok}",
            file=out,
        )
