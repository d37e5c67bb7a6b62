"""Preview JPEGs: size, colours from both kinds of frame pixels, pacing, options."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import InvalidInputError
from pipeline.frames import Yuv420
from pipeline.masks.preview import PreviewOptions, PreviewPacer, make_preview, preview_size


def _decoded(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


@pytest.mark.parametrize(
    ("size", "side", "want"),
    [((720, 1280), 640, (360, 640)), ((1080, 608), 640, (640, 360)), ((240, 320), 640, (240, 320))],
)
def test_the_long_side_is_at_most_the_preview_side(
    size: tuple[int, int], side: int, want: tuple[int, int]
) -> None:
    assert preview_size(*size, side) == want


def test_an_rgb_frame_at_the_encoder_size_is_previewed_at_the_frames_aspect() -> None:
    rgb = np.zeros((576, 1024, 3), np.uint8)
    rgb[:, :512] = (200, 30, 30)  # left half red, right half black
    p = make_preview(rgb, (720, 1280), PreviewOptions(max_side=320))
    assert (p.width, p.height) == (320, 180)
    picture = _decoded(p.jpeg)
    assert picture.shape == (180, 320, 3)
    assert np.abs(picture[90, 40].astype(int) - (200, 30, 30)).max() < 12
    assert picture[90, 280].max() < 12


def test_video_range_yuv_planes_come_out_full_range() -> None:
    # Video-range white (235) and black (16) luma, neutral chroma: JPEG's 255 and 0 after expansion.
    y = np.full((360, 640), 16, np.uint8)
    y[:, 320:] = 235
    chroma = np.full((180, 320), 128, np.uint8)
    p = make_preview(Yuv420(y, chroma, chroma.copy(), "bt601", False, 1024), (360, 640), PreviewOptions())
    picture = _decoded(p.jpeg)
    assert (p.width, p.height) == (640, 360)
    assert picture[180, 100].max() < 6 and picture[180, 500].min() > 249


def test_the_pacer_lets_through_at_most_rate_a_second() -> None:
    pacer = PreviewPacer(8.0)
    times = [i / 64 for i in range(128)]  # 64 frames a second for two seconds (exact in binary)
    assert sum(pacer.due(t) for t in times) == 16


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_side": 8}, "--preview-side"), ({"rate": 0}, "--preview-rate"), ({"keep": 0}, "--preview-keep")],
)
def test_bad_options_are_clear_errors(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        PreviewOptions(**kwargs)  # type: ignore[arg-type]
