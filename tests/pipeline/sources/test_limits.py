"""Media limits: frame pixels (media bombs), a file's frames and duration, through real PyAV."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pipeline.bench.samples import write_clip
from pipeline.cli.main import build_parser
from pipeline.cli.options import media_limits
from pipeline.errors import InvalidInputError, SourceError
from pipeline.sources import LiveSource, VideoSource
from pipeline.sources.host import ReadRequest, SourceHost, SourceSpec
from pipeline.sources.limits import DEFAULT_MAX_FRAME_PIXELS, LimitExceeded, MediaLimits
from tests.fixtures.http import serve_directory
from tests.fixtures.media import write_flat_h264, write_png_frames, write_undeclared_clip

ROOT = Path(__file__).resolve().parents[3]
BOMB = (16384, 8192)
TOO_LARGE = "frames of 16384×8192 (134 Mpx) exceed the limit of 35.4 Mpx per frame (--max-frame-pixels)"

# -- the checks ---------------------------------------------------------------------------------


def test_the_size_check_names_the_frame_the_limit_and_the_option() -> None:
    limits = MediaLimits()
    with pytest.raises(LimitExceeded) as info:
        limits.check_size(*BOMB)
    assert info.value.reason == TOO_LARGE
    limits.check_size(8192, 4320)  # DCI 8K: the default's own size passes
    limits.check_size(7680, 4320)
    with pytest.raises(LimitExceeded, match=r"8194×4320 .* exceed"):
        limits.check_size(8194, 4320)
    MediaLimits(max_frame_pixels=None).check_size(*BOMB)  # no limit
    assert limits.decoder_options() == {"max_pixels": str(DEFAULT_MAX_FRAME_PIXELS)}
    assert MediaLimits(max_frame_pixels=None).decoder_options() == {}


@pytest.mark.parametrize(
    ("frames", "seconds", "match"),
    [
        (101, None, "it has 101 frames, more than the limit of 100 \\(--max-frames\\)"),
        (None, 60.5, "it lasts 60.5 s, longer than the limit of 60 s \\(--max-duration-s\\)"),
        (100, 60.0, None),  # at the limits
        (None, None, None),  # nothing declared: checked while decoding
    ],
)
def test_declared_lengths_past_the_limits_fail(
    frames: int | None, seconds: float | None, match: str | None
) -> None:
    limits = MediaLimits(max_frames=100, max_duration_s=60)
    if match is None:
        limits.check_declared(frames, seconds)
        return
    with pytest.raises(LimitExceeded, match=match):
        limits.check_declared(frames, seconds)


def test_positions_past_the_limits_fail() -> None:
    limits = MediaLimits(max_frames=100, max_duration_s=2.0)
    limits.check_position(99, 1.99)  # the 100th frame, shown before 2 s
    limits.check_position(99, None)  # no timestamp: only the count applies
    with pytest.raises(LimitExceeded, match="more than 100 frames"):
        limits.check_position(100, 0.5)
    with pytest.raises(LimitExceeded, match="longer than 2 s"):
        limits.check_position(60, 2.0)  # shown at 2 s: the video lasts longer than 2 s
    MediaLimits(max_frame_pixels=None).check_position(10**9, 10.0**9)  # no limits


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_frame_pixels": 0},
        {"max_frame_pixels": -5},
        {"max_frame_pixels": 1.5},
        {"max_frames": 0},
        {"max_frames": True},
        {"max_duration_s": 0},
        {"max_duration_s": -1.0},
    ],
)
def test_bad_limits_are_refused_naming_the_field(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError, match=next(iter(kwargs))):
        MediaLimits(**kwargs)


def test_the_cli_options_serve_bounds_files_run_does_not_and_0_means_no_limit() -> None:
    parser = build_parser()
    serve = media_limits(parser.parse_args(["serve"]))
    assert serve == MediaLimits(DEFAULT_MAX_FRAME_PIXELS, 6 * 3600 * 60, 6 * 3600.0)
    run = media_limits(parser.parse_args(["run", "clip.mp4"]))
    assert run == MediaLimits(DEFAULT_MAX_FRAME_PIXELS, None, None)
    args = ["run", "clip.mp4", "--max-frame-pixels", "0", "--max-frames", "50", "--max-duration-s", "2.5"]
    assert media_limits(parser.parse_args(args)) == MediaLimits(None, 50, 2.5)
    with pytest.raises(InvalidInputError, match="--max-frames must be >= 0"):
        media_limits(parser.parse_args(["serve", "--max-frames", "-1"]))


# -- media bombs through real PyAV ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One 16384×8192 frame, a few hundred KB on disk: H.264 in MPEG-TS (as the issue's file;
    the size is in its stream headers) and PNG in MOV (FFmpeg learns the size only by decoding)."""
    folder = tmp_path_factory.mktemp("bombs")
    return {
        "h264": write_flat_h264(folder / "bomb.ts", *BOMB),
        "png": write_png_frames(folder / "bomb.mov", [BOMB]),
    }


