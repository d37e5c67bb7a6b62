"""The sources' fast resize against SAM's own (PIL bilinear), and decoded planes converted on the
encoder's device against FFmpeg's RGB: how close, stated as numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.bench import samples
from pipeline.errors import InvalidInputError
from pipeline.frames import Yuv420
from pipeline.model.transforms import (
    input_size,
    resize_float,
    resize_longest,
    resize_longest_fast,
    to_model_input,
    yuv420_to_rgb,
    yuv420_to_rgb_cpu,
)
from pipeline.sources.orientation import IDENTITY
from pipeline.sources.video import to_frame
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


# -- frames handed on as decoded 4:2:0 planes ------------------------------------------------------


def _decoded(
    tmp_path: Path,
    pix_fmt: str,
    colorspace: int,
    color_range: int,
    size: tuple[int, int],
    codec: str = "libx264",
) -> Any:
    """The first decoded frame of a short clip (H.264, or ``codec`` in Matroska: FFV1 takes odd
    sizes) with these colour tags (a PyAV VideoFrame)."""
    import av

    h, w = size
    suffix = "mp4" if codec == "libx264" else "mkv"
    path = tmp_path / f"{pix_fmt}-{colorspace}-{color_range}-{h}x{w}.{suffix}"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.codec_context.colorspace, stream.codec_context.color_range = colorspace, color_range
        for i in range(2):
            frame = av.VideoFrame.from_ndarray(sample_rgb(h, w, i), format="rgb24").reformat(format=pix_fmt)
            frame.colorspace, frame.color_range = colorspace, color_range
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(path)) as container:
        return next(container.decode(video=0))


# (pixel format, AVColorSpace, AVColorRange): unspecified (FFmpeg assumes BT.601), BT.709 video
# range, JPEG-range pixel format, BT.601 and BT.709 tagged full range.
TAGS = [("yuv420p", 2, 0), ("yuv420p", 1, 1), ("yuvj420p", 2, 2), ("yuv420p", 5, 2), ("yuv420p", 1, 2)]


@pytest.mark.parametrize(("pix_fmt", "colorspace", "color_range"), TAGS)
def test_planes_convert_to_ffmpegs_rgb_within_two_levels(
    tmp_path: Path, pix_fmt: str, colorspace: int, color_range: int
) -> None:
    decoded = _decoded(tmp_path, pix_fmt, colorspace, color_range, (240, 320))
    frame = to_frame(decoded, 0, IDENTITY, 256, 0.0)
    yuv = frame.image
    assert isinstance(yuv, Yuv420) and yuv.matrix == ("bt709" if colorspace == 1 else "bt601")
    assert yuv.full_range == (color_range == 2)
    ours = yuv420_to_rgb(yuv).numpy().astype(np.int16)
    ffmpeg = decoded.to_ndarray(format="rgb24").astype(np.int16)
    diff = np.abs(ours - ffmpeg)
    assert diff.max() <= 2 and diff.mean() < 0.5
    # Resized, it is what the source would have made of FFmpeg's RGB, within the same bounds.
    resized = np.abs(frame.rgb().astype(np.int16) - resize_longest_fast(ffmpeg.astype(np.uint8), 256))
    assert resized.max() <= 3 and resized.mean() < 0.5


# Odd sizes through FFV1, which takes yuv420p (not the JPEG-range yuvj420p).
CLIPS = [(*tags, (240, 320), "libx264") for tags in TAGS] + [
    (*tags, (121, 161), "ffv1") for tags in TAGS if tags[0] == "yuv420p"
]


@pytest.mark.parametrize(("pix_fmt", "colorspace", "color_range", "size", "codec"), CLIPS)
def test_planes_convert_on_the_cpu_exactly_as_ffmpeg_decodes_to_rgb(
    tmp_path: Path, pix_fmt: str, colorspace: int, color_range: int, size: tuple[int, int], codec: str
) -> None:
    decoded = _decoded(tmp_path, pix_fmt, colorspace, color_range, size, codec)
    frame = to_frame(decoded, 0, IDENTITY, 256, 0.0)
    assert isinstance(frame.image, Yuv420)
    np.testing.assert_array_equal(yuv420_to_rgb_cpu(frame.image), decoded.to_ndarray(format="rgb24"))
    # What the encoder gets on a CPU: FFmpeg's RGB resized, as a source that converts would send.
    np.testing.assert_array_equal(frame.rgb(), resize_longest_fast(decoded.to_ndarray(format="rgb24"), 256))


def test_frames_the_device_cannot_convert_go_as_rgb(tmp_path: Path) -> None:
    image_size = 128
    cases = [
        _decoded(tmp_path, "yuv444p", 2, 0, (120, 160)),  # not 4:2:0
        _decoded(tmp_path, "yuv420p", 9, 1, (120, 160)),  # BT.2020
        _decoded(tmp_path, "yuv420p", 2, 0, (240, 2 * image_size + 2)),  # over twice the encoder size
    ]
    for decoded in cases:
        frame = to_frame(decoded, 0, IDENTITY, image_size, 0.0)
        assert isinstance(frame.image, np.ndarray)
        expected = resize_longest_fast(decoded.to_ndarray(format="rgb24"), image_size)
        np.testing.assert_array_equal(frame.rgb(), expected)
    assert isinstance(to_frame(cases[0], 0, IDENTITY, None, 0.0).image, np.ndarray)  # no encoder size


def test_odd_sized_planes_repeat_each_chroma_sample_over_its_pixels() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(16, 236, (5, 7), dtype=np.uint8)
    u = rng.integers(16, 241, (3, 4), dtype=np.uint8)
    v = rng.integers(16, 241, (3, 4), dtype=np.uint8)
    rgb = yuv420_to_rgb(Yuv420(y, u, v, "bt601", True, 64)).numpy().astype(float)
    assert rgb.shape == (5, 7, 3)
    # Full-range BT.601 by the book, each chroma sample over its 2x2 pixels, half a level down.
    cb = u.astype(float).repeat(2, 0).repeat(2, 1)[:5, :7] - 128
    cr = v.astype(float).repeat(2, 0).repeat(2, 1)[:5, :7] - 128
    red = y + 1.402 * cr
    green = y - 0.344136 * cb - 0.714136 * cr
    blue = y + 1.772 * cb
    book = np.clip(np.stack([red, green, blue], -1) - 0.5, 0, 255)
    assert np.abs(rgb - book).max() <= 0.5 + 1e-3


def test_the_device_resize_is_the_cpu_kernels_within_a_level() -> None:
    import torch

    image = sample_rgb(720, 1280, 3)
    h, w = input_size((720, 1280), 1024)
    on_device = resize_float(torch.from_numpy(image), (h, w)).permute(1, 2, 0).numpy()
    assert np.abs(on_device - resize_longest_fast(image, 1024)).max() <= 1


def test_the_encoder_takes_planes_as_it_takes_the_rgb_they_make(tmp_path: Path) -> None:
    import torch

    decoded = _decoded(tmp_path, "yuv420p", 2, 0, (240, 320))
    frame = to_frame(decoded, 0, IDENTITY, 256, 0.0)
    assert isinstance(frame.image, Yuv420)
    cpu = torch.device("cpu")
    from_planes = to_model_input([frame.image], 256, cpu, torch.float32)
    from_rgb = to_model_input([frame.rgb()], 256, cpu, torch.float32)
    assert torch.equal(from_planes, from_rgb)
    with pytest.raises(InvalidInputError, match="image size 256, not 512"):
        to_model_input([frame.image], 512, cpu, torch.float32)
