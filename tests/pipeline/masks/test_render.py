"""render: track colours, mask overlay, and rendering a source video with results to MP4."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pipeline.bench import samples
from pipeline.errors import InvalidInputError, SourceError
from pipeline.frames import FrameResult, TrackMask
from pipeline.masks.render import OUTLINE_PX, PALETTE, overlay, pick_encoder, render_video, track_colour
from pipeline.masks.rle import encode_rle

W, H, N = 160, 120, 20
# (track id, rows, cols) of the two tracked rectangles; ids 2 and 3 (green, yellow) are far from
# the clip's own colours, so a tint towards them is easy to see.
RECTS = ((2, slice(20, 60), slice(10, 60)), (3, slice(50, 100), slice(95, 150)))
LOST = (4, slice(5, 40), slice(70, 100))  # a lost track: never drawn


def _rect_mask(rows: slice, cols: slice, h: int = H, w: int = W) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[rows, cols] = True
    return mask


def _result(index: int, h: int = H, w: int = W, lost: bool = False) -> FrameResult:
    tracks = [
        TrackMask(tid, "active", 0.9, None, encode_rle(_rect_mask(rows, cols, h, w)))
        for tid, rows, cols in RECTS
    ]
    if lost:
        tid, rows, cols = LOST
        tracks.append(TrackMask(tid, "lost", 0.0, None, encode_rle(_rect_mask(rows, cols, h, w))))
    return FrameResult(index, index / 30, 0.0, w, h, tuple(tracks))


def _decode(path: Path) -> tuple[list[np.ndarray], Fraction | None]:
    """Every frame of a video as (H, W, 3) uint8 RGB, and the stream's average frame rate."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        images = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return images, stream.average_rate


def _distance(pixels: np.ndarray, colour: tuple[int, int, int]) -> float:
    """Mean Euclidean RGB distance of (..., 3) pixels to a colour."""
    return float(np.linalg.norm(pixels.astype(np.float32) - np.asarray(colour, np.float32), axis=-1).mean())


def _inner(rows: slice, cols: slice, margin: int = 4) -> tuple[slice, slice]:
    """The rectangle shrunk by ``margin`` (inside the outline, away from codec ringing)."""
    return slice(rows.start + margin, rows.stop - margin), slice(cols.start + margin, cols.stop - margin)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return samples.write_clip(tmp_path_factory.mktemp("render") / "clip.mp4", frames=N, width=W, height=H)


@pytest.fixture(scope="module")
def source_frames(clip: Path) -> list[np.ndarray]:
    return _decode(clip)[0]


# -- colours ---------------------------------------------------------------------------------------


def test_track_colour_is_stable_distinct_and_cycles() -> None:
    colours = [track_colour(i) for i in range(1, len(PALETTE) + 1)]
    assert colours == [track_colour(i) for i in range(1, len(PALETTE) + 1)]
    assert colours[0] == PALETTE[0]
    assert len(set(colours)) == len(PALETTE)
    for a, b in itertools.combinations(colours, 2):
        assert np.linalg.norm(np.subtract(a, b)) > 60, (a, b)
    assert all(all(isinstance(c, int) and 0 <= c <= 255 for c in col) for col in colours)
    assert track_colour(len(PALETTE) + 1) == track_colour(1)
    assert track_colour(np.int64(3)) == track_colour(3)
    with pytest.raises(InvalidInputError, match="track_id"):
        track_colour(True)


# -- overlay ---------------------------------------------------------------------------------------


def test_overlay_changes_only_masked_pixels() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    before = image.copy()
    rows, cols = slice(10, 30), slice(5, 25)
    mask = _rect_mask(rows, cols, 40, 50)
    out = overlay(image, [(1, mask)], alpha=0.5)

    assert out.dtype == np.uint8 and out.shape == image.shape and out is not image
    np.testing.assert_array_equal(image, before)  # input untouched
    np.testing.assert_array_equal(out[~mask], image[~mask])
    colour = np.asarray(track_colour(1))
    k = OUTLINE_PX
    interior = _rect_mask(slice(10 + k, 30 - k), slice(5 + k, 25 - k), 40, 50)
    outline = mask & ~interior
    assert np.all(out[outline] == colour)
    blend = np.round(image[interior] * 0.5 + colour * 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[interior], blend)


def test_overlay_outline_at_image_edge_and_alpha_zero() -> None:
    image = np.full((20, 20, 3), 100, dtype=np.uint8)
    mask = _rect_mask(slice(0, 10), slice(0, 20), 20, 20)  # touches three image edges
    out = overlay(image, [(5, mask)], alpha=0.0)
    changed = np.any(out != image, axis=-1)
    expected = mask.copy()
    expected[OUTLINE_PX : 10 - OUTLINE_PX, OUTLINE_PX : 20 - OUTLINE_PX] = False
    np.testing.assert_array_equal(changed, expected)


