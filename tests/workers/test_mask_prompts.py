"""`samstream run --mask-prompt` end to end: real Ray, a real Redis server, real PyAV video.

With random weights the masks mean nothing, so this checks the plumbing: the first frame's mask and
score are those of the model given the mask as mask input and the box around it (and not those of
the box alone), and the frames after follow as for any track. That such a track follows its object
is checked with a segmenter that knows the scene (``tests/pipeline/jobs/test_mask_prompts.py``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.bench.samples import object_masks, write_clip
from pipeline.config import ModelConfig
from pipeline.masks.mask_prompt import MaskPrompt, mask_logits
from pipeline.masks.rle import decode_rle, mask_bbox
from pipeline.model import DecodeRequest, MobileSam
from pipeline.prompts import Prompt, TrackSpec
from pipeline.sources import VideoSource
from pipeline.tracking import Tracker, TrackingConfig
from tests.conftest import sample_rgb
from tests.workers.conftest import cli

pytestmark = [pytest.mark.integration]

FRAMES = 12


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


@pytest.mark.slow
def test_a_mask_prompt_reaches_the_decoder_as_mask_input_with_its_box(
    checkpoint: Path, tmp_path: Path, results
) -> None:
    clip = write_clip(tmp_path / "clip.mp4", frames=FRAMES)
    obj = object_masks(0)[1]
    Image.fromarray(obj.astype(np.uint8) * 255).save(tmp_path / "object.png")
    data = tmp_path / "out"
    res = cli(
        "run", str(clip), "--mask-prompt", f"1={tmp_path / 'object.png'}", "--checkpoint", str(checkpoint),
        "--image-size", "256", "--compile", "eager", "--job-id", "masked", "--data-dir", str(data), "--min-score", "0", "--no-progress",
        "--precision", "fp32",  # compared with the fp32 model below
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    r = results(data)
    entries = [e for _, e in r.entries("masked")]
    assert [e.frame_index for e in entries] == list(range(FRAMES))
    assert r.job("masked")["status"] == "succeeded"

    model = MobileSam.from_config(
        ModelConfig(checkpoint=checkpoint, image_size=256, device="cpu", compile="eager")
    )
    with VideoSource(clip) as src:
        frames = list(src.frames(image_size=256))
    embeddings = [model.encode([f.image], [f.original_size])[0] for f in frames]
    box = Prompt(box=tuple(float(v) for v in mask_bbox(obj)))  # type: ignore[arg-type,misc]
    logits = mask_logits(obj, embeddings[0].input_size, model.low_res_size)
    with_mask = model.decode(embeddings[0], [DecodeRequest(box, logits, multimask=False)])
    box_only = model.decode(embeddings[0], [DecodeRequest(box, multimask=False)])
    (first,) = entries[0].tracks
    assert abs(first.score - float(with_mask.scores[0])) <= 1e-3
    assert _iou(decode_rle(first.rle), with_mask.masks[0]) >= 0.999
    assert abs(float(box_only.scores[0]) - float(with_mask.scores[0])) > 1e-3  # the mask input counted

    # The frames after: as the tracker follows any track, from the first frame's mask.
    tracker = Tracker(model, TrackingConfig(min_score=0.0))
    tracker.add(TrackSpec(1, Prompt(mask=MaskPrompt.from_array(obj))))
    for f, emb, entry in zip(frames, embeddings, entries, strict=True):
        (want,) = tracker.step(f.index, emb, f.pts)[0]  # a file job: frame time is pts
        (got,) = entry.tracks
        assert _iou(decode_rle(got.rle), want.mask) >= 0.999, f.index


@pytest.mark.timeout(120)
def test_bad_mask_prompts_are_one_line(tmp_path: Path, results) -> None:
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    Image.fromarray(np.full((80, 100), 255, np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(sample_rgb(240, 320)).convert("L").save(tmp_path / "photo.png")
    cases = [
        ("small", "job small failed: the mask prompt is 100x80 but the frame is 320x240"),
        ("photo", "is not a mask: its grey has"),
    ]
    for name, expected in cases:
        data = tmp_path / name
        res = cli("run", str(clip), "--mask-prompt", f"1={tmp_path / name}.png", "--weights", "random",
                  "--image-size", "256", "--job-id", name, "--data-dir", str(data), "--no-progress", timeout=60)  # fmt: skip
        assert res.returncode == 1 and "Traceback" not in res.stderr
        errors = [line for line in res.stderr.splitlines() if line.startswith("samstream: error:")]
        assert len(errors) == 1 and expected in errors[0], res.stderr
    assert results(tmp_path / "small").job("small")["status"] == "failed"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_live_job_starts_and_is_re_prompted_from_masks(tmp_path: Path, results) -> None:
    from tests.fixtures.streams import StreamSender
    from tests.workers.conftest import popen, wait_for_entries

    Image.fromarray(object_masks(0)[0].astype(np.uint8) * 255).save(tmp_path / "first.png")
    Image.fromarray(object_masks(0)[1].astype(np.uint8) * 255).save(tmp_path / "second.png")
    Image.fromarray(np.full((120, 160), 255, np.uint8)).save(tmp_path / "small.png")
    data = tmp_path / "out"
    options = ["--weights", "random", "--image-size", "256", "--compile", "eager", "--min-score", "0",
               "--data-dir", str(data), "--no-progress"]  # fmt: skip
    with StreamSender("udp", fps=30) as sender:
        proc = popen(
            "run", sender.url, "--mask-prompt", f"1={tmp_path / 'first.png'}", "--job-id", "live", *options
        )
        r = wait_for_entries(results, data, "live", 3, proc)
        for args in (("reprompt", "live", "1", "--mask", str(tmp_path / "second.png")),
                     ("add", "live", "3", "--mask", str(tmp_path / "small.png"))):  # fmt: skip
            sent = cli("track", *args, "--data-dir", str(data))
            assert sent.returncode == 0, sent.stderr
        while not any(e["type"] == "error" for _, e in r.client.xrange(r.keys.events("live"))):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        at = len(r.raw_ids("live"))
        while len(r.raw_ids("live")) < at + 3:
            time.sleep(0.1)
        assert cli("stop", "live", "--data-dir", str(data)).returncode == 0
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert r.job("live")["status"] == "succeeded"
    events = [e for _, e in r.client.xrange(r.keys.events("live"))]
    assert any(e["type"] == "track_reprompted" and e["track"] == "1" for e in events)
    (error,) = [e for e in events if e["type"] == "error"]
    assert error["track"] == "3" and "the mask prompt is 160x120 but the frame is 320x240" in error["detail"]
    assert all([t.track_id for t in e.tracks] == [1] for _, e in r.entries("live"))  # 3 never started

    # A live job whose own mask prompt has another size fails at its first frame, with both sizes.
    with StreamSender("udp", fps=30) as sender:
        res = cli("run", sender.url, "--mask-prompt", f"1={tmp_path / 'small.png'}", "--job-id", "small", *options,
                  timeout=120)  # fmt: skip
    assert res.returncode == 1 and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("samstream: error:")]
    assert len(errors) == 1 and "the mask prompt is 160x120 but the frame is 320x240" in errors[0], res.stderr
    assert r.job("small")["status"] == "failed"
