"""Mask prompts: the RLE kept, the images read as masks, the mask input SAM is given."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco

from pipeline.errors import ImageReadError, InvalidInputError, PromptError
from pipeline.masks.imageio import read_mask
from pipeline.masks.mask_prompt import MASK_LOGIT, MaskPrompt, mask_logits
from pipeline.masks.rle import encode_rle, mask_bbox
from pipeline.model.transforms import input_size, upscale_logits
from pipeline.model.types import DecodeRequest, Embedding
from pipeline.prompts import Prompt, TrackSpec, load_prompts_file, parse_mask_prompt, tracks_from_cli
from pipeline.spec import JobSpec

SIZE = (240, 320)  # (H, W)


def blob(size: tuple[int, int] = SIZE, centre: tuple[float, float] = (100, 90), r: float = 30) -> np.ndarray:
    """A disc of radius ``r`` at (x, y) ``centre``, (H, W) bool."""
    ys, xs = np.mgrid[0 : size[0], 0 : size[1]]
    return (xs + 0.5 - centre[0]) ** 2 + (ys + 0.5 - centre[1]) ** 2 <= r * r


def coco_rle(mask: np.ndarray) -> dict:
    rle = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO counts: run lengths down the columns, starting with background."""
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    counts = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    return [0, *counts] if flat[0] else counts


def test_a_mask_prompt_keeps_pycocotools_rle_from_any_form() -> None:
    mask = blob()
    want = coco_rle(mask)
    forms = [
        want,
        {"size": want["size"], "counts": want["counts"].encode()},
        {"size": want["size"], "counts": runs(mask)},
    ]
    for form in forms:
        m = MaskPrompt.from_rle(form)
        assert m.to_rle() == want
        assert m.size == SIZE and m.area == int(mask.sum())
        assert m.box == mask_bbox(mask)
        assert np.array_equal(m.array(), mask)
    assert MaskPrompt.from_array(mask) == MaskPrompt.from_rle(want)
    with pytest.raises(PromptError, match=r"use MaskPrompt\.from_rle"):
        MaskPrompt(SIZE, runs(mask))  # type: ignore[arg-type]
    # Ray pickles prompts (control commands, specs): the derived fields come along.
    copy = pickle.loads(pickle.dumps(Prompt(mask=MaskPrompt.from_array(mask))))
    assert copy.mask is not None and copy.mask.box == mask_bbox(mask) and copy.mask.area == mask.sum()


@pytest.mark.parametrize(
    ("rle", "expected"),
    [
        ({"size": [240, 320], "counts": "0"}, "bad mask RLE: RLE run lengths sum to 0"),
        ({"size": [240, 320], "counts": [76800]}, "is empty"),
        ({"size": [240, 320], "counts": "xyz"}, "characters '0' to 'o'"),
        ({"size": [240, 320], "counts": [100, -5]}, "non-negative"),
        ({"size": [240], "counts": "0"}, "size must be"),
        ({"size": [2, 2], "counts": [1, 2, 1], "box": [0, 0, 1, 1]}, "COCO RLE"),
        ([1, 2, 3], "COCO RLE"),
        ("car.png", "COCO RLE"),
    ],
)
def test_bad_rles_are_clear_prompt_errors(rle: object, expected: str) -> None:
    with pytest.raises(PromptError, match=expected):
        MaskPrompt.from_rle(rle)


def test_a_mask_must_have_the_frames_size() -> None:
    m = MaskPrompt.from_array(blob((120, 160), (50, 50), 10))
    m.check_size(160, 120)
    with pytest.raises(PromptError, match="the mask prompt is 160x120 but the frame is 320x240"):
        m.check_size(320, 240)
    with pytest.raises(PromptError, match="the mask prompt is 160x120 but the frame is 320x240"):
        Prompt(mask=m).check_inside(320, 240)


def test_prompts_with_masks_round_trip_through_dicts_and_the_job_spec() -> None:
    mask = MaskPrompt.from_array(blob())
    prompt = Prompt(points=((5, 5),), labels=(0,), mask=mask)  # a mask with a negative point is enough
    assert not prompt.multimask and not Prompt(mask=mask).multimask
    data = prompt.to_dict()
    assert data["mask"] == coco_rle(blob())
    assert Prompt.from_dict(data) == prompt
    spec = JobSpec("clip.mp4", (TrackSpec(1, prompt), TrackSpec(2, Prompt(box=(1, 2, 3, 4)))))
    again = JobSpec.from_dict(spec.to_dict())
    assert again == spec and again.tracks[0].prompt.mask == mask
    with pytest.raises(PromptError, match="must be a MaskPrompt"):
        Prompt(mask={"size": [2, 2], "counts": "04"})  # type: ignore[arg-type]


