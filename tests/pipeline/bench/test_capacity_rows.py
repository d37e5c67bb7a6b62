"""The capacity suite's rows from its figures: each K against K = 1 of the same run, and adaptive
streams against their target."""

from __future__ import annotations

import pytest

from pipeline.bench.capacity import CapacityFigures, capacity_results
from pipeline.cli.bench import _capacity_size
from pipeline.errors import InvalidInputError


def figures(k: int, rates: list[float], latencies: list[float], gaps: list[float]) -> CapacityFigures:
    f = CapacityFigures(k, 20.0, rates, latencies, gaps)
    f.sizes = {512: 40}
    f.changes = ["1024 -> 512: at 1024 the encoders' share would be below the target 2 fps"]
    return f


def test_rows_compare_each_k_with_k1_and_auto_streams_with_their_target() -> None:
    runs = [
        figures(1, [10.0], [0.1] * 9, [0.1] * 9),
        figures(4, [3.0, 3.2, 2.9, 3.1], [0.15] * 20, [0.3] * 20),
    ]
    rows = {r.name: r for r in capacity_results(runs, fps=10.0, target_fps=2.0)}
    assert rows["K=1: service interval p50"].ours == pytest.approx(0.1)
    total = rows["K=4: total published"]
    assert total.ratio == pytest.approx(12.2 / 10.0) and total.meets_target
    slowest = rows["K=4: slowest stream / fair share"]
    assert slowest.ours == 2.9 and slowest.ratio == pytest.approx(2.9 / (12.2 / 4))
    p99 = rows["K=4: latency p99 / K=1 interval"]
    assert p99.ratio == pytest.approx(1.5) and p99.meets_target
    auto = rows["K=4: slowest stream / target (auto)"]
    assert auto.ratio == pytest.approx(2.9 / 2.0) and auto.meets_target
    assert auto.detail["entries_by_size"] == {"512": 40} and auto.detail["events"][0].startswith(
        "1024 -> 512"
    )
    # fixed-size streams have no target row
    assert not any("target" in r.name for r in capacity_results(runs, fps=10.0))


def test_a_slow_auto_stream_misses_its_target() -> None:
    runs = [figures(1, [1.0], [0.5] * 5, [1.0] * 5)]
    [row] = [r for r in capacity_results(runs, 10.0, target_fps=2.0) if "target" in r.name]
    assert row.meets_target is False


@pytest.mark.parametrize(("text", "want"), [("auto", "auto"), ("512", 512), ("1024", 1024)])
def test_the_capacity_size_is_a_size_or_auto(text: str, want: object) -> None:
    assert _capacity_size(text) == want


@pytest.mark.parametrize("text", ["big", "0", "500", "-512"])
def test_a_bad_capacity_size_is_one_clear_error(text: str) -> None:
    with pytest.raises(InvalidInputError, match="--capacity-image-size must be auto or a multiple of 16"):
        _capacity_size(text)


def test_the_admission_probe_is_judged_against_the_floor_and_the_rate_kept() -> None:
    k4 = figures(4, [3.0, 3.0, 3.0, 3.0], [0.1] * 10, [0.3] * 10)
    k4.admission = {
        "status": 201,
        "share_if_admitted": 2.4,
        "floor": 2.0,
        "refused_as_due": True,
        "total_after": 11.5,
    }
    k8 = figures(8, [1.5] * 8, [0.1] * 10, [0.6] * 10)
    k8.admission = {
        "status": 429,
        "share_if_admitted": 1.33,
        "floor": 2.0,
        "refused_as_due": True,
        "total_after": 10.0,
    }
    rows = {r.name: r for r in capacity_results([k4, k8], fps=10.0)}
    assert rows["K=4: one more stream refused iff its share < floor"].meets_target
    kept = rows["K=8: running streams' total after / before"]
    assert kept.ratio == pytest.approx(10.0 / 12.0) and kept.meets_target is False  # under 0.9: shown
    assert rows["K=8: one more stream refused iff its share < floor"].detail["status"] == 429


def test_the_first_row_says_how_long_the_model_took_to_compile_first() -> None:
    runs = [figures(1, [1.5], [0.6] * 9, [0.6] * 9)]
    [first, *_] = capacity_results(runs, 10.0, warmup_s=95.5)
    assert first.name == "K=1: service interval p50" and first.detail["warmup_s"] == 95.5
