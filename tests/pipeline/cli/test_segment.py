"""`samstream segment` and the CLI's promises: instant help, one clear line per user mistake."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import sample_rgb
from tests.fixtures.official import official_predictor

EXE = str(Path(sys.executable).with_name("samstream"))


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SAMSTREAM_CACHE_DIR": "/nonexistent-samstream-cache"}
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(sample_rgb(240, 320)).save(path)
    return path


def test_help_is_instant_and_imports_nothing_heavy() -> None:
    start = time.perf_counter()
    out = run_cli("--help")
    assert out.returncode == 0 and "segment" in out.stdout
    assert time.perf_counter() - start < 1.0
    heavy = "('torch', 'ray', 'av', 'kornia', 'numpy')"
    probe = f"import sys, pipeline.cli.main; print(sorted(m for m in {heavy} if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


@pytest.mark.slow
def test_segment_matches_the_official_predictor(image: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.png"
    res = run_cli(
        "segment", str(image), "--point", "107,120", "--checkpoint", str(checkpoint), "--out", str(out)
    )
    assert res.returncode == 0, res.stderr
    assert str(out) in res.stdout
    mask = np.array(Image.open(out))
    assert mask.shape == (240, 320) and set(np.unique(mask)) <= {0, 255}

    predictor = official_predictor(str(checkpoint))
    predictor.set_image(np.array(Image.open(image).convert("RGB")))
    masks, scores, _ = predictor.predict(np.array([[107, 120]]), np.array([1]), multimask_output=True)
    expected = masks[int(np.argmax(scores))]
    assert ((mask > 0) == expected).mean() >= 0.999


def _disc_png(path: Path, size: tuple[int, int] = (240, 320)) -> np.ndarray:
    """The red disc of ``sample_rgb`` as a mask PNG; returns the (H, W) bool mask."""
    ys, xs = np.mgrid[0 : size[0], 0 : size[1]]
    mask = (ys - size[0] // 2) ** 2 + (xs - size[1] // 3) ** 2 < (min(size) // 5) ** 2
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return mask


@pytest.mark.slow
def test_segment_from_a_mask_matches_the_official_predictor(
    image: Path, checkpoint: Path, tmp_path: Path
) -> None:
    from pipeline.masks.mask_prompt import mask_logits
    from pipeline.masks.rle import mask_bbox
    from pipeline.model.transforms import input_size

    obj = _disc_png(tmp_path / "disc.png")
    out = tmp_path / "mask.png"
    res = run_cli(
        "segment", str(image), "--mask", str(tmp_path / "disc.png"), "--checkpoint", str(checkpoint),
        "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    mask = np.array(Image.open(out)) > 0

    # The official predictor given what a mask prompt means: the box around the mask and the
    # mask as low-resolution mask input (256x256 logits in the padded 1024 frame), one mask out.
    predictor = official_predictor(str(checkpoint))
    predictor.set_image(np.array(Image.open(image).convert("RGB")))
    logits = mask_logits(obj, input_size((240, 320), 1024), 256)
    masks, _, _ = predictor.predict(
        box=np.array(mask_bbox(obj)), mask_input=logits[None], multimask_output=False
    )
    assert (mask == masks[0]).mean() >= 0.999


def test_bad_mask_prompts_are_one_clear_line(image: Path, tmp_path: Path) -> None:
    _disc_png(tmp_path / "small.png", (120, 160))
    Image.fromarray(sample_rgb(240, 320)).save(tmp_path / "photo.png")
    cases = [
        ("small.png", "the mask prompt is 160x120 but the frame is 320x240"),
        ("photo.png", "is a RGB image: give a greyscale, palette or alpha"),
        ("missing.png", "cannot read mask"),
    ]
    for name, expected in cases:
        res = run_cli("segment", str(image), "--mask", str(tmp_path / name), "--weights", "random")
        assert res.returncode == 1 and "Traceback" not in res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], res.stderr


def test_random_weights_say_so(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.png"
    res = run_cli(
        "segment",
        str(image),
        "--box",
        "10,20,200,180",
        "--neg",
        "5,5",
        "--weights",
        "random",
        "--image-size",
        "256",
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert "random weights" in res.stdout and "random weights" in res.stderr
    assert Image.open(out).size == (320, 240)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--point", "500,10"], "outside the 320x240 image"),
        (["--point=-1,10"], "outside"),
        (["--point", "nan,10"], "finite"),
        (["--point", "10"], "2 numbers"),
        (["--point", "a,b"], "2 numbers"),
        (["--box", "10,10,5,50"], "X0 < X1"),
        (["--box", "0,0,400,100"], "outside"),
        (["--neg", "10,10"], "at least one --point"),
        ([], "at least one --point X,Y, a --box X0,Y0,X1,Y1 or a --mask FILE.png"),
        (["--point", "10,10", "--image-size", "100"], "multiple of 16"),
        (["--point", "10,10", "--checkpoint", "/nonexistent.pt"], "checkpoint not found"),
        (["--point", "10,10"], "--weights random"),  # no file, nothing cached, no network
    ],
)
def test_user_mistakes_are_one_clear_line(image: Path, args: list[str], expected: str) -> None:
    res = run_cli("segment", str(image), *args, timeout=60)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], res.stderr


def test_unreadable_image_and_bad_checkpoint(tmp_path: Path, image: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    res = run_cli("segment", str(text), "--point", "1,1", "--weights", "random")
    assert res.returncode != 0 and "not an image file" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("segment", str(tmp_path / "missing.jpg"), "--point", "1,1", "--weights", "random")
    assert res.returncode != 0 and "no such file" in res.stderr
    res = run_cli("segment", str(image), "--point", "1,1", "--checkpoint", str(text))
    assert res.returncode != 0 and "cannot load checkpoint" in res.stderr and "Traceback" not in res.stderr
