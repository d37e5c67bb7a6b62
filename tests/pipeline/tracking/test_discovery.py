"""Discovery by segment-everything, through the reference segmenter on synthetic scenes with ground
truth: objects that enter are found and followed, one track each; an object that leaves for good
has its track ended; an object hidden for a while is its track's again, not a new one; a snapshot
resumes to the same tracks; and the limits and settings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import InvalidInputError
from pipeline.evaluation.reference import ReferenceSegmenter
from pipeline.evaluation.scenes import ENTERING as COLOURS
from pipeline.evaluation.scenes import Scene, Thing, entering_scene
from pipeline.prompts import Prompt, TrackSpec
from pipeline.tracking import Tracker, TrackEvent, TrackingConfig, TrackStatus
from pipeline.tracking.discovery import DiscoveryConfig, Grid, grid_points, select, stability

SEGMENTER = ReferenceSegmenter(256)
EVERY_S = 0.5


def _entering(count: int = 6, seconds: float = 9.0, leave: bool = True) -> Scene:
    return entering_scene(count, seconds, leave=leave)


def _follow(
    scene: Scene, tracker: Tracker, frames: range
) -> tuple[dict[int, dict[int, int]], list[TrackEvent], list[list]]:
    """Per frame, each active track's thing (the one most of its mask is on); every event; every
    frame's results."""
    owners: dict[int, dict[int, int]] = {}
    events: list[TrackEvent] = []
    results_all = []
    for i in frames:
        image, visible = scene.render(i)
        [embedding] = SEGMENTER.encode([image])
        results, evs = tracker.step(i, embedding, scene.times[i])
        events += evs
        results_all.append(results)
        owners[i] = {}
        for r in results:
            if r.status is TrackStatus.ACTIVE:
                best = max(visible, key=lambda k: np.count_nonzero(r.mask & visible[k]))
                if np.count_nonzero(r.mask & visible[best]) >= 0.5 * np.count_nonzero(r.mask):
                    owners[i][r.track_id] = best
    return owners, events, results_all


@pytest.mark.slow
def test_objects_that_enter_are_found_once_each_and_end_when_they_leave() -> None:
    scene = _entering()
    tracker = Tracker(SEGMENTER, discovery=DiscoveryConfig(every_s=EVERY_S, grid=16, forget_s=1.0))
    owners, events, _ = _follow(scene, tracker, range(len(scene.times)))
    tracks_of: dict[int, set[int]] = {}
    first_held: dict[int, float] = {}
    for i, held in owners.items():
        things = list(held.values())
        assert len(things) == len(set(things)), f"frame {i}: one object, two tracks: {held}"
        for tid, thing in held.items():
            tracks_of.setdefault(thing, set()).add(tid)
            first_held.setdefault(thing, scene.times[i])
    assert sorted(tracks_of) == [1, 2, 3, 4, 5, 6], tracks_of
    assert all(len(tids) == 1 for tids in tracks_of.values()), tracks_of
    for thing in scene.things:
        late = first_held[thing.id] - scene.first_shown(thing.id, 1 / 3)
        assert late <= 2 * EVERY_S + 1e-9, (thing.id, late)
    discovered = [e for e in events if e.kind == "discovered"]
    assert len(discovered) == 6 and len({e.track_id for e in discovered}) == 6
    assert all(e.data and e.data["by"] == "grid" and e.data["score"] > 0.9 for e in discovered)
    # The first three have left for good (at ~6.5, 7.5 and 8.5 s); the first two tracks have ended,
    # a second after (forget_s).
    ended = {e.track_id: scene.times[e.frame_index] for e in events if e.kind == "ended"}
    first_two = {next(iter(tracks_of[k])) for k in (1, 2)}
    assert first_two <= set(ended), ended
    assert all(tid not in tracker.tracks for tid in ended)
    last = owners[len(scene.times) - 1]
    assert sorted(last.values()) == [4, 5, 6]


