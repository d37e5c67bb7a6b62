"""Jobs always end: a source that stops giving pictures fails its job, a cancel is obeyed within
seconds whatever the source or its host does, a host that does not answer is given up."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from pipeline.frames import Frame
from pipeline.jobs.driver import DriverOptions
from pipeline.sources.host import SourceSpec, open_reader
from pipeline.sources.reader import Notify
from pipeline.sources.video import SourceInfo
from pipeline.streams.control import Command
from tests.fixtures.stalling_http import serve_stalling, write_video_then_audio
from tests.pipeline.jobs.conftest import SIZE, Opener


class Hanging:
    """A reader whose every take blocks until it is closed: a source host that does not answer."""

    def __init__(self, spec: SourceSpec) -> None:
        self.uri = spec.uri
        self.closed = threading.Event()

    @property
    def info(self) -> SourceInfo:
        return SourceInfo(self.uri, SIZE[1], SIZE[0], 30.0, 100, "fake", 0)

    def take(self, after: int | None, count: int) -> tuple[list[Frame], bool]:
        self.closed.wait(120)
        return [], False

    def events(self) -> list[tuple[str, str, float]]:
        return []

    def dropped(self) -> int:
        return 0

    def close(self) -> None:
        self.closed.set()


class RealOpener(Opener):
    """The fakes of the other tests, real sources for http URLs, and sources that hang."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()  # ends every hang at the end of a test

    def __call__(self, spec: SourceSpec, after: int | None, notify: Notify) -> object:
        if spec.uri.startswith("http"):
            return open_reader(spec, after, notify)
        if spec.uri.startswith("hang:"):
            return Hanging(spec)
        if spec.uri.startswith("slow-open:"):
            self.release.wait(120)
        return super().__call__(spec, after, notify)


@pytest.fixture(scope="module")
def video_then_audio(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int]:
    path, end = write_video_then_audio(tmp_path_factory.mktemp("stall") / "v.ts")
    return path.read_bytes(), end


@pytest.fixture
def opener() -> Iterator[RealOpener]:
    made = RealOpener()
    yield made
    made.release.set()


def _options(**kw: float) -> DriverOptions:
    return DriverOptions(tick_s=0.01, control_poll_s=0.01, **kw)  # type: ignore[arg-type]


def _ended_within(r, job_id: str, timeout: float) -> float:  # type: ignore[no-untyped-def]
    """Turn the driver until the job has ended; the seconds it took."""
    start = time.monotonic()
    r.run(timeout=timeout, until=lambda: job_id in r.recorder.endings)
    assert job_id in r.recorder.endings, f"job {job_id} still running after {timeout} s"
    return time.monotonic() - start


@pytest.mark.slow
@pytest.mark.parametrize("then", ["trickle", "stall"])
def test_a_url_that_stops_giving_pictures_fails_its_job_within_the_stall_limit(
    rig, opener: RealOpener, video_then_audio: tuple[bytes, int], then: str
) -> None:
    data, video_end = video_then_audio
    r = rig(options=_options(stall_s=2.0), opener=opener)
    with serve_stalling(data, video_end + 4000, then) as url:
        r.create("job", url)
        took = _ended_within(r, "job", 30.0)
    info = r.store.get("job")
    assert info.status.value == "failed" and "no picture for 2 s" in (info.error or "")
    assert r.recorder.endings["job"][0] == "failed"
    frames = r.frames("job")
    assert len(frames) >= 30 and frames == list(range(len(frames)))  # what was sent, published
    assert took < 2.0 + 6.0


@pytest.mark.slow
def test_cancel_is_obeyed_within_seconds_while_the_source_stalls(
    rig, opener: RealOpener, video_then_audio: tuple[bytes, int]
) -> None:
    data, video_end = video_then_audio
    r = rig(options=_options(stall_s=120.0), opener=opener)
    with serve_stalling(data, video_end + 4000, "stall") as url:
        r.create("job", url)
        r.run(timeout=20, until=lambda: len(r.frames("job")) >= 30)
        time.sleep(1.0)  # the pictures sent are all in: the source stalls now
        r.command("job", Command("stop"))
        took = _ended_within(r, "job", 20.0)
    assert took < 3.0
    info = r.store.get("job")
    assert info.status.value == "cancelled" and info.error == "stopped on request"


@pytest.mark.parametrize("source", ["hang:1", "slow-open:1"])
def test_cancel_is_obeyed_within_seconds_while_the_host_hangs_or_the_source_opens(
    rig, opener: RealOpener, source: str
) -> None:
    r = rig(options=_options(stop_s=1.0), opener=opener)
    r.create("job", source)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # the host is stuck in its read (or the source opening)
        r.driver.turn(0.01)
    assert "job" in r.driver.jobs
    r.command("job", Command("stop"))
    took = _ended_within(r, "job", 10.0)
    assert took < 1.0 + 1.5
    assert r.store.get("job").status.value == "cancelled"


def test_a_host_that_does_not_answer_is_given_up_and_later_jobs_run_elsewhere(
    rig, opener: RealOpener
) -> None:
    r = rig(options=_options(read_timeout_s=1.0), opener=opener)
    r.create("stuck", "hang:1")
    took = _ended_within(r, "stuck", 10.0)
    assert took < 1.0 + 1.5
    info = r.store.get("stuck")
    assert info.status.value == "failed" and "did not answer for 1 s" in (info.error or "")
    assert r.transport.hosts == []  # host 0 was stopped
    r.create("next", "file:20")
    r.run(timeout=10.0)
    assert r.transport.hosts == [1]  # another took its place
    assert r.frames("next") == list(range(20))
    assert r.store.get("next").status.value == "succeeded"
