"""The sources' fast resize against SAM's own (PIL bilinear): how close, stated as numbers."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import samples
from pipeline.errors import InvalidInputError
from pipeline.model.transforms import input_size, resize_longest, resize_longest_fast
from tests.conftest import sample_rgb


def _diff(image: np.ndarray, image_size: int) -> np.ndarray:
    fast = resize_longest_fast(image, image_size)
    exact = resize_longest(image, image_size)
    assert fast.shape == exact.shape == (*input_size(image.shape[:2], image_size), 3)
    assert fast.dtype == np.uint8 and fast.flags.c_contiguous
    return np.abs(fast.astype(np.int16) - exact.astype(np.int16))


# Downscaling (720p, 1080p, 4K, odd sizes) and upscaling (small and tiny frames), both orientations.
SIZES = [(720, 1280), (1080, 1920), (2160, 3840), (577, 1025), (1001, 999), (333, 250), (240, 320), (17, 9)]


@pytest.mark.parametrize(("h", "w"), SIZES)
@pytest.mark.parametrize("image_size", [1024, 256, 1000])
def test_fast_resize_is_within_two_levels_of_pil(h: int, w: int, image_size: int) -> None:
    # Noise is the worst case for rounding differences; the sample adds shapes and gradients.
    noise = np.random.default_rng(h * w + image_size).integers(0, 256, (h, w, 3), dtype=np.uint8)
    for image in (noise, sample_rgb(h, w)):
        d = _diff(image, image_size)
        assert d.max() <= 2
        assert d.mean() <= 0.1  # measured at most 0.08: a few percent of pixels off by one
        assert (d > 1).mean() <= 0.001


def test_fast_resize_of_a_video_frame_is_nearly_exact() -> None:
    d = _diff(samples.render_frame(7, 1280, 720), 1024)
    assert d.max() <= 2 and d.mean() <= 0.02


def test_fast_resize_keeps_a_frame_already_at_size_and_reads_read_only_arrays() -> None:
    image = sample_rgb(576, 1024)
    assert resize_longest_fast(image, 1024) is image
    image = sample_rgb(720, 1280)
    locked = image.copy()
    locked.flags.writeable = False
    np.testing.assert_array_equal(resize_longest_fast(locked, 1024), resize_longest_fast(image, 1024))


def test_fast_resize_rejects_what_is_not_an_rgb_frame() -> None:
    with pytest.raises(InvalidInputError, match="HxWx3 uint8"):
        resize_longest_fast(np.zeros((4, 4, 3), np.float32), 8)
