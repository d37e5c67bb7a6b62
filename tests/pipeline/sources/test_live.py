"""LiveSource: newest-frame mailbox, drops, reconnects, giving up, fast clear failures, no leaks.

Real streams on loopback: a PyAV sender subprocess (MPEG-TS over UDP or TCP) that the tests kill
and restart, and GStreamer's RTSP server where the machine has it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pipeline.bench import samples
from pipeline.errors import InvalidInputError, SourceError
from pipeline.frames import Frame, Yuv420
from pipeline.model.transforms import input_size
from pipeline.sources import LiveSource
from pipeline.sources.reader import LiveReader
from tests.fixtures.streams import RtspServer, StreamSender, free_port, rtsp_server_available

W, H = 320, 240
# Short timeouts keep the file quick; the defaults (5 s, 5 s, 30 s) are for real cameras.
FAST: dict[str, Any] = {
    "open_timeout_s": 2.0,
    "stall_timeout_s": 1.0,
    "give_up_s": 8.0,
    "backoff_s": (0.2, 1.0),
}


class Events:
    """An ``on_event`` callback that records (seconds since creation, kind, detail)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.seen: list[tuple[float, str, str]] = []
        self._cond = threading.Condition()

    def __call__(self, kind: str, detail: str) -> None:
        with self._cond:
            self.seen.append((time.monotonic() - self.t0, kind, detail))
            self._cond.notify_all()

    @property
    def kinds(self) -> list[str]:
        return [kind for _, kind, _ in self.seen]

    def wait_for(self, kind: str, timeout: float) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: kind in self.kinds, timeout), f"no {kind} in {self.seen}"


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while (extra := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not extra, f"threads left running: {extra}"


def _take(src: LiveSource, n: int, timeout_s: float = 3.0) -> list[Frame]:
    frames = []
    for _ in range(n):
        frame = src.latest(timeout_s)
        assert frame is not None, f"no frame within {timeout_s} s; {src.stats()}"
        frames.append(frame)
    return frames


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# -- URIs and arguments (no network) ------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    ["ftp://host/a.ts", "file:///tmp/a.ts", "rtmp://host/live", "/tmp/clip.mp4", "clip.mp4", "/dev/sda", ""],
)
def test_other_sources_are_refused_naming_the_allowed_ones(uri: str) -> None:
    with pytest.raises(
        InvalidInputError, match=r"rtsp://, rtsps://, udp://, tcp://, http:// or https://.*/dev/videoN"
    ):
        LiveSource(uri)


def test_refusal_hides_the_password() -> None:
    with pytest.raises(InvalidInputError) as info:
        LiveSource("rtmp://admin:hunter2@cam.local/live?token=s3cret")
    assert "hunter2" not in str(info.value) and "s3cret" not in str(info.value)
    assert "admin:***@" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"open_timeout_s": 0},
        {"stall_timeout_s": -1},
        {"give_up_s": 0},
        {"backoff_s": (1.0, 0.5)},
        {"image_size": 0},
    ],
)
def test_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        LiveSource("udp://127.0.0.1:9", **kwargs)


