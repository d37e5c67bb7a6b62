"""J and F as DAVIS defines them, checked against an established evaluator (vos-benchmark, which
runs davis2017-evaluation's formulas with OpenCV and scikit-image) on random masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.morphology import disk
from vos_benchmark.evaluator import Evaluator
from vos_benchmark.utils import _seg2bmap

from pipeline.evaluation.measures import (
    SequenceScore,
    boundary_f,
    boundary_map,
    dilate_disk,
    region_similarity,
    score_dataset,
    score_sequence,
)


def _blobs(rng: np.random.Generator, h: int, w: int, objects: int, p: float) -> np.ndarray:
    labels = np.zeros((h, w), np.uint8)
    yy, xx = np.ogrid[:h, :w]
    for o in range(1, objects + 1):
        for _ in range(int(rng.integers(1, 3))):
            if rng.random() < p:
                cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(2, max(3, h // 3))
                labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = o
    return labels


@pytest.mark.parametrize("seed", range(5))
def test_disk_dilation_and_boundaries_are_opencv_and_davis_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(40):
        h, w = int(rng.integers(1, 90)), int(rng.integers(1, 120))
        bmap = rng.random((h, w)) < rng.uniform(0, 0.2)
        radius = int(rng.integers(1, 14))
        expected = cv2.dilate(bmap.astype(np.uint8), disk(radius)).astype(bool)
        np.testing.assert_array_equal(dilate_disk(bmap, radius), expected)
        mask = rng.random((h, w)) < 0.5
        np.testing.assert_array_equal(boundary_map(mask), _seg2bmap(mask))


@pytest.mark.parametrize("seed", range(8))
def test_sequences_score_as_vos_benchmark_scores_them(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    h, w = int(rng.integers(30, 140)), int(rng.integers(30, 200))
    frames = [(_blobs(rng, h, w, 3, 0.7), _blobs(rng, h, w, 3, 0.7)) for _ in range(int(rng.integers(2, 9)))]
    reference = Evaluator()
    for prediction, truth in frames:
        reference.feed_frame(prediction, truth)
    j, f = reference.conclude()
    ours = score_sequence("seq", frames)
    assert sorted(ours.j) == sorted(j) and sorted(ours.f) == sorted(f)
    for obj in j:
        assert ours.j[obj] * 100 == pytest.approx(j[obj], abs=1e-9)
        assert ours.f[obj] * 100 == pytest.approx(f[obj], abs=1e-9)


def test_edge_cases_as_davis_defines_them() -> None:
    empty = np.zeros((20, 30), bool)
    block = np.zeros((20, 30), bool)
    block[4:12, 6:20] = True
    assert region_similarity(empty, empty) == 1.0 and boundary_f(empty, empty) == 1.0
    assert region_similarity(empty, block) == 0.0 and boundary_f(empty, block) == 0.0
    assert boundary_f(block, empty) == 0.0 and boundary_f(block, block) == 1.0
    # DAVIS's boundary of a mask that fills the frame is empty (seg2bmap): F 1 against nothing.
    assert boundary_f(np.ones((20, 30), bool), empty) == 1.0
    # An object only ever predicted (never in the truth) is not counted; one absent from the
    # prediction counts 0 on the frames the truth has it.
    truth = np.zeros((20, 30), np.uint8)
    truth[5:10, 5:10] = 1
    prediction = np.zeros((20, 30), np.uint8)
    prediction[0:3, 0:3] = 2
    score = score_sequence("s", [(prediction, truth)])
    assert score.j == {1: 0.0} and score.f == {1: 0.0}
    total = score_dataset([score, SequenceScore("t", {1: 1.0, 2: 0.5}, {1: 1.0, 2: 1.0})])
    assert (total.j, total.f, total.objects) == (pytest.approx(0.5), pytest.approx(2 / 3), 3)
    assert total.jf == pytest.approx((0.5 + 2 / 3) / 2)
