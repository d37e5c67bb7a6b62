"""The null model's world: ellipses where the first prompts put them, cheap wherever prompts move."""

from __future__ import annotations

import numpy as np

from pipeline.model.null import NullModel
from pipeline.model.types import DecodeRequest
from pipeline.prompts import Prompt, TrackSpec
from pipeline.tracking import Tracker, TrackStatus


def _box(cx: float, cy: float, half: float = 30) -> DecodeRequest:
    return DecodeRequest(Prompt(box=(cx - half, cy - half, cx + half, cy + half)))


def test_objects_stay_where_the_first_prompts_put_them() -> None:
    model = NullModel(256)
    [e] = model.encode([np.zeros((720, 1280, 3), np.uint8)])
    first = model.decode(e, [_box(300, 300)]).masks[0]
    assert 0.09 < first.mean() < 0.11  # about a tenth of the frame
    near = model.decode(e, [_box(360, 330)]).masks[0]  # within the ellipse's long radius: the same
    np.testing.assert_array_equal(near, first)
    far = model.decode(e, [_box(900, 400)]).masks[0]  # a new object there
    assert not (far & first).all() and far[400, 900] and not far[300, 300]
    both = model.decode(e, [_box(310, 290), _box(905, 395)])
    np.testing.assert_array_equal(both.masks[0], first)
    np.testing.assert_array_equal(both.masks[1], far)


def test_tracks_on_the_null_model_stay_put_even_at_the_frames_edge() -> None:
    # A tracker's motion would carry off an object that went wherever it was prompted: the prompt
    # box, clipped at the frame's edge, has its centre moved inwards every frame.
    model = NullModel(1024)
    [e] = model.encode([np.zeros((720, 1280, 3), np.uint8)])
    tracker = Tracker(model)
    tracker.add(TrackSpec(1, Prompt(points=((213.0, 497.0),), labels=(1,))))
    tracker.add(TrackSpec(2, Prompt(box=(1131.0, 435.0, 1275.0, 579.0))))
    boxes = []
    for i in range(60):
        results, _ = tracker.step(i, e, i / 30)
        assert [r.status for r in results] == [TrackStatus.ACTIVE] * 2
        boxes.append([r.box for r in results])
    assert all(b == boxes[0] for b in boxes)
