"""Timing helpers of the benchmark: two measures taken in turn keep their ratio on a drifting machine."""

from __future__ import annotations

import pytest

from pipeline.bench import report
from pipeline.bench.report import median, timed, timed_pair


def test_timed_pair_takes_the_two_in_turn_after_warming_each() -> None:
    calls: list[str] = []
    ours, base = timed_pair(lambda: calls.append("o"), lambda: calls.append("b"), runs=4, warmup=1)
    assert "".join(calls) == "ob" + "obboobbo"
    assert len(ours) == len(base) == 4


def test_a_machine_slowing_down_moves_both_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    # The machine slows down call after call (a neighbour on a shared VM): the baseline takes
    # twice ours at any moment. Taken in turn, the medians keep that ratio; two blocks of runs
    # (all of ours, then all of the baseline's) would give 2 × 1.08⁶ ≈ 3.2. The work advances a
    # clock of its own (sleeps on a loaded machine wake late by milliseconds: the 10 % asked here).
    clock = [0.0]
    speed = [1.0]
    monkeypatch.setattr(report.time, "perf_counter", lambda: clock[0])

    def work(seconds: float) -> None:
        clock[0] += seconds * speed[0]
        speed[0] *= 1.08

    ours, base = timed_pair(lambda: work(0.01), lambda: work(0.02), runs=6, warmup=0)
    assert median(base) / median(ours) == pytest.approx(2.0, rel=0.1)
    speed[0] = 1.0
    ours_block, base_block = timed(lambda: work(0.01), 6, warmup=0), timed(lambda: work(0.02), 6, warmup=0)
    assert median(base_block) / median(ours_block) == pytest.approx(2 * 1.08**6, rel=0.01)  # in blocks


def test_the_machine_line_says_which_instruction_limits_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.bench.system import ISA_LIMITS, describe_machine

    for name in ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)
    assert describe_machine()["isa_limit"] is None
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    line = describe_machine()
    assert line["isa_limit"] == "ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2"
    assert line["cpu_kind"] in {"amx", "avx512_bf16", "avx512", "avx2", "other"}  # the CPU's own