# -- frames -------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("protocol", "kind", "codec"),
    [
        ("udp", "video", "h264"),
        ("tcp", "video", "h264"),
        ("http", "video", "h264"),
        ("http", "mjpeg", "mjpeg"),
    ],
)
def test_frames_arrive_in_order_fresh_and_resized(protocol: str, kind: str, codec: str) -> None:
    with StreamSender(protocol, kind=kind) as sender:
        before = time.time()
        t0 = time.monotonic()
        with LiveSource(sender.url, image_size=256, **FAST) as src:
            opened_s = time.monotonic() - t0
            info = src.info
            frames, ages = [], []
            for _ in range(15):
                (frame,) = _take(src, 1)
                ages.append(time.time() - frame.capture_time)
                frames.append(frame)
    # Each taken while fresh (checked as it is taken, not after all 15). A median: one late
    # wake-up of this thread on a busy machine is not staleness. The newest-frame rule itself is
    # the slow-consumer test's.
    assert float(np.median(ages)) < 0.5, ages
    assert opened_s < 2.0
    assert (info.width, info.height, info.codec, info.frame_count, info.rotation) == (W, H, codec, None, 0)
    assert info.fps is not None and info.fps > 0
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices))  # increasing; frames may drop in the burst at open
    times = [f.capture_time for f in frames]
    assert times == sorted(times) and before <= times[0] <= time.time()
    for f in frames:
        assert isinstance(f.image, Yuv420) and f.image.y.shape == (H, W) and f.image.y.flags.c_contiguous
        assert f.rgb().shape == (*input_size((H, W), 256), 3) and f.rgb().dtype == np.uint8
        assert f.original_size == (H, W)
        assert 0 < f.timings["decode"] < 0.5 and 0 < f.timings["preprocess"] < 0.5


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_the_picture_is_the_senders_in_rgb() -> None:
    with StreamSender("tcp") as sender, LiveSource(sender.url, image_size=None, **FAST) as src:
        frame = _take(src, 1)[0]
    # The tcp sender starts with its receiver and TCP loses nothing: frame k is the sender's k.
    assert frame.image.shape == (H, W, 3)
    drawn = samples.render_frame(frame.index, W, H)
    assert _mae(frame.image, drawn) < 4
    assert _mae(frame.image, drawn[..., ::-1]) > 8  # not BGR


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_a_slow_consumer_gets_the_newest_frame_and_drops_are_counted() -> None:
    with StreamSender("tcp", fps=30) as sender, LiveSource(sender.url, image_size=None, **FAST) as src:
        _take(src, 1)
        taken = []
        for _ in range(5):
            time.sleep(0.3)  # a slow encoder: 9 frames arrive meanwhile
            frame = _take(src, 1)[0]
            # The newest: decoded within the last frame interval or so, not 0.3 s ago.
            assert time.time() - frame.capture_time < 0.2
            taken.append(frame.index)
        stats = src.stats()
        assert src.dropped == stats["dropped"]
    gaps = np.diff(taken)
    assert all(4 <= g <= 16 for g in gaps), taken
    assert stats["delivered"] == 6 and stats["dropped"] >= 30 and stats["reconnects"] == 0
    pending = stats["received"] - stats["delivered"] - stats["dropped"]
    assert pending in (0, 1), stats


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_latest_returns_none_when_nothing_new_comes_in_time() -> None:
    with StreamSender("tcp", fps=4) as sender, LiveSource(sender.url, image_size=None, **FAST) as src:
        # Frames read at open come in a burst; then one every 0.25 s. Take one just as it comes.
        t0 = time.monotonic()
        while src.latest(2.0) is not None and time.monotonic() - t0 < 0.15:
            t0 = time.monotonic()
        t0 = time.monotonic()
        assert src.latest(0) is None
        assert src.latest(0.05) is None
        assert time.monotonic() - t0 < 0.15
        assert src.latest(1.0) is not None


# -- losing the feed ------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("protocol", "lost_reason"), [("tcp", "the stream ended"), ("udp", "nothing received for 1 s")]
)
def test_a_restarted_sender_is_reconnected(protocol: str, lost_reason: str) -> None:
    events = Events()
    with (
        StreamSender(protocol) as sender,
        LiveSource(sender.url, image_size=None, on_event=events, **FAST) as src,
    ):
        before = _take(src, 5)
        sender.kill()
        events.wait_for("source_lost", timeout=3.0)
        src.latest(0)  # a frame received just before the loss may still wait: take it
        time.sleep(0.5)
        assert src.latest(0) is None  # nothing while the sender is away
        sender.first_index = 100
        sender.start()
        after = _take(src, 5, timeout_s=5.0)
        stats = src.stats()
    assert events.kinds == ["source_lost", "source_restored"]
    assert lost_reason in events.seen[0][2] and "attempt" in events.seen[1][2]
    assert after[0].index > before[-1].index
    assert [f.index for f in after] == sorted({f.index for f in after})
    assert time.time() - after[-1].capture_time < 1.0
    assert stats["reconnects"] == 1


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_a_sender_that_never_returns_gives_up_with_the_reason() -> None:
    events = Events()
    with StreamSender("tcp") as sender:
        src = LiveSource(sender.url, image_size=None, on_event=events, **{**FAST, "give_up_s": 2.0})
        with src:
            _take(src, 3)
            sender.kill()
            killed = time.monotonic()
            with pytest.raises(SourceError) as info:
                while src.latest(5.0) is not None:
                    pass
            gave_up_after = time.monotonic() - killed
            with pytest.raises(SourceError, match="lost for 2 s"):  # and stays failed
                src.latest(0)
    message = str(info.value)
    assert (
        message.startswith(f"live source {sender.url} lost for 2 s: connection refused")
        and "\n" not in message
    )
    assert 1.8 < gave_up_after < 3.0
    assert events.kinds == ["source_lost"]
    assert src.stats()["reconnects"] == 0


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_a_failing_event_callback_reaches_the_reader_with_its_type() -> None:
    def callback(kind: str, detail: str) -> None:
        raise ZeroDivisionError(f"bug on {kind}")

    with (
        StreamSender("tcp") as sender,
        LiveSource(sender.url, image_size=None, on_event=callback, **FAST) as src,
    ):
        _take(src, 1)
        sender.kill()
        with pytest.raises(ZeroDivisionError, match="bug on source_lost"):
            while src.latest(3.0) is not None:
                pass


# -- the first connection fails fast and clearly ----------------------------------------------------


