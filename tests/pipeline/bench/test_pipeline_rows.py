"""The pipeline suite's rows, its runs replaced by a clock of its own: what is measured when."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.bench import system


def test_the_seed_loop_is_timed_before_and_after_the_runs_and_its_mean_is_the_baseline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The machine slows down as the suite goes on: the seed loop takes 40 s at the start and
    # 60 s at the end, the runs between take 20 s and 16 s. A loop at the end alone gave
    # 60 / 16 for the warm row; before and after, (40 + 60) / 2 / 16.
    order: list[str] = []
    seeds = iter([40.0, 60.0])
    walls = iter([20.0, 16.0])

    def seed_loop(clip: Path, device: str) -> float:
        order.append("seed")
        return next(seeds)

    def samstream_run(
        clip: Path, data: Path, extra: list[str], env: Any = None
    ) -> tuple[float, list[float], float]:
        order.append(data.name)
        wall = next(walls)
        return wall, [100.0 + 4.0 + i * (wall - 4.0) / 23 for i in range(24)], 100.0

    def warmup(model: list[str]) -> float:
        order.append("warmup")
        return 1.0

    monkeypatch.setattr(system, "_clip", lambda folder, frames: folder / "clip.mp4")
    monkeypatch.setattr(system, "_seed_loop", seed_loop)
    monkeypatch.setattr(system, "_samstream_run", samstream_run)
    monkeypatch.setattr(system, "warmup", warmup)
    rows = {r.name: r for r in system.run_pipeline(24, 1024, ["--weights", "random"], "cpu")}

    assert order == ["seed", "cold", "warmup", "warm", "seed"]
    warm = rows["frames/s, whole command, 24 frames 720p, warm cache"]
    cold = rows["frames/s, whole command, 24 frames 720p, cold cache"]
    assert warm.ratio == pytest.approx(50.0 / 16.0)
    assert cold.ratio == pytest.approx(50.0 / 20.0)
    assert warm.detail["seed_walls_s"] == [40.0, 60.0]
    assert warm.detail["seed_wall_s"] == 50.0
    assert rows["time to first mask, warm cache"].ours == pytest.approx(4.0)