def test_overlay_later_masks_on_top_and_empty_list() -> None:
    image = np.zeros((30, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(overlay(image, []), image)
    a, b = _rect_mask(slice(0, 20), slice(0, 20), 30, 30), _rect_mask(slice(10, 30), slice(10, 30), 30, 30)
    out = overlay(image, [(1, a), (2, b)], alpha=1.0)
    assert tuple(out[15, 15]) == track_colour(2)
    assert tuple(out[5, 5]) == track_colour(1)


def test_overlay_rejects_bad_input() -> None:
    image = np.zeros((10, 12, 3), dtype=np.uint8)
    with pytest.raises(InvalidInputError, match=r"shape \(12, 10\), expected \(10, 12\)"):
        overlay(image, [(1, np.zeros((12, 10), dtype=bool))])
    with pytest.raises(InvalidInputError, match="uint8"):
        overlay(image.astype(np.float32), [])
    with pytest.raises(InvalidInputError, match="alpha"):
        overlay(image, [], alpha=1.5)


# -- render_video ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_render_video_tints_masks(clip: Path, source_frames: list[np.ndarray], tmp_path: Path) -> None:
    # Results for even frames only (with a lost track), plus one past the end, which is skipped.
    results = [_result(i, lost=True) for i in range(0, N, 2)] + [_result(N + 5)]
    seen: list[int] = []
    out = tmp_path / "overlay.mp4"
    written = render_video(clip, results, out, progress=seen.append)

    assert written == N and seen == list(range(1, N + 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.mp4"]  # no temporary left
    frames, rate = _decode(out)
    assert len(frames) == N and rate == 30
    assert all(f.shape == (H, W, 3) for f in frames)
    for i, (got, src) in enumerate(zip(frames, source_frames, strict=True)):
        for tid, rows, cols in RECTS:
            r, c = _inner(rows, cols)
            if i % 2 == 0:  # drawn: about half-way to the colour (alpha 0.5)
                assert _distance(got[r, c], track_colour(tid)) < 0.7 * _distance(src[r, c], track_colour(tid))
            else:  # no result: the frame as it was
                assert np.abs(got[r, c].astype(int) - src[r, c]).mean() < 6
        r, c = _inner(*LOST[1:])
        assert np.abs(got[r, c].astype(int) - src[r, c]).mean() < 6  # lost track not drawn


@pytest.mark.integration
def test_render_video_with_stride_and_scaled_masks(clip: Path, tmp_path: Path) -> None:
    # Stride 2 keeps frames 0, 2, …; results come at half resolution and are scaled to the frame.
    results = (_result(i, H // 2, W // 2) for i in range(N))
    out = tmp_path / "strided.mkv"
    assert render_video(clip, results, out, stride=2) == N // 2
    frames, rate = _decode(out)
    assert len(frames) == N // 2 and rate == 15  # same duration as the source
    tid, rows, cols = RECTS[0]
    r, c = _inner(rows, cols)
    assert _distance(frames[3][r, c], track_colour(tid)) < 90


@pytest.mark.integration
def test_render_video_odd_size(tmp_path: Path) -> None:
    import av

    h, w = 121, 161
    src = tmp_path / "odd.mkv"
    with av.open(str(src), "w") as container:  # 4:4:4 allows odd sides (write_clip wants even)
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv444p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(samples.render_frame(i, w, h), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))

    out = tmp_path / "odd.mp4"
    assert render_video(src, [_result(i, h, w) for i in range(5)], out) == 5
    frames, _ = _decode(out)
    assert len(frames) == 5 and frames[0].shape == (h + 1, w + 1, 3)  # padded to even
    tid, rows, cols = RECTS[1]
    r, c = _inner(rows, cols)
    picture = samples.render_frame(4, w, h)
    assert _distance(frames[4][r, c], track_colour(tid)) < 0.7 * _distance(picture[r, c], track_colour(tid))
    # The added row and column repeat the last ones.
    assert np.abs(frames[0][h].astype(int) - frames[0][h - 1]).mean() < 4
    assert np.abs(frames[0][:, w].astype(int) - frames[0][:, w - 1]).mean() < 4


def test_render_video_rejects_bad_output(clip: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        render_video(clip, [], tmp_path / "missing" / "out.mp4")
    with pytest.raises(InvalidInputError, match=r"\.mp4, \.mov, \.mkv|must end in"):
        render_video(clip, [], tmp_path / "out.avi")
    with pytest.raises(InvalidInputError, match="must end in"):
        render_video(clip, [], tmp_path / "out")
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(InvalidInputError, match="is a folder"):
        render_video(clip, [], tmp_path / "dir.mp4")
    with pytest.raises(InvalidInputError, match="stride"):
        render_video(clip, [], tmp_path / "out.mp4", stride=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.mp4"]


def test_render_video_source_error_propagates(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        render_video(tmp_path / "nope.mp4", [], tmp_path / "out.mp4")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_render_video_failure_leaves_nothing(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"old")

    def broken() -> Iterator[FrameResult]:
        yield from (_result(i) for i in range(5))
        raise RuntimeError("results stream broke")

    with pytest.raises(RuntimeError, match="broke"):
        render_video(clip, broken(), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    assert out.read_bytes() == b"old"  # the old file is kept; no partial one replaces it


def test_pick_encoder_prefers_h264() -> None:
    import av

    assert pick_encoder() in ("libx264", "libopenh264", "mpeg4")
    if "libx264" in av.codecs_available:
        assert pick_encoder() == "libx264"