@pytest.mark.slow
def test_a_snapshot_resumes_to_the_same_tracks_and_events() -> None:
    scene = _entering(count=4, seconds=5.0)
    config = DiscoveryConfig(every_s=EVERY_S, grid=16, forget_s=1.0)
    whole = Tracker(SEGMENTER, discovery=config)
    _, events, results = _follow(scene, whole, range(len(scene.times)))
    first = Tracker(SEGMENTER, discovery=config)
    _, before, _ = _follow(scene, first, range(23))  # stopped between two discovery frames
    resumed = Tracker(SEGMENTER, discovery=config)
    resumed.restore(json.loads(json.dumps(first.snapshot())))
    _, after, results_after = _follow(scene, resumed, range(23, len(scene.times)))
    assert [e.to_dict() for e in before + after] == [e.to_dict() for e in events]
    for got, want in zip(results_after, results[23:], strict=True):
        assert [(r.track_id, r.status, r.box) for r in got] == [(r.track_id, r.status, r.box) for r in want]


@pytest.mark.parametrize("search", [True, False])
@pytest.mark.slow
def test_an_object_hidden_for_a_while_is_its_tracks_again_not_a_new_one(search: bool) -> None:
    # One disc, hidden from 1.5 s to 2.5 s (its track searches), seen again elsewhere: the track's
    # search finds it; without a search, the discovery frame that sees it hands it to the track.
    path = (
        (0.0, 60.0, 120.0),
        (1.5, 120.0, 120.0),
        (2.4, 120.0, 120.0),
        (2.5, 250.0, 60.0),
        (5.0, 250.0, 60.0),
    )
    disc = Thing(1, COLOURS[0], (40, 40), path, shown=((0.0, 1.5), (2.5, 9.0)))
    scene = Scene("hidden", (320, 240), tuple(k / 10 for k in range(45)), (disc,), tracked=())
    tracking = TrackingConfig(search=search)
    tracker = Tracker(SEGMENTER, tracking, DiscoveryConfig(every_s=EVERY_S, grid=16, forget_s=3.0))
    owners, events, _ = _follow(scene, tracker, range(len(scene.times)))
    ids = {tid for held in owners.values() for tid in held}
    assert len(ids) == 1, (ids, [e.to_dict() for e in events])
    assert [e.kind for e in events].count("discovered") == 1
    assert any(e.kind == "found" for e in events)  # re-found, its memory matched
    assert owners[len(scene.times) - 1] == {next(iter(ids)): 1}


@pytest.mark.slow
def test_prompted_tracks_keep_their_objects_and_discovered_ids_follow_theirs() -> None:
    scene = _entering(count=3, seconds=3.5, leave=False)
    tracker = Tracker(SEGMENTER, discovery=DiscoveryConfig(every_s=EVERY_S, grid=16))
    tracker.add(TrackSpec(7, Prompt(box=(0.0, 0.0, 60.0, 40.0)), start_frame=8))  # thing 1, once in
    owners, events, _ = _follow(scene, tracker, range(len(scene.times)))
    held = owners[len(scene.times) - 1]
    assert held[7] == 1
    discovered = sorted(e.track_id for e in events if e.kind == "discovered")
    assert discovered == [8, 9], discovered  # after the highest id in use; thing 1 is 7's
    assert sorted(held.values()) == [1, 2, 3]


@pytest.mark.slow
def test_limits_region_and_pause() -> None:
    scene = _entering(count=4, seconds=5.0, leave=False)
    # Only in the lower half (y >= 120): of the lanes at y 20, 60, 100 and 140, thing 4's.
    roi = DiscoveryConfig(every_s=EVERY_S, grid=16, roi=(0, 120, 320, 240))
    owners, _, _ = _follow(scene, Tracker(SEGMENTER, discovery=roi), range(len(scene.times)))
    assert set(owners[len(scene.times) - 1].values()) == {4}
    # At most two discovered tracks.
    capped = DiscoveryConfig(every_s=EVERY_S, grid=16, max_tracks=2)
    owners, events, _ = _follow(scene, Tracker(SEGMENTER, discovery=capped), range(len(scene.times)))
    kinds = [e.kind for e in events]
    assert len(owners[len(scene.times) - 1]) == 2 and kinds.count("discovered") == 2
    assert kinds.count("discovery_full") == 1  # told once, while nothing ends
    paused = Tracker(SEGMENTER, discovery=DiscoveryConfig(every_s=EVERY_S, grid=16))
    paused.discovering = False
    owners, events, _ = _follow(scene, paused, range(len(scene.times)))
    assert not any(owners.values()) and not events