_OPEN_AND_MEASURE = textwrap.dedent(
    """
    import json, sys
    import av, numpy
    from pipeline.errors import SourceError
    from pipeline.sources.limits import MediaLimits
    from pipeline.sources.video import VideoSource

    def peak_kb():  # this process's peak RSS (ru_maxrss would count the forking parent's pages)
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    limits = MediaLimits() if sys.argv[2] == "default" else MediaLimits(max_frame_pixels=None)
    before = peak_kb()
    try:
        with VideoSource(sys.argv[1], limits=limits) as source:
            error = None
    except SourceError as exc:
        error = str(exc)
    print(json.dumps({"error": error, "grown_mb": (peak_kb() - before) / 1024}))
    """
)


def _open_in_a_process(path: Path, limits: str) -> dict[str, Any]:
    """Open ``path`` in a fresh process; its error and how much its peak RSS grew meanwhile (C
    allocations included, which tracemalloc does not see)."""
    done = subprocess.run(
        [sys.executable, "-c", _OPEN_AND_MEASURE, str(path), limits],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("kind", ["h264", "png"])
def test_a_media_bomb_fails_at_open_without_decoding_its_frame(bombs: dict[str, Path], kind: str) -> None:
    path = bombs[kind]
    assert path.stat().st_size < 600_000
    unbounded = _open_in_a_process(path, "none")
    assert unbounded["error"] is None
    assert unbounded["grown_mb"] > 250, unbounded  # it is a bomb: opening it unbounded costs that much
    bounded = _open_in_a_process(path, "default")
    assert bounded["grown_mb"] < 100, bounded
    error = bounded["error"]
    assert error is not None and error.startswith(f"cannot read video {path}: ")
    assert "\n" not in error and "--max-frame-pixels" in error
    if kind == "h264":  # the size is known before decoding: the message gives it
        assert error.endswith(TOO_LARGE)
    else:  # the decoder refused it (max_pixels): the size is not known here
        assert "the decoder refused a frame larger than the limit of 35.4 Mpx" in error


@pytest.mark.slow
@pytest.mark.integration
def test_a_live_feed_of_huge_frames_fails_at_open_and_is_not_retried(bombs: dict[str, Path]) -> None:
    with serve_directory(bombs["h264"].parent) as base:
        url = f"{base}/bomb.ts"
        with pytest.raises(SourceError) as info:
            LiveSource(url, open_timeout_s=5, give_up_s=5)
    assert str(info.value) == f"cannot open live source {url}: {TOO_LARGE}"


def test_frames_that_grow_past_the_limit_mid_way_stop_the_video_there(tmp_path: Path) -> None:
    path = write_png_frames(tmp_path / "grows.mov", [(64, 48)] * 3 + [BOMB])
    with VideoSource(path) as source:
        assert (source.info.width, source.info.height) == (64, 48)  # as its header says
        seen = []
        with pytest.raises(SourceError) as info:
            for frame in source.frames(image_size=None):
                seen.append(frame.index)
    assert seen == [0, 1, 2]
    message = str(info.value)
    assert message.startswith(f"video {path} stopped after frame 2: the decoder refused a frame larger")
    assert "--max-frame-pixels" in message


def test_a_lower_pixel_limit_refuses_an_ordinary_clip_at_open(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.mp4", frames=3, width=320, height=240)
    with pytest.raises(SourceError, match=r"frames of 320×240 \(0.0768 Mpx\) exceed the limit of 0.05 Mpx"):
        VideoSource(clip, limits=MediaLimits(max_frame_pixels=50_000))
    with VideoSource(clip, limits=MediaLimits(max_frame_pixels=320 * 240)) as source:
        assert len(list(source.frames(image_size=None))) == 3


# -- a file's frames and duration --------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """60 frames at 30 fps: an MP4 that declares its frames and duration, and a Matroska file
    written as a live stream, which declares neither (its frames carry timestamps)."""
    folder = tmp_path_factory.mktemp("lengths")
    return {
        "declared": write_clip(folder / "declared.mp4", frames=60, width=64, height=48),
        "undeclared": write_undeclared_clip(folder / "undeclared.mkv", frames=60, fps=30),
    }


@pytest.mark.parametrize(
    ("limits", "match"),
    [
        (MediaLimits(max_frames=50), "it has 60 frames, more than the limit of 50 \\(--max-frames\\)"),
        (MediaLimits(max_duration_s=1.5), "it lasts 2.0 s, longer than the limit of 1.5 s"),
    ],
)
def test_a_file_that_declares_more_fails_at_open(
    clips: dict[str, Path], limits: MediaLimits, match: str
) -> None:
    with pytest.raises(SourceError, match=f"^cannot read video {clips['declared']}: {match}"):
        VideoSource(clips["declared"], limits=limits)


@pytest.mark.parametrize(
    ("limits", "frames", "match"),
    [
        (MediaLimits(max_frames=50), 50, "stopped after frame 49: it has more than 50 frames, the limit"),
        (MediaLimits(max_duration_s=1.0), 30, "stopped after frame 29: it lasts longer than 1 s, the limit"),
    ],
)
def test_a_file_that_turns_out_longer_fails_at_the_limit_not_cut_silently(
    clips: dict[str, Path], limits: MediaLimits, frames: int, match: str
) -> None:
    path = clips["undeclared"]
    with VideoSource(path, limits=limits) as source:
        seen = []
        with pytest.raises(SourceError, match=f"^video {path} {match}"):
            for frame in source.frames(stride=1, image_size=None):
                seen.append(frame.index)
        assert seen == list(range(frames))
        # Another pass (a resumed job) counts from the file's start too, not from where it starts.
        with pytest.raises(SourceError, match=match):
            list(source.frames(start=frames - 2, image_size=None))


@pytest.mark.parametrize("kind", ["declared", "undeclared"])
def test_a_file_within_the_limits_reads_whole(clips: dict[str, Path], kind: str) -> None:
    limits = MediaLimits(max_frames=60, max_duration_s=2.0)
    with VideoSource(clips[kind], limits=limits) as source:
        assert [f.index for f in source.frames(image_size=None)] == list(range(60))


def test_the_source_host_fails_a_job_at_the_limit_after_its_frames(clips: dict[str, Path]) -> None:
    host = SourceHost()
    limits = MediaLimits(max_frames=10)
    after: dict[str, int | None] = {"declared": None, "undeclared": None}
    indices: dict[str, list[int]] = {"declared": [], "undeclared": []}
    errors: dict[str, str] = {}
    try:
        for _ in range(200):
            requests = [
                ReadRequest(kind, SourceSpec(str(clips[kind]), 64, limits=limits), after[kind], 4)
                for kind in after
                if kind not in errors
            ]
            if not requests:
                break
            (replies,), _ = host.read([requests], wait_s=0.05)
            for reply in replies:
                assert not reply.end, reply  # never an end: the limit is a failure
                indices[reply.job_id] += reply.indices
                if reply.indices:
                    after[reply.job_id] = reply.indices[-1]
                if reply.error is not None:
                    errors[reply.job_id] = reply.error
    finally:
        host.shutdown()
    assert indices == {"declared": [], "undeclared": list(range(10))}
    assert errors["declared"].endswith("it has 60 frames, more than the limit of 10 (--max-frames)")
    assert errors["undeclared"].endswith(
        "stopped after frame 9: it has more than 10 frames, the limit (--max-frames)"
    )
