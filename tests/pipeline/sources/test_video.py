"""VideoSource: frame numbering, stride/start, resize, rotation, threads, bad inputs, http."""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.bench import samples
from pipeline.errors import InvalidInputError, SourceError
from pipeline.frames import Yuv420
from pipeline.model.transforms import input_size, resize_longest_fast
from pipeline.sources import Orientation, VideoSource
from pipeline.sources import video as video_module
from pipeline.sources.video import MAX_NATIVE_SCALE
from tests.fixtures.media import truncate_file, write_audio_only, write_text_as_mp4

W, H, N = 320, 240, 60
# A frame handed on as its decoded planes against FFmpeg's RGB, both resized: the bounds stated.
YUV_MAX_LEVELS, YUV_MEAN_LEVELS = 3, 0.5


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the 60-frame test clip (also served over http by ``http_base``)."""
    root = tmp_path_factory.mktemp("media")
    samples.write_clip(root / "clip.mp4", frames=N, width=W, height=H)
    return root


@pytest.fixture(scope="module")
def clip(media: Path) -> Path:
    return media / "clip.mp4"


@pytest.fixture(scope="module")
def clip_frames(clip: Path) -> list[np.ndarray]:
    with VideoSource(clip) as src:
        return [f.image for f in src.frames(image_size=None)]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_base(media: Path) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(media)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fails_fast(uri: str | Path, match: str, within_s: float = 5.0, **kwargs: Any) -> SourceError:
    """Open and read ``uri``; expect a one-line SourceError naming it, within ``within_s``."""
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=match) as info, VideoSource(uri, **kwargs) as src:
        for _ in src.frames(image_size=None):
            pass
    assert time.monotonic() - t0 < within_s
    message = str(info.value)
    assert "\n" not in message
    assert str(uri).split("@")[-1] in message or Path(uri).name in message
    return info.value


# -- orientation and URI checks (no decoding) ---------------------------------------------------


def _ffmpeg_matrix(ccw_degrees: int, hflip: bool = False, vflip: bool = False) -> list[int]:
    """FFmpeg's display matrix as av_display_rotation_set(-deg) then av_display_matrix_flip build it."""
    r = np.radians(ccw_degrees)
    m = [np.cos(r), -np.sin(r), 0.0, np.sin(r), np.cos(r), 0.0, 0.0, 0.0, 1.0]
    m = [v * 65536 for v in m[:8]] + [1 << 30]
    if hflip:
        m[0], m[3], m[6] = -m[0], -m[3], -m[6]
    if vflip:
        m[1], m[4], m[7] = -m[1], -m[4], -m[7]
    return [round(v) for v in m]


