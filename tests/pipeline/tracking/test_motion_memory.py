"""The parts of a track's state: its motion (a Kalman filter in frame time) and its appearance
memory (a bounded bank of feature vectors), and the frame's features as the tracker reads them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.errors import InvalidInputError
from pipeline.tracking.memory import FrameFeatures, Memory
from pipeline.tracking.motion import Motion


def _box(cx: float, cy: float, w: float = 40, h: float = 30) -> tuple[float, float, float, float]:
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def test_the_motion_learns_a_velocity_in_pixels_per_second_and_predicts_by_time() -> None:
    m = Motion.start(_box(100, 100), 0.0)
    for k in range(1, 6):  # 300 px/s right, 60 px/s down, frames 0.1 s apart
        m = m.predict(k * 0.1).update(_box(100 + 30 * k, 100 + 6 * k))
    assert m.rate[0] == pytest.approx(300, rel=0.05) and m.rate[1] == pytest.approx(60, rel=0.1)
    # A gap four times as long moves the prediction four times as far (a stride, dropped frames).
    one, four = m.predict(0.6).box(), m.predict(0.9).box()
    assert (four[0] - m.box()[0]) == pytest.approx(4 * (one[0] - m.box()[0]), rel=1e-6)
    assert m.predict(0.9).spread() > m.predict(0.6).spread() > 0
    assert m.predict(0.4) is m  # the past changes nothing


def test_a_clipped_box_keeps_the_predicted_size_against_the_edge_that_agrees() -> None:
    m = Motion.start(_box(100, 100), 0.0)
    for k in range(1, 6):
        m = m.predict(k * 0.1).update(_box(100 + 30 * k, 100))
    p = m.predict(0.6)
    x0, y0, x1, y1 = p.box()
    # Its right part goes behind a wall at x = x1 - 25: the left edge is where it should be.
    clipped = p.update((x0, y0, x1 - 25, y1))
    assert clipped.value[2] == pytest.approx(p.value[2], rel=0.02)  # the width kept
    assert clipped.value[0] == pytest.approx(p.value[0], abs=2)  # the centre goes on
    # A true shrink moves both edges: taken as it is.
    shrunk = p.update((x0 + 8, y0 + 6, x1 - 8, y1 - 6))
    assert shrunk.value[2] < p.value[2] - 10


def test_the_motion_goes_through_json_exactly_and_refuses_malformed_state() -> None:
    m = Motion.start(_box(10, 20), 1.5).predict(1.6).update(_box(13, 22))
    back = Motion.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back == m and np.array_equal(back.mean, m.mean)
    assert m.distance(m.box()) == pytest.approx(0, abs=1e-9) and m.distance(_box(300, 300)) > 10
    with pytest.raises(InvalidInputError, match="malformed"):
        Motion.from_dict({**m.to_dict(), "value": [1.0] * 7})
    with pytest.raises(InvalidInputError, match="4 finite values"):
        Motion.from_dict({**m.to_dict(), "rate": [float("nan")] * 4})
    with pytest.raises(InvalidInputError, match="malformed"):
        Motion.from_dict({"value": [0] * 4})


def _unit(rng: np.random.Generator, n: int = 16) -> np.ndarray:
    v = rng.standard_normal(n).astype(np.float32)
    return v / np.linalg.norm(v)


def test_the_memory_is_bounded_keeps_the_first_and_takes_only_new_views() -> None:
    rng = np.random.default_rng(0)
    first = _unit(rng)
    memory = Memory.start(first, 0, 1000, purity=1.0)
    assert memory.clear and memory.match(first) == pytest.approx(1.0)
    same = memory.remember(first, 1, 1.0, 1000, size=4, novelty=0.95)
    assert same.frames == (0,)  # not novel: not added, but counted in the typical match
    for k in range(2, 12):
        v = _unit(rng)
        memory = memory.remember(v, k, memory.match(v), 1000, size=4, novelty=0.95)
    assert memory.frames == (0, 9, 10, 11) and np.array_equal(memory.vectors[0], first)
    assert memory.typical < 1.0
    assert not memory.whole(200, 1.0) and not memory.whole(1000, 0.5) and memory.whole(1000, 0.95)
    for binary in (False, True):
        back = Memory.from_dict(
            json.loads(json.dumps(memory.to_dict())) if not binary else memory.to_dict(True)
        )
        assert np.array_equal(back.vectors, memory.vectors) and back == Memory(
            back.vectors, memory.frames, memory.typical, memory.area, memory.clear
        )
    with pytest.raises(InvalidInputError, match="one frame per vector"):
        Memory.from_dict({**memory.to_dict(), "frames": [0]})
    with pytest.raises(InvalidInputError, match="shape up to"):
        Memory.from_dict({**memory.to_dict(), "vectors": {"shape": [65, 16], "dtype": "float32", "data": ""}})


def test_frame_features_pool_under_a_mask_and_map_similarity() -> None:
    g = 16  # S = 256: features 16 x 16, logits 64 x 64
    grid = np.zeros((8, g, g), np.float32)
    grid[0] = 1.0  # background
    grid[:, 4:7, 5:9] = 0
    grid[3, 4:7, 5:9] = 1.0  # an object of cells rows 4-6, cols 5-8
    frame = FrameFeatures(torch.from_numpy(grid), (192, 256), (240, 320))
    assert frame.usable and frame.valid_cells() == (12, 16)
    logits = np.full((64, 64), -8.0, np.float32)
    logits[16:28, 20:36] = 8.0  # exactly those cells
    vector, purity = frame.pool(logits)  # type: ignore[misc]
    assert purity == 1.0 and np.argmax(vector) == 3 and vector[3] == pytest.approx(1.0)
    memory = Memory.start(vector, 0, 100, purity)
    sims = frame.similarity(memory)
    assert sims[5, 6] == pytest.approx(1.0) and sims[0, 0] == pytest.approx(0.0) and (sims[12:] == -1).all()
    (row, col, _), *_ = frame.peaks(sims, 2, 0.5)
    assert (row, col) == (5, 6) or (row, col) == (5, 7)  # inside, not on the edge
    x, _, sim = frame.best_in(memory, (0.0, 0.0, 320.0, 240.0))  # type: ignore[misc]
    assert sim == pytest.approx(1.0) and 5 * 16 * 320 / 256 <= x <= 9 * 16 * 320 / 256
    assert frame.best_in(memory, (0.0, 0.0, 5.0, 5.0)) is None  # no cell's centre in the box
    assert not FrameFeatures(torch.zeros(1, 1, 1), (192, 256), (240, 320)).usable
    assert not FrameFeatures(torch.zeros(8, g, g), (192, 256), (240, 320)).usable  # all zero
