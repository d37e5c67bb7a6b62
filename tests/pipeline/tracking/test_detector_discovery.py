"""Discovery by a detector in the tracker: the reference detector's boxes (real ONNX Runtime) on
the entering scene start one track for each disc of the classes asked, labelled with its class,
within two detection periods of entering; the labels are in the results and survive a snapshot;
a paused job and a job without a detector take no boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluation.blobs import COLOURS
from pipeline.evaluation.reference import ReferenceSegmenter
from pipeline.evaluation.scenes import Scene, entering_scene
from pipeline.model.detector import Detector, open_detector
from pipeline.tracking import Tracker, TrackEvent, TrackStatus
from pipeline.tracking.discovery import DiscoveryConfig, detection_frame

pytestmark = pytest.mark.slow

SEGMENTER = ReferenceSegmenter(256)
EVERY_S = 0.5
NAMES = list(COLOURS)


def _follow(
    scene: Scene, tracker: Tracker, detector: Detector, frames: range
) -> tuple[dict[int, dict[int, tuple[int, str | None]]], list[TrackEvent]]:
    """Per frame, each active track's disc and label; every event. Detection frames as the source
    host picks them (one every EVERY_S of the scene's time)."""
    owners: dict[int, dict[int, tuple[int, str | None]]] = {}
    events: list[TrackEvent] = []
    step = scene.times[1] - scene.times[0]
    tracker_labels: dict[int, str | None] = {}  # a track's label never changes, to its last result
    for i in frames:
        image, visible = scene.render(i)
        [embedding] = SEGMENTER.encode([image])
        t = scene.times[i]
        found = detector.detect(image, image.shape[:2]) if detection_frame(t, t - step, EVERY_S) else None
        plan = tracker.plan(i, embedding, t, found)
        batch = SEGMENTER.decode(embedding, plan.requests) if plan.requests else None
        results, evs = tracker.commit(plan, batch)
        events += evs
        owners[i] = {}
        for r in results:
            assert r.label == tracker_labels.setdefault(r.track_id, r.label), (i, r.track_id, r.label)
            if r.status is TrackStatus.ACTIVE:
                best = max(visible, key=lambda k: np.count_nonzero(r.mask & visible[k]))
                if np.count_nonzero(r.mask & visible[best]) >= 0.5 * np.count_nonzero(r.mask):
                    owners[i][r.track_id] = (best, r.label)
    return owners, events


def test_only_the_classes_asked_get_tracks_each_once_labelled(blob_detector: Path) -> None:
    scene = entering_scene(seconds=6.0)
    config = DiscoveryConfig(every_s=EVERY_S, detector=str(blob_detector), classes=("red", "blue", "magenta"))
    detector = open_detector(blob_detector, config.detector_score, config.classes)
    tracker = Tracker(SEGMENTER, discovery=config)
    owners, events = _follow(scene, tracker, detector, range(len(scene.times)))
    tracks_of: dict[int, set[int]] = {}
    first: dict[int, float] = {}
    for i, held in owners.items():
        discs = [disc for disc, _ in held.values()]
        assert len(discs) == len(set(discs)), f"frame {i}: one disc, two tracks: {held}"
        for tid, (disc, label) in held.items():
            assert label == NAMES[disc - 1], (tid, disc, label)
            tracks_of.setdefault(disc, set()).add(tid)
            first.setdefault(disc, scene.times[i])
    assert sorted(tracks_of) == [1, 3, 5]  # red, blue, magenta: not green, yellow or cyan
    assert all(len(t) == 1 for t in tracks_of.values()), tracks_of
    for disc in tracks_of:
        assert first[disc] - scene.first_shown(disc, 1 / 3) <= 2 * EVERY_S + 1e-9, disc
    discovered = [e for e in events if e.kind == "discovered"]
    assert [e.data["label"] for e in discovered] == ["red", "blue", "magenta"]  # type: ignore[index]
    assert all(e.data and e.data["by"] == "detector" and "as 'red'" in e.detail for e in discovered[:1])


def test_labels_survive_a_snapshot_and_the_resumed_tracker_does_the_same(blob_detector: Path) -> None:
    scene = entering_scene(count=3, seconds=4.0)
    config = DiscoveryConfig(every_s=EVERY_S, detector=str(blob_detector), forget_s=1.0)
    detector = open_detector(blob_detector)
    whole = Tracker(SEGMENTER, discovery=config)
    owners, events = _follow(scene, whole, detector, range(len(scene.times)))
    first = Tracker(SEGMENTER, discovery=config)
    _, before = _follow(scene, first, detector, range(23))
    resumed = Tracker(SEGMENTER, discovery=config)
    resumed.restore(json.loads(json.dumps(first.snapshot())))
    owners_after, after = _follow(scene, resumed, detector, range(23, len(scene.times)))
    assert [e.to_dict() for e in before + after] == [e.to_dict() for e in events]
    assert all(owners_after[i] == owners[i] for i in owners_after)
    assert {label for held in owners_after.values() for _, label in held.values()} == {"red", "green", "blue"}


def test_paused_or_gridded_trackers_take_no_boxes(blob_detector: Path) -> None:
    scene = entering_scene(count=2, seconds=3.0)
    detector = open_detector(blob_detector)
    paused = Tracker(SEGMENTER, discovery=DiscoveryConfig(every_s=EVERY_S, detector=str(blob_detector)))
    paused.discovering = False
    _, events = _follow(scene, paused, detector, range(len(scene.times)))
    assert not [e for e in events if e.kind == "discovered"]
    grid = Tracker(SEGMENTER, discovery=DiscoveryConfig(every_s=EVERY_S, grid=4, min_area=10**6))
    _, events = _follow(scene, grid, detector, range(len(scene.times)))  # boxes given, grid's job
    assert not [e for e in events if e.kind == "discovered"]


def test_detector_settings_are_checked() -> None:
    from pipeline.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="classes need a detector"):
        DiscoveryConfig(classes=("red",))
    with pytest.raises(InvalidInputError, match="a grid or a detector, not both"):
        DiscoveryConfig(grid=8, detector="d.onnx")
    with pytest.raises(InvalidInputError, match="detector_score must be in"):
        DiscoveryConfig(detector="d.onnx", detector_score=1.5)
    with pytest.raises(InvalidInputError, match="classes must be a list"):
        DiscoveryConfig.from_dict({"detector": "d.onnx", "classes": "red"})
    config = DiscoveryConfig.from_dict({"detector": "d.onnx", "classes": ["red"], "detector_score": 0.5})
    assert DiscoveryConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.for_device(True).grid is None  # a detector needs no grid


def test_a_track_whose_object_left_is_not_given_the_next_one_at_the_edge(blob_detector: Path) -> None:
    """Red leaves on the right; green, not tracked, follows it out a second later, 40 px lower. Red's
    track coasts along its motion out of the frame: a sliver of green at the edge, too thin to be
    judged by its look, is not red (motion alone re-finds only where the object is in sight)."""
    scene = entering_scene(count=2, seconds=9.0)
    config = DiscoveryConfig(every_s=EVERY_S, detector=str(blob_detector), classes=("red",), forget_s=2.0)
    tracker = Tracker(SEGMENTER, discovery=config)
    owners, events = _follow(
        scene, tracker, open_detector(blob_detector, classes=("red",)), range(len(scene.times))
    )
    held = {disc for frame in owners.values() for disc, _ in frame.values()}
    assert held == {1}, owners
    assert [e.kind for e in events if e.track_id == 1 and e.kind in ("found", "ended")] == ["ended"]