@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
@pytest.mark.parametrize("hflip", [False, True])
def test_orientation_from_matrix_is_rotation_then_mirror(degrees: int, hflip: bool) -> None:
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    expected = np.rot90(image, degrees // 90)
    if hflip:
        expected = expected[:, ::-1]
    o = Orientation.from_display_matrix(_ffmpeg_matrix(degrees, hflip=hflip))
    np.testing.assert_array_equal(o.apply(image), expected)
    assert o.size((2, 3)) == expected.shape[:2]
    if not hflip:
        assert o.rotation == degrees
        assert Orientation.from_rotation(degrees) == o


def test_orientation_snaps_odd_angles_to_nearest_quarter_turn() -> None:
    assert Orientation.from_display_matrix(_ffmpeg_matrix(80)) == Orientation.from_rotation(90)
    assert Orientation.from_display_matrix(_ffmpeg_matrix(-100)) == Orientation.from_rotation(270)


@pytest.mark.parametrize(
    "uri",
    ["file:///tmp/clip.mp4", "file:clip.mp4", "rtsp://cam/stream", "udp://0.0.0.0:5000", "ftp://host/a.mp4"],
)
def test_other_schemes_are_refused_naming_the_allowed_ones(uri: str) -> None:
    with pytest.raises(InvalidInputError, match=r"http:// or https://"):
        VideoSource(uri)


@pytest.mark.parametrize("uri", ["", "   ", "http:///nohost.mp4"])
def test_empty_source_or_url_without_host_is_invalid(uri: str) -> None:
    with pytest.raises(InvalidInputError):
        VideoSource(uri)


# -- decoding a file ---------------------------------------------------------------------------


@pytest.mark.integration
def test_info_of_generated_clip(clip: Path) -> None:
    with VideoSource(clip) as src:
        info = src.info
    assert (info.width, info.height, info.fps, info.frame_count) == (W, H, 30.0, N)
    assert (info.codec, info.rotation, info.uri) == ("h264", 0, str(clip))


@pytest.mark.integration
def test_every_frame_in_order_with_pts_and_content(clip: Path) -> None:
    before = time.time()
    with VideoSource(clip) as src:
        frames = list(src.frames(image_size=None))
    assert [f.index for f in frames] == list(range(N))
    pts = [f.pts for f in frames if f.pts is not None]
    assert pts == sorted(pts) and len(set(pts)) == N
    assert pts[1] == pytest.approx(1 / 30) and pts[-1] == pytest.approx((N - 1) / 30)
    for f in frames:
        assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 and f.image.flags.c_contiguous
        assert f.original_size == (H, W)
        assert before <= f.capture_time <= time.time()
        assert 0 < f.timings["decode"] < 1
    # RGB order and the right picture: the coded frame is close to the drawn one.
    assert _mae(frames[17].image, samples.render_frame(17, W, H)) < 4
    assert _mae(frames[17].image, samples.render_frame(17, W, H)[..., ::-1]) > 8  # not BGR


@pytest.mark.integration
@pytest.mark.parametrize(
    ("start", "stride", "expected"),
    [
        (0, 1, list(range(N))),
        (0, 3, list(range(0, N, 3))),
        (5, 1, list(range(5, N))),
        (7, 4, list(range(7, N, 4))),
        (59, 10, [59]),
        (60, 1, []),
        (500, 2, []),
    ],
)
def test_start_and_stride(
    clip: Path, clip_frames: list[np.ndarray], start: int, stride: int, expected: list[int]
) -> None:
    with VideoSource(clip) as src:
        frames = list(src.frames(start=start, stride=stride, image_size=None))
    assert [f.index for f in frames] == expected
    for f in frames:
        np.testing.assert_array_equal(f.image, clip_frames[f.index])


@pytest.mark.integration
@pytest.mark.parametrize("image_size", [1024, 256, 97])
def test_resize_is_sams_resize_of_the_full_frame(
    clip: Path, clip_frames: list[np.ndarray], image_size: int
) -> None:
    with VideoSource(clip) as src:
        frames = list(src.frames(stride=20, image_size=image_size))
    assert [f.index for f in frames] == [0, 20, 40]
    for f in frames:
        # Up to twice the encoder size a frame keeps its decoded planes (the encoder's device
        # converts and resizes them); a larger one is made RGB and resized by the source.
        native = max(H, W) <= MAX_NATIVE_SCALE * image_size
        assert isinstance(f.image, Yuv420) == native and f.image_size == image_size
        assert f.original_size == (H, W)
        rgb = f.rgb()
        assert rgb.shape == (*input_size((H, W), image_size), 3) and rgb.dtype == np.uint8
        expected = resize_longest_fast(clip_frames[f.index], image_size)
        if native:  # FFmpeg's RGB and ours differ by up to 2 levels; the resize averages them
            diff = np.abs(rgb.astype(int) - expected)
            assert diff.max() <= YUV_MAX_LEVELS and diff.mean() < YUV_MEAN_LEVELS
        else:
            np.testing.assert_array_equal(rgb, expected)


@pytest.mark.integration
@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_display_rotation_is_applied(tmp_path: Path, rotation: int) -> None:
    path = samples.write_clip(tmp_path / "rot.mp4", frames=6, width=W, height=H, rotation=rotation)
    with VideoSource(path) as src:
        info = src.info
        full = list(src.frames(image_size=None))
        small = list(src.frames(image_size=256))
    shown = (W, H) if rotation % 180 else (H, W)
    assert info.rotation == rotation and (info.height, info.width) == shown
    k = rotation // 90
    for f in full:
        assert f.image.shape[:2] == shown and f.original_size == shown
        drawn = samples.render_frame(f.index, W, H)
        assert _mae(f.image, np.rot90(drawn, k)) < 4
        if rotation == 180:  # the other orientations of the same shape must not match
            assert _mae(f.image, drawn) > 8
        else:
            assert _mae(f.image, np.rot90(drawn, k + 2)) > 8
    for f, g in zip(small, full, strict=True):  # planes turned like the picture
        assert isinstance(f.image, Yuv420) and f.image.shape[:2] == shown
        assert f.original_size == shown and f.rgb().shape[:2] == input_size(shown, 256)
        diff = np.abs(f.rgb().astype(int) - resize_longest_fast(g.image, 256))
        assert diff.max() <= YUV_MAX_LEVELS and diff.mean() < YUV_MEAN_LEVELS


@pytest.mark.integration
@pytest.mark.parametrize(("codec", "suffix"), [("mpeg4", ".mp4"), ("hevc", ".mkv"), ("vp9", ".webm")])
def test_other_codecs_and_containers(tmp_path: Path, codec: str, suffix: str) -> None:
    path = samples.write_clip(tmp_path / f"clip{suffix}", frames=12, width=160, height=120, codec=codec)
    with VideoSource(path) as src:
        assert src.info.codec == codec and src.info.fps == 30.0
        assert src.info.frame_count is not None and abs(src.info.frame_count - 12) <= 1
        frames = list(src.frames(image_size=None))
    assert [f.index for f in frames] == list(range(12))
    assert _mae(frames[5].image, samples.render_frame(5, 160, 120)) < 6


@pytest.mark.integration
def test_a_second_pass_reads_again(clip: Path) -> None:
    with VideoSource(clip) as src:
        first = [f.index for f in src.frames(stride=10)]
        second = [f.index for f in src.frames(start=3, stride=10)]
    assert first == [0, 10, 20, 30, 40, 50] and second == [3, 13, 23, 33, 43, 53]


# -- the decode thread ------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_abandoned_iteration_stops_its_thread(clip: Path) -> None:
    baseline = threading.active_count()
    with VideoSource(clip) as src:
        it = src.frames()
        assert next(it).index == 0
        assert threading.active_count() == baseline + 1
        it.close()  # what dropping or breaking out of a for loop does
        assert threading.active_count() == baseline
        for frame in src.frames():
            if frame.index == 3:
                break
        assert threading.active_count() == baseline
        it = src.frames()
        next(it)
    # close() stops a pass still in progress; its iterator then says so.
    assert threading.active_count() == baseline
    with pytest.raises(SourceError, match="closed"):
        next(it)
    with pytest.raises(SourceError, match="closed"):
        src.frames()


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_decoding_runs_ahead_by_at_most_the_queue(clip: Path) -> None:
    with VideoSource(clip, queue_size=2) as src:
        it = src.frames(image_size=None)
        next(it)
        time.sleep(0.3)  # the thread fills the queue, then waits
        (reader,) = src._readers
        assert 1 + 2 <= reader.decoded <= 1 + 2 + 1
        assert [f.index for f in it] == list(range(1, N))


@pytest.mark.integration
def test_a_bug_in_the_thread_reaches_the_reader_with_its_type(
    clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    readying = video_module._yuv420

    def broken(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ZeroDivisionError("bug")
        return readying(*args)

    monkeypatch.setattr(video_module, "_yuv420", broken)
    with VideoSource(clip) as src:
        seen = []
        with pytest.raises(ZeroDivisionError, match="bug"):
            for f in src.frames():
                seen.append(f.index)
    assert seen == [0, 1]


# -- bad inputs ---------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_missing_empty_directory_text(tmp_path: Path) -> None:
    _fails_fast(tmp_path / "nope.mp4", "no such file")
    (tmp_path / "empty.mp4").touch()
    _fails_fast(tmp_path / "empty.mp4", "empty file")
    (tmp_path / "folder.mp4").mkdir()
    _fails_fast(tmp_path / "folder.mp4", "is a directory")
    err = _fails_fast(write_text_as_mp4(tmp_path / "notes.mp4"), "not a video file")
    assert err.__cause__ is not None  # PyAV's error, chained


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_truncated_mp4_without_faststart_fails_at_open(tmp_path: Path) -> None:
    path = samples.write_clip(tmp_path / "cut.mp4", frames=30, faststart=False)
    truncate_file(path, 0.6)  # the index (moov) was at the end: gone
    _fails_fast(path, "incomplete or corrupt MP4")


@pytest.mark.integration
@pytest.mark.timeout(30)
@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_faststart_mp4_yields_what_decodes_then_fails(tmp_path: Path, fraction: float) -> None:
    path = truncate_file(samples.write_clip(tmp_path / "cut.mp4", frames=N), fraction)
    indices: list[int] = []
    with VideoSource(path) as src:
        assert src.info.frame_count == N  # the index still says 60
        with pytest.raises(SourceError, match=r"ended early after frame \d+: truncated") as info:
            indices.extend(f.index for f in src.frames(image_size=None))
    assert indices == list(range(len(indices))) and 0 < len(indices) < N
    assert f"after frame {indices[-1]}:" in str(info.value)


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_mp4_cut_at_a_sample_boundary_is_still_caught(tmp_path: Path) -> None:
    import av

    path = samples.write_clip(tmp_path / "cut.mp4", frames=20)
    with av.open(str(path)) as container:
        ends = sorted(e.pos + e.size for e in container.streams.video[0].index_entries)
    path.write_bytes(path.read_bytes()[: ends[9]])  # exactly the first 10 samples
    with VideoSource(path) as src, pytest.raises(SourceError, match="indexed video data are missing"):
        list(src.frames(image_size=None))


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    _fails_fast(write_audio_only(tmp_path / "tone.m4a"), r"no video stream \(streams: audio\)")


@pytest.mark.integration
@pytest.mark.parametrize(
    "kwargs", [{"start": -1}, {"stride": 0}, {"stride": 1.5}, {"image_size": 0}, {"start": True}]
)
def test_bad_frame_arguments(clip: Path, kwargs: dict[str, object]) -> None:
    with VideoSource(clip) as src, pytest.raises(InvalidInputError):
        src.frames(**kwargs)  # type: ignore[arg-type]


# -- http ---------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_http_url_decodes_the_same_frames_as_the_file(
    http_base: str, clip: Path, clip_frames: list[np.ndarray]
) -> None:
    with VideoSource(f"{http_base}/clip.mp4", open_timeout_s=5, read_timeout_s=5) as src:
        assert (src.info.width, src.info.height, src.info.frame_count) == (W, H, N)
        frames = list(src.frames(image_size=None))
        again = [f.index for f in src.frames(start=50, stride=5)]  # a second pass reconnects
    assert [f.index for f in frames] == list(range(N)) and again == [50, 55]
    for f in frames:
        np.testing.assert_array_equal(f.image, clip_frames[f.index])


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_http_errors_name_the_url_and_hide_the_password(http_base: str) -> None:
    err = _fails_fast(f"{http_base}/missing.mp4", "404 Not Found")
    assert "/missing.mp4" in str(err)
    secret = http_base.replace("http://", "http://user:hunter2@") + "/missing.mp4?sig=s3cret"
    with pytest.raises(SourceError) as info:
        VideoSource(secret)
    message = str(info.value)
    assert "hunter2" not in message and "s3cret" not in message
    assert "user:***@" in message and "/missing.mp4?…" in message


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_refused_connection_fails_fast() -> None:
    _fails_fast(f"http://127.0.0.1:{_closed_port()}/clip.mp4", "connection refused", within_s=3)


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_silent_server_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/clip.mp4"
        _fails_fast(url, "timed out", within_s=4, open_timeout_s=1.0, read_timeout_s=1.0)


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_server_stalling_mid_file_times_out_after_the_frames_it_sent(clip: Path) -> None:
    data = clip.read_bytes()
    sent = threading.Event()
    release = threading.Event()

    def serve(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            head = f"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: {len(data)}\r\n\r\n"
            conn.sendall(head.encode() + data[: len(data) // 2])
            sent.set()
            release.wait(10)  # stall: the rest never comes

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        server = threading.Thread(target=serve, args=(listener,), daemon=True)
        server.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/clip.mp4"
        indices: list[int] = []
        t0 = time.monotonic()
        try:
            with (
                VideoSource(url, open_timeout_s=2, read_timeout_s=1) as src,
                pytest.raises(SourceError, match=r"ended early after frame \d+: timed out"),
            ):
                indices.extend(f.index for f in src.frames(image_size=None))
        finally:
            release.set()
            server.join(5)
    assert sent.is_set() and time.monotonic() - t0 < 6
    assert indices == list(range(len(indices))) and 0 < len(indices) < N
