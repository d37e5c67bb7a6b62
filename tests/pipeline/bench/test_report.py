"""Timing helpers of the benchmark: two measures taken in turn keep their ratio on a drifting machine."""

from __future__ import annotations

import time

import pytest

from pipeline.bench.report import median, timed_pair


def test_timed_pair_takes_the_two_in_turn_after_warming_each() -> None:
    calls: list[str] = []
    ours, base = timed_pair(lambda: calls.append("o"), lambda: calls.append("b"), runs=4, warmup=1)
    assert "".join(calls) == "ob" + "obboobbo"
    assert len(ours) == len(base) == 4


def test_a_machine_slowing_down_moves_both_alike() -> None:
    # The machine slows down call after call (a neighbour on a shared VM): the baseline takes
    # twice ours at any moment. Taken in turn, the medians keep that ratio; two blocks of runs
    # (all of ours, then all of the baseline's) would give 2 × 1.08⁶ ≈ 3.2.
    speed = [1.0]

    def work(seconds: float) -> None:
        time.sleep(seconds * speed[0])
        speed[0] *= 1.08

    ours, base = timed_pair(lambda: work(0.01), lambda: work(0.02), runs=6, warmup=0)
    assert median(base) / median(ours) == pytest.approx(2.0, rel=0.1)