def test_settings_are_checked_naming_the_bad_one() -> None:
    assert DiscoveryConfig.from_dict(True) == DiscoveryConfig()
    # The grid, unless given, is the device's: a CPU decodes each point ~25 ms at 1024.
    assert (DiscoveryConfig().for_device(True).grid, DiscoveryConfig().for_device(False).grid) == (16, 8)
    assert DiscoveryConfig(grid=4).for_device(True).grid == 4
    assert Tracker(SEGMENTER, discovery=DiscoveryConfig()).discovery == DiscoveryConfig(grid=8)
    assert DiscoveryConfig.from_dict({"grid": 4, "roi": [0, 0, 10, 10]}).roi == (0.0, 0.0, 10.0, 10.0)
    for bad, says in (
        ({"grid": 0}, "grid must be an integer >= 1 and <= 64"),
        ({"grid": 2.5}, "grid must be an integer"),
        ({"every_s": 0}, "every_s must be > 0"),
        ({"max_area": 1.5}, "max_area must be a share"),
        ({"roi": [10, 10, 5, 20]}, "0 <= x0 < x1"),
        ({"roi": "everywhere"}, "roi must be"),
        ({"min_score": float("nan")}, "min_score must be a finite number"),
        ({"colour": "red"}, "unknown discovery setting(s) colour"),
    ):
        with pytest.raises(InvalidInputError, match=says.replace("(", r"\(").replace(")", r"\)")):
            DiscoveryConfig.from_dict(bad)
    with pytest.raises(InvalidInputError, match="discover must be true or a mapping"):
        DiscoveryConfig.from_dict("yes")  # type: ignore[arg-type]


def test_the_grid_covers_the_region_and_candidates_are_filtered_and_suppressed() -> None:
    points = grid_points(100, 50, DiscoveryConfig(grid=2))
    assert points == [(25.0, 12.5), (75.0, 12.5), (25.0, 37.5), (75.0, 37.5)]
    assert grid_points(100, 50, DiscoveryConfig(grid=1, roi=(50, 0, 200, 50))) == [(75.0, 25.0)]
    assert grid_points(100, 50, DiscoveryConfig(roi=(150, 0, 200, 50))) == []
    # A 200x100 frame resized to 64x32 for a 64 px encoder: 16x16 logits, 16x8 on the picture,
    # each cell 12.5 frame pixels a side.
    grid = Grid((32, 64), (100, 200))
    logits = np.full((5, 16, 16), -8.0, np.float32)
    logits[0, 1:3, 1:3] = 8.0  # an object: frame box (12, 12, 38, 38), 4 cells of 156 px
    logits[1, 1:3, 1:3] = 8.0  # the same, worse scored: suppressed
    logits[2, :8, :16] = 8.0  # the background: too large
    logits[3, 12:, :] = 8.0  # the padding only: nothing on the picture
    logits[4, 4:6, 10:12] = 0.5  # another object, blurry: not stable
    scores = np.array([0.95, 0.93, 0.97, 0.96, 0.95], np.float32)
    pts = [(20.0, 20.0)] * 5
    kept = select(pts, scores, logits, grid, DiscoveryConfig(min_area=16))
    assert [c.index for c in kept] == [0]
    [c] = kept
    assert c.box == (12, 12, 38, 38) and c.area == 625 and c.stability == 1.0
    assert c.point == (18.5, 18.5)  # the centre of its cells, on the mask
    assert stability(logits[4]) == 0.0 and stability(np.full((4, 4), -9.0)) == 0.0
    assert select(pts, np.full(5, 0.5, np.float32), logits, grid, DiscoveryConfig(min_area=16)) == []
    assert select(pts, scores, logits, grid, DiscoveryConfig(min_area=1000)) == []
