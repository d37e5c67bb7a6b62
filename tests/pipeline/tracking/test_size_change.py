"""A track carries over when its stream's encoder size changes (``image_size: auto``): the tracker
switches models between frames and its low-resolution logits are resampled, not lost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.evaluation.reference import ReferenceSegmenter
from pipeline.evaluation.scenes import bench_scenes, iou
from pipeline.prompts import TrackSpec
from pipeline.tracking import Tracker, TrackStatus
from pipeline.tracking.arrays import resize_square

SEGMENTERS = {size: ReferenceSegmenter(size) for size in (256, 512, 768, 1024)}


def follow(scene_name: str, size_at: dict[int, int]) -> tuple[float, list[str]]:
    """Mean IoU over the visible frames of every tracked thing, and the events, with the encoder
    size of frame ``i`` the last ``size_at`` key at or before it."""
    scene = next(s for s in bench_scenes() if s.name == scene_name)
    first = SEGMENTERS[size_at[0]]
    tracker = Tracker(first)
    for tid in scene.tracked:
        tracker.add(TrackSpec(tid, scene.prompt(tid)))
    ious: list[float] = []
    events: list[str] = []
    size = size_at[0]
    for i in range(len(scene.times)):
        size = size_at.get(i, size)
        segmenter = SEGMENTERS[size]
        if tracker.segmenter is not segmenter:
            tracker.use(segmenter)
        image, visible = scene.render(i)
        [embedding] = segmenter.encode([image])
        results, evs = tracker.step(i, embedding, scene.times[i])
        events += [e.kind for e in evs]
        for r in results:
            if visible[r.track_id].any():
                ious.append(iou(r.mask, visible[r.track_id]) if r.status is TrackStatus.ACTIVE else 0.0)
    return float(np.mean(ious)), events


@pytest.mark.slow
@pytest.mark.parametrize("scene", ["fast", "crossing", "occlusion", "exit_reentry"])
def test_tracks_hold_through_size_changes_as_well_as_at_the_sizes_used(scene: str) -> None:
    # down the ladder and up again every few frames, through the scene's hard parts
    moving, events = follow(scene, {0: 1024, 4: 512, 8: 768, 12: 512, 16: 1024, 20: 512})
    fixed = {size: follow(scene, {0: size}) for size in (512, 768, 1024)}
    worst = min(j for j, _ in fixed.values())
    assert moving >= worst - 0.02, (moving, fixed)
    assert events == fixed[1024][1], (events, fixed)  # no track lost, or found, by a change


def test_use_resamples_every_tracks_logits_to_the_new_side() -> None:
    scene = bench_scenes()[0]
    tracker = Tracker(SEGMENTERS[1024])
    for tid in scene.tracked:
        tracker.add(TrackSpec(tid, scene.prompt(tid)))
    image, _ = scene.render(0)
    tracker.step(0, SEGMENTERS[1024].encode([image])[0])
    before = {tid: s.logits for tid, s in tracker.tracks.items()}
    assert all(v is not None and v.shape == (256, 256) for v in before.values())
    tracker.use(SEGMENTERS[256])
    for tid, state in tracker.tracks.items():
        assert state.logits is not None and state.logits.shape == (64, 64)
        # the object is where it was: the positive cells of the old logits, pooled 4 x 4
        old = before[tid]
        assert old is not None
        pooled = old.reshape(64, 4, 64, 4).mean(axis=(1, 3)) > 0
        assert iou(state.logits > 0, pooled) > 0.9


@pytest.mark.parametrize(("n", "side"), [(256, 64), (64, 256), (128, 192), (5, 5), (7, 3)])
def test_resize_square_is_bilinear_as_torch_interpolates(n: int, side: int) -> None:
    a = np.random.default_rng(n * side).normal(size=(n, n)).astype(np.float32)
    want = torch.nn.functional.interpolate(
        torch.from_numpy(a)[None, None], size=(side, side), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    got = resize_square(a, side)
    assert got.shape == (side, side) and got.dtype == np.float32 and not got.flags.writeable
    if side < n and n % side:  # torch's downsampling weights differ only at odd ratios' edges
        return
    np.testing.assert_allclose(got, want, atol=1e-4)