def _fails_fast(uri: str, match: str, within_s: float, **kwargs: Any) -> SourceError:
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=match) as info:
        LiveSource(uri, **{**FAST, "open_timeout_s": 1.0, **kwargs})
    assert time.monotonic() - t0 < within_s
    message = str(info.value)
    assert "\n" not in message and message.startswith(("cannot open live source", "cannot read live source"))
    return info.value


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_refused_connections_fail_at_once() -> None:
    port = free_port()
    _fails_fast(f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port}: connection refused", within_s=0.5)
    _fails_fast(f"http://127.0.0.1:{port}/cam.mjpg", "connection refused", within_s=0.5)
    err = _fails_fast(f"rtsp://admin:hunter2@127.0.0.1:{port}/stream?token=s3cret", "connection refused", 0.5)
    assert "admin:***@127.0.0.1" in str(err)
    for text in (str(err), repr(err.__cause__)):  # the chained PyAV error is scrubbed too
        assert "hunter2" not in text and "s3cret" not in text


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_silence_fails_within_the_open_timeout() -> None:
    port = free_port(socket.SOCK_DGRAM)
    _fails_fast(f"udp://127.0.0.1:{port}", r"timed out: nothing received within 1 s", within_s=1.6)
    with socket.socket() as listener:  # accepts connections (backlog) but never sends a byte
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        _fails_fast(url, r"timed out: nothing received within 1 s", within_s=1.6)


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_streams_without_video_fail_clearly() -> None:
    with StreamSender("tcp", kind="garbage") as sender:
        err = _fails_fast(sender.url, "not a video stream", within_s=1.5)
        assert err.__cause__ is not None
    with StreamSender("tcp", kind="audio") as sender:
        _fails_fast(sender.url, r"no video stream \(streams: audio\)", within_s=1.5)


@pytest.mark.integration
def test_a_missing_camera_fails_clearly() -> None:
    _fails_fast("/dev/video99", "no such camera device", within_s=0.5)


# -- closing ------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_close_is_prompt_while_streaming_and_while_reconnecting() -> None:
    with StreamSender("tcp") as sender:
        src = LiveSource(sender.url, image_size=None, **FAST)
        _take(src, 3)
        t0 = time.monotonic()
        src.close()
        assert time.monotonic() - t0 < 0.5
        with pytest.raises(SourceError, match="closed"):
            src.latest(0)
        src.close()  # idempotent

    events = Events()
    with StreamSender("tcp") as sender:
        src = LiveSource(sender.url, image_size=None, on_event=events, **FAST)
        sender.kill()
        events.wait_for("source_lost", timeout=3.0)
        time.sleep(0.3)  # refused attempts, waiting out the backoff
        t0 = time.monotonic()
        src.close()
        assert time.monotonic() - t0 < 0.5


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_a_reader_blocked_in_latest_is_woken_by_close() -> None:
    with StreamSender("tcp", fps=10) as sender, LiveSource(sender.url, image_size=None, **FAST) as src:
        _take(src, 1)
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                while True:
                    src.latest(None)
            except SourceError as exc:
                errors.append(exc)

        reader = threading.Thread(target=wait)
        reader.start()
        time.sleep(0.1)
        src.close()
        reader.join(2)
    assert not reader.is_alive() and errors and "closed" in str(errors[0])


# -- RTSP -----------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(30)
@pytest.mark.skipif(not rtsp_server_available(), reason="needs gir1.2-gst-rtsp-server-1.0 and python3-gi")
def test_rtsp_over_tcp_and_a_restarted_server() -> None:
    events = Events()
    with RtspServer() as server, LiveSource(server.url, image_size=None, on_event=events, **FAST) as src:
        assert (src.info.width, src.info.height, src.info.codec) == (W, H, "h264")
        before = _take(src, 10)
        server.kill()
        events.wait_for("source_lost", timeout=3.0)
        server.start()
        after = _take(src, 5, timeout_s=5.0)
    assert events.kinds == ["source_lost", "source_restored"]
    assert after[0].index > before[-1].index and time.time() - after[-1].capture_time < 1.0


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_a_live_reader_resized_takes_its_next_frames_at_the_new_size() -> None:
    """An ``image_size: auto`` stream moves between sizes: the frame taken after ``resize`` is
    prepared for the new size (frames are converted when taken, not when received)."""
    with StreamSender("tcp", fps=30) as sender:
        reader = LiveReader(sender.url, 512, give_up_s=5.0, fresh=False)
        try:
            first = _wait_frames(reader)
            reader.resize(256)
            after = _wait_frames(reader)
            with pytest.raises(InvalidInputError, match="image_size"):
                reader.resize(0)
        finally:
            reader.close()
    assert first.image_size == 512 and reader.image_size == 256
    assert after.image_size == 256 and after.rgb().shape == (*input_size((H, W), 256), 3)


def _wait_frames(reader: LiveReader) -> Frame:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        frames = reader.wait(0.5)
        if frames:
            return frames[0]
    raise AssertionError("no frame within 5 s")
