"""The detector contract (:mod:`pipeline.model.detector`) through the real ONNX Runtime: the three
YOLO output layouts, class names from metadata, letterboxing back to the frame's pixels, the score,
class and per-class suppression limits, and one clear error for each kind of bad file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from pipeline.errors import InvalidInputError
from pipeline.evaluation.blobs import COLOURS
from pipeline.evaluation.scenes import entering_scene
from pipeline.model.detector import letterbox, open_detector, parse_names


class Fixed(torch.nn.Module):
    """Answers every picture with the same output (the picture still flows into it)."""

    def __init__(self, out: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("out", torch.from_numpy(out.astype(np.float32)))

    def forward(self, images):  # type: ignore[no-untyped-def]
        return self.out + images.mean() * 0


def _export(path: Path, module: torch.nn.Module, shape=(1, 3, 64, 64), names: str | None = None) -> Path:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(*shape),), str(path), input_names=["images"], dynamo=False)
    if names is not None:
        model = onnx.load(str(path))
        entry = model.metadata_props.add()
        entry.key, entry.value = "names", names
        onnx.save(model, str(path))
    return path


# Two boxes of class 1 overlapping (the weaker suppressed), one of class 0 over them (kept), one
# too weak: cx, cy, w, h in the 64x64 input, then the class scores; then empty candidates (a model
# has many more candidates than channels, which is how its layout is told without names).
ROWS = np.concatenate(
    [
        np.array(
            [
                [20, 32, 16, 16, 0.1, 0.9],
                [21, 32, 16, 16, 0.2, 0.6],
                [20, 32, 16, 16, 0.7, 0.3],
                [50, 10, 8, 8, 0.1, 0.2],
            ]
        ),
        np.zeros((28, 6)),
    ]
)


@pytest.mark.parametrize("layout", ["v8", "v8-rows", "v5"])
def test_each_layout_reads_the_same_boxes_in_the_frames_pixels(tmp_path: Path, layout: str) -> None:
    if layout == "v8":
        out = ROWS.T[None]
    elif layout == "v8-rows":
        out = ROWS[None]
    else:  # objectness 1 for all but the last (its scores vanish)
        obj = np.concatenate([np.ones((3, 1)), np.full((len(ROWS) - 3, 1), 0.5)])
        out = np.concatenate([ROWS[:, :4], obj, ROWS[:, 4:]], axis=1)[None]
    path = _export(tmp_path / "d.onnx", Fixed(out), names="{0: 'cat', 1: 'dog'}")
    detector = open_detector(path, min_score=0.25)
    assert detector.names == ("cat", "dog")
    # A 128x256 frame letterboxed into 64x64: scale 0.25, 16 px of grey above and below.
    found = detector.detect(np.zeros((128, 256, 3), np.uint8), (128, 256))
    assert [(d.label, round(d.score, 2)) for d in found] == [("dog", 0.9), ("cat", 0.7)]
    x0, y0, x1, y1 = found[0].box
    assert (x0, y0, x1, y1) == pytest.approx((48, 32, 112, 96))


def test_names_from_metadata_or_by_index(tmp_path: Path) -> None:
    assert parse_names("{0: 'person', 1: 'bicycle'}") == ("person", "bicycle")
    assert parse_names('["a", "b"]') == ("a", "b")
    assert parse_names('{"0": "a", "1": "b"}') == ("a", "b")
    assert parse_names(None) is None
    for bad in ("{1: 'a'}", "__import__('os')", "[]", "42"):
        with pytest.raises(InvalidInputError, match="names"):
            parse_names(bad)
    path = _export(tmp_path / "plain.onnx", Fixed(ROWS.T[None]))
    detector = open_detector(path)
    assert detector.names == ("0", "1")
    assert [d.label for d in detector.detect(np.zeros((64, 64, 3), np.uint8), (64, 64))] == ["1", "0"]


def test_classes_keep_only_those_named_and_an_unknown_one_is_an_error(tmp_path: Path) -> None:
    path = _export(tmp_path / "d.onnx", Fixed(ROWS.T[None]), names="{0: 'cat', 1: 'dog'}")
    cats = open_detector(path, classes=["cat"])
    found = cats.detect(np.zeros((64, 64, 3), np.uint8), (64, 64))
    assert [(d.label, round(d.score, 2)) for d in found] == [("cat", 0.7)]
    with pytest.raises(InvalidInputError, match=r"no class named 'horse'.*cat, dog"):
        open_detector(path, classes=["cat", "horse"])


def test_bad_files_are_one_clear_error_each(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such file"):
        open_detector(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model at all" * 10)
    with pytest.raises(InvalidInputError, match="not an ONNX model"):
        open_detector(garbage)
    grey = _export(tmp_path / "grey.onnx", Fixed(ROWS.T[None]), shape=(1, 1, 64, 64))
    with pytest.raises(InvalidInputError, match=r"input must be a \[1, 3, height, width\]"):
        open_detector(grey)
    flat = _export(tmp_path / "flat.onnx", Fixed(ROWS))
    with pytest.raises(InvalidInputError, match="first output must be"):
        open_detector(flat)
    mismatch = _export(tmp_path / "mismatch.onnx", Fixed(ROWS.T[None]), names="{0: 'a', 1: 'b', 2: 'c'}")
    with pytest.raises(InvalidInputError, match="does not fit its 3 class names"):
        open_detector(mismatch)
    boxes_only = _export(tmp_path / "boxes.onnx", Fixed(ROWS[:, :4].T[None]))
    with pytest.raises(InvalidInputError, match="no class scores"):
        open_detector(boxes_only)
    with pytest.raises(InvalidInputError, match="score must be in"):
        open_detector(grey, min_score=2.0)


def test_letterbox_centres_the_picture_on_grey() -> None:
    tensor, scale, pad = letterbox(np.full((50, 100, 3), 255, np.uint8), (64, 64))
    assert tensor.shape == (1, 3, 64, 64) and scale == pytest.approx(0.64) and pad == (0.0, 16.0)
    assert tensor[0, :, 0, 0] == pytest.approx(114 / 255) and tensor[0, :, 32, 32] == pytest.approx(1.0)


@pytest.mark.slow
def test_the_reference_detector_finds_each_disc_of_the_entering_scene(blob_detector: Path) -> None:
    scene = entering_scene()
    detector = open_detector(blob_detector, min_score=0.5)
    assert detector.names == tuple(COLOURS)
    frame, visible = scene.render(60)  # all six discs in, the last half-way
    found = detector.detect(frame, frame.shape[:2])
    best = {}
    for d in found:
        best.setdefault(d.label, d)
    assert sorted(best) == sorted(COLOURS)
    for thing in scene.things:
        ys, xs = np.nonzero(visible[thing.id])
        want = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        got = best[list(COLOURS)[thing.id - 1]].box
        assert np.abs(np.subtract(got, want)).max() <= 4, (thing.id, got, want)