def _palette(labels: np.ndarray) -> Image.Image:
    """A palette image whose indices are ``labels`` (DAVIS-style annotations)."""
    img = Image.fromarray(labels.astype(np.uint8)).convert("P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    return img


def test_mask_images_in_every_usual_form(tmp_path: Path) -> None:
    mask = blob()
    u8 = mask.astype(np.uint8)
    rgba = np.zeros((*SIZE, 4), np.uint8)
    rgba[..., :3] = 200  # colour everywhere: the alpha says where the object is
    rgba[..., 3] = u8 * 255
    forms = {
        "grey255": Image.fromarray(u8 * 255),
        "grey1": Image.fromarray(u8),
        "bits": Image.fromarray(u8 * 255).convert("1"),
        "palette": _palette(u8),
        "rgba": Image.fromarray(rgba),
        "la": Image.fromarray(rgba).convert("LA"),
        "grey16": Image.fromarray(u8.astype(np.uint16) * 1000),
    }
    for name, img in forms.items():
        img.save(tmp_path / f"{name}.png")
        assert np.array_equal(read_mask(tmp_path / f"{name}.png"), mask), name


def test_images_that_are_not_masks_are_refused(tmp_path: Path) -> None:
    from tests.conftest import sample_rgb

    photo = sample_rgb(*SIZE)
    cases = {
        "rgb.png": (Image.fromarray(photo), "is a RGB image: give a greyscale, palette or alpha"),
        "photo.png": (Image.fromarray(photo).convert("L"), r"its grey has \d+ values \(0, 1, 2, 3, 4, …\)"),
        "ones.png": (Image.fromarray(np.where(blob(), 255, 7).astype(np.uint8)), r"2 values \(7, 255\)"),
        "empty.png": (Image.fromarray(np.zeros(SIZE, np.uint8)), "320x240\\) is empty"),
        "opaque.png": (Image.fromarray(np.full((*SIZE, 4), 255, np.uint8)), "opaque everywhere"),
    }
    for name, (img, expected) in cases.items():
        img.save(tmp_path / name)
        with pytest.raises(PromptError, match=expected):
            read_mask(tmp_path / name)
    # Several objects in one palette image: which one is meant would be a guess.
    labels = blob().astype(np.uint8) + 2 * blob(centre=(250, 150), r=20).astype(np.uint8)
    _palette(labels).save(tmp_path / "labels.png")
    with pytest.raises(PromptError, match=r"palette index has 3 values \(0, 1, 2\)"):
        read_mask(tmp_path / "labels.png")
    with pytest.raises(ImageReadError, match="no such file"):
        read_mask(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="not an image file"):
        read_mask(tmp_path / "text.png")


def test_the_mask_input_is_the_mask_in_the_encoders_frame() -> None:
    # A 320x240 frame at S = 256 is resized to 256x192 (scale 0.8) and padded to 256x256; the
    # mask input is 64x64, one logit per 4x4 encoder pixels (5x5 frame pixels).
    mask = np.zeros(SIZE, bool)
    mask[50:100, 100:200] = True  # rows 40-80, columns 80-160 of the encoder's frame: cells 10-20, 20-40
    logits = mask_logits(mask, input_size(SIZE, 256), 64)
    assert logits.shape == (64, 64) and logits.dtype == np.float32
    want = np.full((64, 64), -MASK_LOGIT, np.float32)
    want[10:20, 20:40] = MASK_LOGIT
    assert np.abs(logits - want).max() <= 1e-5
    # Upscaled as SAM upscales its own low-resolution logits, the mask comes back.
    disc = blob()
    up = upscale_logits(
        torch.from_numpy(mask_logits(disc, input_size(SIZE, 256), 64))[None, None], (192, 256), SIZE, 256
    )
    back = up[0].numpy() > 0
    assert np.count_nonzero(back & disc) / np.count_nonzero(back | disc) >= 0.95
    # The padding stays background; a partly covered cell lies between the two logits.
    edge = mask_logits(blob(), input_size(SIZE, 256), 64)
    assert (edge[48:] == -MASK_LOGIT).all()
    assert ((edge > -MASK_LOGIT) & (edge < MASK_LOGIT)).any()


def test_a_mask_prompt_is_decoded_as_mask_input_with_its_box() -> None:
    mask = blob()
    emb = Embedding(torch.zeros(1), SIZE, input_size(SIZE, 256))
    request = DecodeRequest.of(Prompt(mask=MaskPrompt.from_array(mask)), emb, 64)
    x0, y0, x1, y1 = mask_bbox(mask)  # type: ignore[misc]
    assert request.prompt.box == (x0, y0, x1, y1) and request.prompt.mask is None
    assert request.prompt.points == () and request.multimask is False and not request.use_multimask
    assert request.mask_input is not None
    assert np.array_equal(request.mask_input, mask_logits(mask, (192, 256), 64))
    # A box and points given with the mask are kept; a prompt without a mask goes as it is.
    given = Prompt(points=((5, 5),), labels=(0,), box=(10, 10, 300, 200), mask=MaskPrompt.from_array(mask))
    request = DecodeRequest.of(given, emb, 64)
    assert request.prompt == Prompt(points=((5, 5),), labels=(0,), box=(10, 10, 300, 200))
    plain = Prompt(points=((5, 5),), labels=(1,))
    assert DecodeRequest.of(plain, emb, 64) == DecodeRequest(plain)
    # A mask prompt handed to a model as a plain request would lose its mask: refused.
    with pytest.raises(InvalidInputError, match=r"DecodeRequest\.of"):
        DecodeRequest(Prompt(mask=MaskPrompt.from_array(mask)))


def test_cli_mask_prompts_name_their_ids_and_points_take_the_free_ones(tmp_path: Path) -> None:
    Image.fromarray(blob().astype(np.uint8) * 255).save(tmp_path / "car.png")
    specs = tracks_from_cli(["1,2", "3,4"], ["0,0,5,5"], [f"2={tmp_path / 'car.png'}"])
    assert [(s.track_id, s.prompt.mask is not None) for s in specs] == [
        (1, False),
        (3, False),
        (4, False),
        (2, True),
    ]
    assert specs[3].prompt.mask == MaskPrompt.from_array(blob())
    for bad in ["car.png", "0=car.png", "x=car.png", "3="]:
        with pytest.raises(PromptError, match="ID=FILE"):
            parse_mask_prompt(bad)
    with pytest.raises(InvalidInputError, match="track id 2 is used twice"):
        tracks_from_cli([], [], [f"2={tmp_path / 'car.png'}", f"2={tmp_path / 'car.png'}"])


def test_prompts_file_masks_from_an_image_or_an_rle(tmp_path: Path) -> None:
    (tmp_path / "masks").mkdir()
    Image.fromarray(blob().astype(np.uint8) * 255).save(tmp_path / "masks" / "car.png")
    rle = coco_rle(blob(centre=(250, 150), r=20))
    f = tmp_path / "tracks.yaml"
    f.write_text(
        "tracks:\n"
        "  - mask: masks/car.png\n"
        f"  - id: 5\n    mask: {{size: {rle['size']}, counts: '{rle['counts']}'}}\n    start_frame: 3\n"
        f"  - mask: {{size: [240, 320], counts: {runs(blob())}}}\n    negative: [[1, 1]]\n"
    )
    a, b, c = load_prompts_file(f)
    assert a.track_id == 1 and a.prompt.mask == MaskPrompt.from_array(blob())
    assert b.track_id == 5 and b.start_frame == 3 and b.prompt.mask is not None
    assert b.prompt.mask.to_rle() == rle
    assert c.prompt.mask == a.prompt.mask and c.prompt.labels == (0,)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("mask: missing.png", "track #1: cannot read mask .*missing.png: no such file"),
        ("mask: {size: [240, 320], counts: '0'}", "track #1: bad mask RLE"),
        ("mask: {size: [240, 320], counts: [76800]}", "track #1: the 320x240 mask is empty"),
        ("mask: 12", "track #1: a mask prompt is a COCO RLE"),
    ],
)
def test_bad_masks_in_prompts_files_name_the_track(tmp_path: Path, entry: str, expected: str) -> None:
    f = tmp_path / "tracks.yaml"
    f.write_text(f"tracks:\n  - {entry}\n")
    with pytest.raises(InvalidInputError, match=expected):
        load_prompts_file(f)


def test_encode_and_compress_agree() -> None:
    mask = blob()
    assert (
        encode_rle(mask)
        == coco_rle(mask)
        == MaskPrompt.from_rle({"size": [240, 320], "counts": runs(mask)}).to_rle()
    )


def test_a_mask_image_declaring_too_many_pixels_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    # 200 Mpx of 1-bit zeros: a few hundred KB of PNG that PIL refuses to decode (a bomb).
    path = tmp_path / "bomb.png"
    Image.new("1", (20_000, 10_000)).save(path)
    with pytest.raises(ImageReadError, match="decompression bomb"):
        read_mask(path)
