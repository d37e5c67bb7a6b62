"""The tracker against a stub segmenter that knows the true masks of a synthetic 320x240 scene."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco

from pipeline.errors import InvalidInputError, PromptError
from pipeline.masks.mask_prompt import MaskPrompt, mask_logits
from pipeline.masks.rle import mask_bbox as mask_box
from pipeline.prompts import Prompt, TrackSpec, parse_mask_prompt
from pipeline.tracking import (
    Tracker,
    TrackEvent,
    TrackingConfig,
    TrackPromptError,
    TrackResult,
    TrackStatus,
)
from pipeline.tracking.tracker import grow_box, peak_point
from tests.fixtures.stub_segmenter import StubSegmenter, disc

SIZE = (240, 320)  # (H, W)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def point(x: float, y: float) -> Prompt:
    return Prompt(points=((x, y),), labels=(1,))


def wandering(t: int) -> tuple[float, float]:
    """Left to right across the frame in 100 frames, bobbing up and down."""
    return 40 + 2.4 * t, 120 + 40 * math.sin(2 * math.pi * t / 50)


def run(
    tracker: Tracker, stub: StubSegmenter, frames: range
) -> dict[int, tuple[list[TrackResult], list[TrackEvent]]]:
    return {t: tracker.step(t, stub.embedding(t)) for t in frames}


def test_single_point_follows_a_moving_disc_for_100_frames() -> None:
    stub = StubSegmenter([disc(SIZE, wandering, 20)])
    tracker = Tracker(stub)
    tracker.add(TrackSpec(1, point(*wandering(0))))
    for t in range(100):
        results, events = tracker.step(t, stub.embedding(t))
        assert [r.track_id for r in results] == [1]
        r = results[0]
        assert r.status is TrackStatus.ACTIVE
        assert r.mask.shape == SIZE and r.mask.dtype == bool
        assert iou(r.mask, stub.truth(t)[0]) >= 0.9, f"frame {t}"
        assert r.box == mask_box(stub.truth(t)[0])
        assert events == ([TrackEvent("added", 1, 0, "starts at frame 0")] if t == 0 else [])
    # Frame 0 decodes the user's point (multimask, as Prompt.multimask says); later frames the box
    # where the motion predicts the disc, grown and clipped, with the previous logits moved there,
    # multimask. The stub's embedding has no features: no memory, no points from it.
    first = stub.calls[0][0]
    assert first.prompt == point(*wandering(0)) and first.mask_input is None and first.use_multimask
    for t in range(1, 100):
        (req,) = stub.calls[t]
        now = mask_box(stub.truth(t)[0])
        assert now is not None and req.prompt.box is not None and req.prompt.points == ()
        x0, y0, x1, y1 = req.prompt.box
        assert min(x0, y0) >= 0 and x1 <= SIZE[1] and y1 <= SIZE[0]
        if t >= 3:  # the velocity is known: the predicted box holds the disc where it is now
            assert x0 <= now[0] and y0 <= now[1] and x1 >= now[2] and y1 >= now[3], f"frame {t}"
        assert req.multimask is True
        if t == 1:  # the speed is not known yet: where the last mask was says little
            assert req.mask_input is None
            continue
        assert req.mask_input is not None
        moved = (req.mask_input > 0) & (stub.low_res(stub.truth(t)[0]) > 0)
        assert moved.sum() >= 0.6 * (req.mask_input > 0).sum(), f"frame {t}: logits not moved with the disc"


def test_object_leaving_the_frame_makes_the_track_search_and_report_lost_after_lost_after_frames() -> None:
    # A large min_area makes the last frames in view poor while their masks are not yet empty.
    config = TrackingConfig(lost_after=5, min_area=600, coast_s=0.45)
    stub = StubSegmenter([disc(SIZE, lambda t: (250 + 3 * t, 120), 20)])
    tracker = Tracker(stub, config)
    tracker.add(1, point(250, 120))
    out = run(tracker, stub, range(40))
    first_poor = next(t for t in range(40) if np.count_nonzero(stub.truth(t)[0]) < config.min_area)
    lost_at = first_poor + config.lost_after - 1
    lost_events = [(t, e) for t, (_, events) in out.items() for e in events if e.kind == "lost"]
    assert [(t, e.track_id, e.frame_index) for t, e in lost_events] == [(lost_at, 1, lost_at)]
    for t, (results, _) in out.items():
        (r,) = results
        if t < first_poor:
            assert r.status is TrackStatus.ACTIVE, f"frame {t}"
            np.testing.assert_array_equal(r.mask, stub.truth(t)[0])
        else:  # not taken: an empty mask, the track searching from the first such frame
            assert r.status is TrackStatus.SEARCHING, f"frame {t}"
            assert r.score == 0.0 and r.box is None and not r.mask.any() and r.mask.shape == SIZE
    # Searching, it coasts along its motion's prediction (no features here to search with) for
    # coast_s seconds of frame time (frames are 1/30 s apart without times), then decodes nothing.
    # The last good frame is first_poor - 1; frames come 1/30 s apart: 13 frames fit in 0.45 s.
    coasting = range(first_poor, first_poor - 1 + 13 + 1)
    assert len(stub.calls) == coasting.stop
    for t in coasting[1:]:
        (req,) = stub.calls[t]
        assert req.prompt.box is not None and req.prompt.box[2] == SIZE[1]  # carried to the right edge
    assert tracker.tracks[1].status is TrackStatus.SEARCHING


def hide_and_seek(t: int) -> tuple[float, float]:
    """Top-left before frame 20, hidden for frames 20-39, bottom-right from frame 40."""
    return (60 + 2 * t, 80) if t < 20 else (220 - t, 170)


def hide_and_seek_stub() -> StubSegmenter:
    return StubSegmenter([disc(SIZE, hide_and_seek, 18, visible=lambda t: not 20 <= t < 40)])


def test_reprompt_recovers_a_lost_track() -> None:
    stub = hide_and_seek_stub()
    tracker = Tracker(stub, TrackingConfig(lost_after=5))
    tracker.add(1, point(*hide_and_seek(0)))
    out = run(tracker, stub, range(45))
    assert [e.frame_index for _, (_, ev) in out.items() for e in ev if e.kind == "lost"] == [24]
    # Back in view far from where it went (and no features to know it by): still searching.
    assert all(out[t][0][0].status is TrackStatus.SEARCHING for t in range(20, 45))

    tracker.reprompt(1, point(*hide_and_seek(45)))
    out = run(tracker, stub, range(45, 80))
    assert [(e.kind, e.frame_index) for e in out[45][1]] == [("reprompted", 45), ("found", 45)]
    assert stub.calls[-35][0].prompt == point(*hide_and_seek(45))
    for t in range(45, 80):
        (r,) = out[t][0]
        assert r.status is TrackStatus.ACTIVE and iou(r.mask, stub.truth(t)[0]) >= 0.9, f"frame {t}"
    assert all(not events for t, (_, events) in out.items() if t > 45)


def test_reprompt_that_misses_keeps_the_track_lost_and_trying_its_prompt() -> None:
    stub = hide_and_seek_stub()
    tracker = Tracker(stub, TrackingConfig(lost_after=3))
    tracker.add(1, point(*hide_and_seek(0)))
    run(tracker, stub, range(25))
    tracker.reprompt(1, point(10, 230))  # nothing there
    out = run(tracker, stub, range(25, 32))
    assert [c[0].prompt for c in stub.calls[-7:]] == [point(10, 230)] * 7  # tried every frame
    assert all(out[t][0][0].status is TrackStatus.LOST for t in out)
    kinds = [(e.kind, e.frame_index) for t in out for e in out[t][1]]
    assert kinds == [("reprompted", 25), ("lost", 27)]


def test_track_with_a_later_start_frame_gives_results_from_that_frame_only() -> None:
    stub = StubSegmenter([disc(SIZE, wandering, 20)])
    tracker = Tracker(stub)
    tracker.add(7, point(*wandering(20)), start_frame=20)
    out = run(tracker, stub, range(40))
    for t in range(20):
        assert out[t][0] == []
    assert stub.calls[0][0].prompt == point(*wandering(20))  # no decode before frame 20
    assert len(stub.calls) == 20
    for t in range(20, 40):
        (r,) = out[t][0]
        assert r.track_id == 7 and iou(r.mask, stub.truth(t)[0]) >= 0.9


def two_discs_stub() -> StubSegmenter:
    return StubSegmenter(
        [disc(SIZE, lambda t: (30 + 2.5 * t, 60), 18), disc(SIZE, lambda t: (290 - 2.5 * t, 180), 22)]
    )


def test_two_tracks_are_decoded_in_one_call_per_frame() -> None:
    stub = two_discs_stub()
    tracker = Tracker(stub)
    tracker.add(1, point(30, 60))
    tracker.add(2, Prompt(box=(262, 152, 318, 208)))
    out = run(tracker, stub, range(100))
    assert [len(c) for c in stub.calls] == [2] * 100
    for t, (results, _) in out.items():
        assert [r.track_id for r in results] == [1, 2]
        for r, truth in zip(results, stub.truth(t), strict=True):
            assert iou(r.mask, truth) >= 0.9, f"frame {t}, track {r.track_id}"


def test_remove_stops_results() -> None:
    stub = two_discs_stub()
    tracker = Tracker(stub)
    tracker.add(1, point(30, 60))
    tracker.add(2, point(290, 180))
    run(tracker, stub, range(10))
    tracker.remove(1)
    out = run(tracker, stub, range(10, 20))
    assert out[10][1] == [TrackEvent("removed", 1, 10)]
    assert all([r.track_id for r in results] == [2] for results, _ in out.values())
    assert [len(c) for c in stub.calls[10:]] == [1] * 10
    assert list(tracker.tracks) == [2]


def test_ids_and_frame_order_are_checked() -> None:
    stub = two_discs_stub()
    tracker = Tracker(stub)
    tracker.add(1, point(30, 60))
    with pytest.raises(InvalidInputError, match="track 1 already exists"):
        tracker.add(TrackSpec(1, point(290, 180)))
    with pytest.raises(InvalidInputError, match="no track 5"):
        tracker.remove(5)
    with pytest.raises(InvalidInputError, match="no track 5"):
        tracker.reprompt(5, point(1, 1))
    with pytest.raises(InvalidInputError, match="prompt is needed"):
        tracker.add(2)
    with pytest.raises(InvalidInputError, match="not both"):
        tracker.add(TrackSpec(2, point(1, 1)), point(1, 1))
    tracker.step(3, stub.embedding(3))
    with pytest.raises(InvalidInputError, match="frames must increase"):
        tracker.step(3, stub.embedding(3))


def test_a_prompt_outside_the_frame_fails_its_track_before_anything_changes() -> None:
    stub = two_discs_stub()
    tracker = Tracker(stub)
    tracker.add(1, point(30, 60))
    tracker.add(2, point(400, 60), start_frame=2)  # the frame is 320 wide
    run(tracker, stub, range(2))
    before = tracker.snapshot()
    with pytest.raises(
        TrackPromptError, match=r"track 2, frame 2: point 400,60 lies outside the 320x240"
    ) as info:
        tracker.step(2, stub.embedding(2))
    assert isinstance(info.value, PromptError)
    assert (info.value.track_id, info.value.frame_index) == (2, 2)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (str(copy), copy.track_id, copy.frame_index) == (str(info.value), 2, 2)
    assert tracker.snapshot() == before and len(stub.calls) == 2
    tracker.remove(2)
    results, events = tracker.step(2, stub.embedding(2))  # the same frame again, now fine
    assert [r.track_id for r in results] == [1] and events == [TrackEvent("removed", 2, 2)]


def test_peak_point_prompts_lie_on_the_object_where_it_moved() -> None:
    stub = StubSegmenter([disc(SIZE, wandering, 20)])
    tracker = Tracker(stub, TrackingConfig(add_peak_point=True, use_mask_input=False))
    tracker.add(1, point(*wandering(0)))
    out = run(tracker, stub, range(60))
    for t in range(1, 60):
        (req,) = stub.calls[t]
        assert req.mask_input is None and req.prompt.labels == (1,)
        ((x, y),) = req.prompt.points
        if t >= 3:  # the velocity is known: the previous logits' peak, moved as the motion predicts,
            # lies where the disc is now (the peak is the first of equal logits: on the disc's
            # edge, so within one low-resolution cell, 5 px here)
            near = np.argwhere(stub.truth(t)[0])
            assert np.abs(near - [y, x]).max(axis=1).min() <= 5, f"frame {t}: peak ({x}, {y}) off the disc"
        assert iou(out[t][0][0].mask, stub.truth(t)[0]) >= 0.9


def test_box_and_peak_helpers() -> None:
    mask = np.zeros((10, 20), dtype=bool)
    assert mask_box(mask) is None
    mask[5, 3] = True
    mask[7, 9] = True
    assert mask_box(mask) == (3, 5, 10, 8)
    assert grow_box((3, 5, 10, 8), 0.1, 4.0, 20, 10) == (0.0, 1.0, 14.0, 10.0)
    assert grow_box((100, 100, 200, 150), 0.5, 4.0, 1000, 1000) == (50.0, 75.0, 250.0, 175.0)
    logits = np.full((64, 64), -1.0, dtype=np.float32)
    assert peak_point(logits, (192, 256), (240, 320)) is None
    logits[60, 0] = 9.0  # in the padding (rows >= 48): ignored
    assert peak_point(logits, (192, 256), (240, 320)) is None
    logits[10, 20] = 5.0  # cell centre (82, 42) in the 256x192 input → (102.5, 52.5) in 320x240
    assert peak_point(logits, (192, 256), (240, 320)) == pytest.approx((102.5, 52.5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"box_margin": -0.1}, "box_margin must be >= 0"),
        ({"box_margin": float("nan")}, "box_margin must be a finite number"),
        ({"min_margin": -1}, "min_margin must be >= 0"),
        ({"min_score": 1.5}, r"min_score must be in \[0, 1\]"),
        ({"min_score": "high"}, "min_score must be a finite number"),
        ({"min_area": -1}, "min_area must be an integer >= 0"),
        ({"min_area": 2.5}, "min_area must be an integer >= 0"),
        ({"lost_after": 0}, "lost_after must be an integer >= 1"),
        ({"lost_after": True}, "lost_after must be an integer >= 1"),
        ({"use_mask_input": "yes"}, "use_mask_input must be true or false"),
        ({"add_peak_point": 1}, "add_peak_point must be true or false"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        TrackingConfig(**kwargs)  # type: ignore[arg-type]


def test_config_defaults_and_coercion() -> None:
    config = TrackingConfig(box_margin=0, min_score=1)
    assert config.box_margin == 0.0 and isinstance(config.box_margin, float)
    assert config.min_score == 1.0 and TrackingConfig().lost_after == 5


def test_snapshot_restore_continues_identically() -> None:
    def make() -> tuple[Tracker, StubSegmenter]:
        stub = hide_and_seek_stub()
        stub.objects.append(disc(SIZE, lambda t: (290 - 2 * t, 40), 15))
        return Tracker(stub, TrackingConfig(lost_after=4, add_peak_point=True)), stub

    original, stub_a = make()
    original.add(1, point(*hide_and_seek(0)))
    original.add(2, point(290, 40))
    original.add(3, point(*hide_and_seek(45)), start_frame=45)
    run(original, stub_a, range(22))  # track 1 mid-way through a poor streak
    original.reprompt(2, point(290 - 2 * 22, 40))  # its event is pending at the snapshot
    data = json.loads(json.dumps(original.snapshot()))  # plain data
    assert original.tracks[1].poor_frames == 2 and data["pending_events"] == [
        {"kind": "reprompted", "track_id": 2, "detail": ""}
    ]

    resumed, stub_b = make()
    resumed.restore(data)
    assert resumed.snapshot() == original.snapshot()
    assert resumed.last_frame == 21
    seen = []
    for t in range(22, 70):
        if t == 50:
            for tracker in (original, resumed):
                tracker.reprompt(1, point(*hide_and_seek(50)))
        a_results, a_events = original.step(t, stub_a.embedding(t))
        b_results, b_events = resumed.step(t, stub_b.embedding(t))
        assert a_events == b_events
        seen += [(e.kind, e.track_id, e.frame_index) for e in a_events]
        assert len(a_results) == len(b_results)
        for a, b in zip(a_results, b_results, strict=True):
            assert (a.track_id, a.status, a.score, a.box) == (b.track_id, b.status, b.score, b.box)
            np.testing.assert_array_equal(a.mask, b.mask)
    assert resumed.snapshot() == original.snapshot()
    # Track 3 follows the very object track 1 is re-prompted on: one object has one track, and
    # track 3, which has followed it since frame 45, keeps it.
    assert seen == [
        ("reprompted", 2, 22),
        ("lost", 1, 23),
        ("reprompted", 1, 50),
        ("found", 1, 50),
        ("lost", 1, 54),
    ]


def test_a_binary_snapshot_holds_the_same_state_with_raw_logits() -> None:
    stub = two_discs_stub()
    tracker = Tracker(stub)
    tracker.add(1, point(30, 60))
    tracker.add(2, point(290, 180))
    run(tracker, stub, range(3))
    assert all(t.logits is not None for t in tracker.tracks.values())
    text, binary = tracker.snapshot(), tracker.snapshot(binary=True)
    for t, b in zip(text["tracks"], binary["tracks"], strict=True):
        assert isinstance(b["logits"]["data"], bytes)
        assert b["logits"]["data"] == tracker.tracks[t["id"]].logits.astype("<f4").tobytes()
        assert {**b, "logits": None} == {**t, "logits": None}
    resumed = Tracker(two_discs_stub())
    resumed.restore(binary)
    assert resumed.snapshot() == text


def test_restore_rejects_malformed_snapshots() -> None:
    tracker = Tracker(two_discs_stub())
    with pytest.raises(InvalidInputError, match="version 1"):
        tracker.restore({"version": 99, "tracks": []})
    with pytest.raises(InvalidInputError, match="malformed"):
        tracker.restore({"version": 1, "tracks": [{"id": 1}]})
    good = Tracker(two_discs_stub())
    good.add(1, point(30, 60))
    data = good.snapshot()
    data["tracks"] = data["tracks"] * 2
    with pytest.raises(InvalidInputError, match="appears twice"):
        tracker.restore(data)
    assert tracker.tracks == {}


def _mask_prompt(mask: np.ndarray, form: str, folder: Path) -> Prompt:
    """A prompt from ``mask`` as a user gives it: a PNG (``--mask-prompt``) or a COCO RLE (API)."""
    if form == "png":
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "object.png")
        return parse_mask_prompt(f"1={folder / 'object.png'}").prompt
    rle = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    return Prompt.from_dict({"mask": {"size": list(rle["size"]), "counts": rle["counts"].decode()}})


@pytest.mark.parametrize("form", ["png", "rle"])
def test_a_mask_prompt_starts_a_track_that_follows_its_object(form: str, tmp_path: Path) -> None:
    stub = two_discs_stub()
    tracker = Tracker(stub)
    first = stub.truth(0)[1]  # the disc coming from the right
    tracker.add(1, _mask_prompt(first, form, tmp_path))
    out = run(tracker, stub, range(100))
    for t, (results, _) in out.items():
        (r,) = results
        assert r.status is TrackStatus.ACTIVE and iou(r.mask, stub.truth(t)[1]) >= 0.9, f"frame {t}"
    # Frame 0: the mask as SAM's mask input and the box around it, one mask out; then as any track.
    (request,) = stub.calls[0]
    assert request.prompt == Prompt(box=tuple(float(v) for v in mask_box(first)))  # type: ignore[arg-type,misc]
    assert request.mask_input is not None and not request.use_multimask
    assert np.array_equal(request.mask_input, mask_logits(first, stub.input_size, stub.low_res_size))
    (then,) = stub.calls[1]
    assert then.mask_input is None  # no motion known yet: the last mask, unmoved, would mislead
    (after,) = stub.calls[2]
    assert (
        after.mask_input is not None
        and (after.mask_input > 0).sum() == (stub.low_res(stub.truth(1)[1]) > 0).sum()
    )
    # The box of frame 0's mask, grown by the margin and by the new motion's uncertainty.
    x0, y0, x1, y1 = then.prompt.box  # type: ignore[misc]
    g0, h0, g1, h1 = grow_box(mask_box(stub.truth(0)[1]), 0.1, 4.0, 320, 240)  # type: ignore[arg-type]
    assert x0 < g0 and y0 < h0 and x1 >= g1 and y1 > h1  # (x1: clipped at the frame's edge)
    assert (y0 + y1) / 2 == pytest.approx((h0 + h1) / 2)


def test_a_track_re_prompted_with_a_mask_follows_the_new_object(tmp_path: Path) -> None:
    stub = two_discs_stub()
    tracker = Tracker(stub)
    tracker.add(1, point(30, 60))
    run(tracker, stub, range(10))
    tracker.reprompt(1, _mask_prompt(stub.truth(10)[1], "rle", tmp_path))
    out = run(tracker, stub, range(10, 60))
    assert out[10][1] == [TrackEvent("reprompted", 1, 10)]
    assert stub.calls[10][0].mask_input is not None and stub.calls[10][0].multimask is False
    for t in range(10, 60):
        assert iou(out[t][0][0].mask, stub.truth(t)[1]) >= 0.9, f"frame {t}"
    # The mask prompt is kept in the tracker's snapshot (a resumed job decodes it again if needed).
    again = Tracker(stub)
    again.restore(json.loads(json.dumps(tracker.snapshot())))
    assert again.tracks[1].prompt == tracker.tracks[1].prompt


def test_a_mask_prompt_of_another_size_fails_its_track_before_anything_changes() -> None:
    stub = two_discs_stub()
    tracker = Tracker(stub)
    tracker.add(1, point(30, 60))
    tracker.add(2, Prompt(mask=MaskPrompt.from_array(np.ones((120, 160), bool))), start_frame=1)
    run(tracker, stub, range(1))
    before = tracker.snapshot()
    with pytest.raises(
        TrackPromptError, match="track 2, frame 1: the mask prompt is 160x120 but the frame is 320x240"
    ):
        tracker.step(1, stub.embedding(1))
    assert tracker.snapshot() == before and len(stub.calls) == 1
