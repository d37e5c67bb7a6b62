"""Mask-prompted tracks through the driver, on a real Redis: they follow their object, live ones can be
re-prompted from a mask on the control stream, and a mask of the wrong size is a clear failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.masks.mask_prompt import MaskPrompt
from pipeline.masks.rle import decode_rle, encode_rle
from pipeline.prompts import Prompt, TrackSpec, load_prompts_file, tracks_from_cli
from pipeline.spec import JobSpec
from pipeline.streams import MaskReader
from pipeline.streams.control import Command
from tests.pipeline.jobs.conftest import stub


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def _published(r, job_id: str) -> dict[int, dict[int, tuple[str, np.ndarray]]]:
    """Frame -> track -> (state, mask), as a reader of the masks stream sees them."""
    return {
        e.frame_index: {t.track_id: (t.state, decode_rle(t.rle)) for t in e.tracks}
        for _, e in MaskReader(r.client, r.keys, job_id).read()
    }


def test_tracks_from_a_mask_image_and_a_coco_rle_follow_their_objects(rig, tmp_path: Path) -> None:
    truth = stub().truth
    moving, still, *_ = truth(0)
    Image.fromarray(moving.astype(np.uint8) * 255).save(tmp_path / "moving.png")
    from_png = tracks_from_cli([], [], [f"1={tmp_path / 'moving.png'}"])
    rle = encode_rle(still)
    (tmp_path / "tracks.yaml").write_text(
        f"tracks:\n  - id: 2\n    mask: {{size: {rle['size']}, counts: '{rle['counts']}'}}\n"
    )
    from_rle = load_prompts_file(tmp_path / "tracks.yaml")
    r = rig()
    spec = JobSpec(source="file:40", tracks=(*from_png, *from_rle), image_size=256)
    r.store.create("masked", spec.to_dict())
    r.driver.submit("masked")
    r.run()
    assert r.store.get("masked").status.value == "succeeded"
    published = _published(r, "masked")
    assert sorted(published) == list(range(40))
    for frame, tracks in published.items():
        for track, obj in ((1, 0), (2, 1)):
            state, mask = tracks[track]
            assert state == "active" and _iou(mask, truth(frame)[obj]) >= 0.9, (frame, track)


def test_a_live_track_is_re_prompted_from_a_mask_and_a_wrong_sized_one_is_an_error(rig) -> None:
    r = rig()
    r.create("cam", "feed:100", live=True)
    r.run(until=lambda: len(r.frames("cam")) >= 5)
    truth = stub().truth
    # Track 1 follows the moving disc; re-prompted with a mask of another (one no track holds), it
    # follows that.
    r.command("cam", Command("reprompt", 1, Prompt(mask=MaskPrompt.from_array(truth(0)[2]))))
    r.command("cam", Command("add", 3, Prompt(mask=MaskPrompt.from_array(np.ones((24, 32), bool)))))
    r.run(until=lambda: len(r.frames("cam")) >= 20)
    r.command("cam", Command("stop"))
    r.run()
    events = [e for _, e in r.client.xrange(r.keys.events("cam"))]
    reprompted = next(int(e["frame"]) for e in events if e["type"] == "track_reprompted")
    errors = [e["detail"] for e in events if e["type"] == "error"]
    assert any("track 3" in d and "the mask prompt is 32x24 but the frame is 320x240" in d for d in errors)
    published = _published(r, "cam")
    after = [f for f in published if f >= reprompted]
    assert len(after) >= 5
    for frame in after:
        assert sorted(published[frame]) == [1, 2]  # track 3 never started
        assert _iou(published[frame][1][1], truth(frame)[2]) >= 0.9, frame
    assert _iou(published[min(published)][1][1], truth(min(published))[0]) >= 0.9


@pytest.mark.parametrize(("source", "live"), [("file:10", False), ("feed:100", True)])
def test_a_mask_of_another_size_fails_the_job_when_its_source_opens(rig, source: str, live: bool) -> None:
    r = rig()
    mask = Prompt(mask=MaskPrompt.from_array(np.ones((480, 640), bool)))
    spec = JobSpec(source=source, tracks=(TrackSpec(1, mask),), image_size=256, live=live)
    r.store.create("wrong", spec.to_dict())
    r.driver.submit("wrong")
    r.run()
    info = r.store.get("wrong")
    assert info.status.value == "failed"
    assert (
        info.error
        == "the mask prompt is 640x480 but the frame is 320x240: give a mask of the video's frame size"
    )
