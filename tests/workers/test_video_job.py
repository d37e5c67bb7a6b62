"""Video jobs end to end: `samstream run` on a real Ray local cluster and a real Redis server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco

from pipeline.bench.samples import object_boxes, object_centres
from pipeline.config import ModelConfig
from pipeline.model import MobileSam
from pipeline.prompts import Prompt, TrackSpec
from pipeline.sources import VideoSource
from pipeline.spec import JobSpec
from pipeline.tracking import Tracker
from tests.workers.conftest import cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _tracks() -> list[TrackSpec]:
    x, y = object_centres(0)[0]
    box = tuple(float(v) for v in object_boxes(20)[1])
    return [
        TrackSpec(1, Prompt(points=((float(x), float(y)),), labels=(1,))),
        TrackSpec(2, Prompt(box=box), start_frame=20),  # type: ignore[arg-type]
    ]


def _prompts_file(path: Path) -> Path:
    lines = ["tracks:"]
    for t in _tracks():
        lines.append(f"  - id: {t.track_id}")
        if t.prompt.points:
            lines.append(f"    points: {[list(p) for p in t.prompt.points]}")
        if t.prompt.box:
            lines.append(f"    box: {list(t.prompt.box)}")
        lines.append(f"    start_frame: {t.start_frame}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _reference_masks(clip: Path, checkpoint: Path) -> dict[int, dict[int, np.ndarray]]:
    """The model layer called directly, frame after frame, with the same tracking settings."""
    model = MobileSam.from_config(
        ModelConfig(checkpoint=checkpoint, image_size=256, device="cpu", compile="eager")
    )
    spec = JobSpec(str(clip), tuple(_tracks()), image_size=256, tracking={"min_score": 0.0})
    tracker = Tracker(model, spec.tracking_config())
    for t in spec.tracks:
        tracker.add(t)
    out: dict[int, dict[int, np.ndarray]] = {}
    with VideoSource(clip) as src:
        for f in src.frames(image_size=256):
            emb = model.encode([f.image], [f.original_size])[0]
            results, _ = tracker.step(f.index, emb, f.pts)  # a file job: frame time is pts
            out[f.index] = {r.track_id: r.mask for r in results}
    return out


def test_sixty_frames_two_tracks_exactly_once(
    clip60: Path, checkpoint: Path, tmp_path: Path, results
) -> None:
    prompts = _prompts_file(tmp_path / "tracks.yaml")
    data = tmp_path / "out"
    res = cli(
        "run", str(clip60), "--prompts", str(prompts), "--checkpoint", str(checkpoint), "--image-size", "256",
        "--job-id", "e2e", "--data-dir", str(data), "--min-score", "0", "--no-progress", "--precision", "fp32",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "job e2e succeeded: 60 frames" in res.stdout

    r = results(data)
    entries = r.entries("e2e")
    assert [result.frame_index for _, result in entries] == list(range(60))
    assert r.raw_ids("e2e") == [f"{i}-1" for i in range(60)]
    assert r.job("e2e")["status"] == "succeeded"
    reference = _reference_masks(clip60, checkpoint)
    for _, result in entries:
        ids = [t.track_id for t in result.tracks]
        assert ids == ([1] if result.frame_index < 20 else [1, 2]), result.frame_index
        assert (result.width, result.height) == (320, 240)
        for t in result.tracks:
            got = coco.decode({"size": t.rle["size"], "counts": t.rle["counts"].encode()}).astype(bool)
            want = reference[result.frame_index][t.track_id]
            assert got.shape == (240, 320)
            union = np.logical_or(got, want).sum()
            iou = np.logical_and(got, want).sum() / union if union else 1.0
            assert iou >= 0.999, (result.frame_index, t.track_id, iou)

    # Running the finished job again publishes nothing more.
    again = cli(
        "run", str(clip60), "--prompts", str(prompts), "--checkpoint", str(checkpoint), "--image-size", "256",
        "--job-id", "e2e", "--data-dir", str(data), "--min-score", "0", "--no-progress", "--precision", "fp32",
    )  # fmt: skip
    assert again.returncode == 0 and "finished already" in again.stdout
    assert len(r.raw_ids("e2e")) == 60

    status = cli("status", "e2e", "--data-dir", str(data))
    assert status.returncode == 0 and "succeeded" in status.stdout and "60 / 60" in status.stdout
    watch = cli("watch", "e2e", "--data-dir", str(data))
    assert watch.returncode == 0 and len(watch.stdout.strip().splitlines()) == 60
    render = cli("render", "e2e", "--data-dir", str(data), "--out", str(tmp_path / "overlay.mp4"))
    assert render.returncode == 0, render.stderr
    with VideoSource(tmp_path / "overlay.mp4") as v:
        assert sum(1 for _ in v.frames(image_size=None)) == 60
