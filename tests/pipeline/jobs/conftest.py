"""The driver's job loop in one process: plain stage objects, a real Redis server, synthetic sources.

Sources are fakes behind the source host's opener: a *file* holds N frames, all ready at once (or
one every ``delay_s``); a *feed* makes a frame every 1/fps seconds and keeps only the newest. The
encoder puts the frame index in the embedding and the tracker hosts decode with the stub
segmenter, whose masks are the synthetic scene's truth.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import redis

from pipeline.errors import SourceError
from pipeline.frames import EncodedFrame, Frame
from pipeline.jobs.driver import DriverOptions, JobDriver, Listener
from pipeline.jobs.transport import InProcessTransport
from pipeline.ledger import JobStore
from pipeline.ledger.lifecycle import Lifecycle
from pipeline.metrics import Metrics
from pipeline.prompts import Prompt, TrackSpec
from pipeline.sources.host import SourceHost, SourceSpec
from pipeline.sources.reader import Notify
from pipeline.sources.video import SourceInfo
from pipeline.spec import JobSpec
from pipeline.streams import EmbeddedRedis, Keys, MaskReader, Publisher, connect
from pipeline.streams.control import Command, ControlBus, send
from pipeline.tracking.host import TrackerHost
from pipeline.tracking.stage import FrameSummary
from tests.fixtures.stub_segmenter import StubSegmenter, disc

SIZE = (240, 320)


def moving(t: int) -> tuple[float, float]:
    return 60 + (2 * t) % 150, 100 + (t % 40)


def sliding(t: int) -> tuple[float, float]:
    return 290 - (t % 60), 200


def stub() -> StubSegmenter:
    return StubSegmenter(
        [
            disc(SIZE, moving, 18),
            disc(SIZE, lambda t: (230, 50), 25),
            disc(SIZE, lambda t: (60, 205), 15),
            disc(SIZE, sliding, 14),
            disc(SIZE, lambda t: (160, 30), 12),
        ],
        SIZE,
    )


def tracks(count: int = 2) -> tuple[TrackSpec, ...]:
    """Tracks on the scene's objects, one each (a track per object: two tracks never share one):
    1 on the moving disc, 2 on the still one, 3 to 5 on three more, then round again."""
    prompts = (
        Prompt(points=(moving(0),), labels=(1,)),
        Prompt(box=(200, 20, 260, 80)),
        Prompt(points=((60, 205),), labels=(1,)),
        Prompt(points=(sliding(0),), labels=(1,)),
        Prompt(points=((160, 30),), labels=(1,)),
    )
    return tuple(TrackSpec(i + 1, prompts[i % len(prompts)]) for i in range(count))


def _frame(index: int, image_size: int = 4) -> Frame:
    """A frame whose picture is ``image_size`` a side (its encoder size, as a real source's)."""
    image = np.zeros((image_size, image_size, 3), np.uint8)
    return Frame(index, index / 30, time.time(), image, SIZE, {"decode": 0.001})


def _info(uri: str, count: int | None) -> SourceInfo:
    return SourceInfo(uri, SIZE[1], SIZE[0], 30.0, count, "fake", 0)


class FakeFile:
    """``file:N`` (N frames); ``delay_s`` between frames becoming ready; ``fail_at`` raises there."""

    def __init__(
        self, spec: SourceSpec, notify: Notify, frames: int, delay_s: float = 0.0, fail_at: int = -1
    ):
        self.uri, self.stride, self.count = spec.uri, spec.stride, frames
        self.notify, self.delay_s, self.fail_at = notify, delay_s, fail_at
        self.opened = time.monotonic()
        self.takes: list[tuple[int | None, int]] = []

    @property
    def info(self) -> SourceInfo:
        return _info(self.uri, self.count)

    def take(self, after: int | None, count: int) -> tuple[list[Frame], bool]:
        self.takes.append((after, count))
        start = 0 if after is None else after + self.stride
        ready = self.count if not self.delay_s else int((time.monotonic() - self.opened) / self.delay_s)
        out = []
        i = start
        while len(out) < count and i < min(self.count, ready + 1):
            if i == self.fail_at:
                if out:  # the frames before the failure first, as FileReader does
                    break
                raise SourceError(f"video {self.uri}: cannot decode frame {i}")
            out.append(_frame(i))
            i += self.stride
        if self.delay_s and i < self.count:
            threading.Timer(self.delay_s, self.notify).start()
        return out, i >= self.count

    def events(self) -> list[tuple[str, str, float]]:
        return []

    def dropped(self) -> int:
        return 0

    def close(self) -> None:
        pass


class FakeFeed:
    """A live feed making ``fps`` frames a second; a take gives the newest one not taken."""

    def __init__(self, spec: SourceSpec, notify: Notify, after: int | None, fps: float):
        self.uri, self.fps, self.notify = spec.uri, fps, notify
        self.offset = 0 if after is None else after + 1
        self.opened = time.monotonic()
        self.taken = -1
        self.skipped = 0
        self.image_size = spec.image_size
        self._closed = threading.Event()
        threading.Thread(target=self._tick, daemon=True).start()

    def _tick(self) -> None:
        while not self._closed.wait(1 / self.fps):
            self.notify()

    @property
    def info(self) -> SourceInfo:
        return _info(self.uri, None)

    def take(self, after: int | None, count: int) -> tuple[list[Frame], bool]:
        newest = int((time.monotonic() - self.opened) * self.fps)
        if newest <= self.taken:
            return [], False
        self.skipped += newest - self.taken - 1
        self.taken = newest
        return [_frame(newest + self.offset, self.image_size)], False

    def resize(self, image_size: int) -> None:
        """As a live reader's: the next frames are prepared for ``image_size``."""
        self.image_size = image_size

    def events(self) -> list[tuple[str, str, float]]:
        return []

    def dropped(self) -> int:
        out, self.skipped = self.skipped, 0
        return out

    def close(self) -> None:
        self._closed.set()


class Opener:
    """The source host's opener: ``file:N[:delay]`` and ``feed:FPS`` URIs; remembers what it made."""

    def __init__(self) -> None:
        self.made: dict[str, list[object]] = {}
        self.fail_at: dict[str, int] = {}

    def __call__(self, spec: SourceSpec, after: int | None, notify: Notify) -> object:
        kind, _, rest = spec.uri.partition(":")
        if kind == "missing":
            raise SourceError(f"cannot open video {spec.uri}: no such file")
        reader: object
        if kind == "feed":
            reader = FakeFeed(spec, notify, after, float(rest.split("#")[0]))
        else:
            n, _, delay = rest.split("#")[0].partition(":")
            reader = FakeFile(spec, notify, int(n), float(delay or 0), self.fail_at.get(spec.uri, -1))
        self.made.setdefault(spec.uri, []).append(reader)
        return reader


class StubEncoder:
    """The encoder stage over the stub: the embedding carries the frame index.

    ``per_pixel``: a frame of image size S costs ``delay_s * (S / 256) ** 2`` (as the real
    encoder's work grows with the pixels), not ``delay_s``."""

    def __init__(self, delay_s: float = 0.0, per_pixel: bool = False) -> None:
        self.stub = stub()
        self.delay_s = delay_s
        self.per_pixel = per_pixel
        self.batches: list[list[str]] = []
        self.fail_jobs: set[str] = set()  # their frames come back with an error, as the pool's do

    def encode(self, frames: Sequence[Frame]) -> list[EncodedFrame]:
        """``delay_s`` a frame, timed as the real encoder times its batches (the driver paces by it)."""
        self.batches.append([f.job_id for f in frames])
        start = time.perf_counter()
        if self.delay_s:
            scale = [(f.image_size / 256) ** 2 if self.per_pixel else 1.0 for f in frames]
            time.sleep(self.delay_s * sum(scale))
        timings = {"encode": time.perf_counter() - start, "encode_batch": float(len(frames))}
        return [
            EncodedFrame(
                f.index,
                f.pts,
                f.capture_time,
                f.original_size,
                self.stub.embedding(f.index),
                timings,
                f.job_id,
                image_size=f.image_size,
            )
            if f.job_id not in self.fail_jobs
            else EncodedFrame(
                f.index, f.pts, f.capture_time, f.original_size, None, timings, f.job_id, "encoder: boom"
            )
            for f in frames
        ]


class SlowTrackerHost:
    """A tracker host that takes ``delay_s`` more a frame (a host with more tracks than it can
    follow at the feeds' rate); otherwise the host it wraps."""

    def __init__(self, host: TrackerHost, delay_s: float) -> None:
        self.host = host
        self.delay_s = delay_s

    def process(self, setups: Any, frames: Sequence[EncodedFrame], answers: Any = None) -> Any:
        time.sleep(self.delay_s * len(frames))
        return self.host.process(setups, frames, answers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.host, name)


@dataclass
class Recorder(Listener):
    """What the driver told: frames per job, endings, the most frames in flight seen per job."""

    seen: dict[str, list[FrameSummary]] = field(default_factory=dict)
    endings: dict[str, tuple[str, str | None]] = field(default_factory=dict)

    def frames(self, job_id: str, summaries: Sequence[FrameSummary]) -> None:
        self.seen.setdefault(job_id, []).extend(summaries)

    def ended(self, job_id: str, status: str, error: str | None) -> None:
        self.endings[job_id] = (status, error)


class Rig:
    """A driver over an in-process transport, on a real Redis under a prefix of its own."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        options: DriverOptions | None = None,
        encoder_delay_s: float = 0.0,
        per_pixel: bool = False,
        tracker_delay_s: float = 0.0,
        hosts: int = 1,
        decoders: int = 1,
        opener: Opener | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.client, self.keys = client, keys
        self.store = JobStore(client, keys)
        self.opener = opener or Opener()
        self.encoder = StubEncoder(encoder_delay_s, per_pixel)
        self.transport = InProcessTransport(
            lambda: SourceHost(self.opener, idle_wait_s=0.05),
            self.encoder,
            lambda: SlowTrackerHost(
                TrackerHost(lambda size, n: stub(), client, keys, checkpoint_every=10), tracker_delay_s
            ),
            hosts=hosts,
            decoders=decoders,
        )
        self.recorder = Recorder()
        self.driver = JobDriver(
            self.transport,
            Lifecycle(self.store),
            ControlBus(client, keys),
            self.event,
            options or DriverOptions(tick_s=0.01, control_poll_s=0.01),
            metrics=metrics,
            listener=self.recorder,
        )

    def event(self, job_id: str, kind: str, detail: str | None) -> None:
        Publisher(self.client, self.keys, job_id).event(kind, detail=detail)

    def create(self, job_id: str, source: str, live: bool = False, n_tracks: int = 2, **extra: object) -> str:
        extra.setdefault("image_size", 256)
        spec = JobSpec(source=source, tracks=tracks(n_tracks), live=live, **extra)  # type: ignore[arg-type]
        self.store.create(job_id, spec.to_dict())
        self.driver.submit(job_id)
        return job_id

    def command(self, job_id: str, command: Command) -> None:
        send(self.client, self.keys, job_id, command)

    def frames(self, job_id: str) -> list[int]:
        return [e.frame_index for _, e in MaskReader(self.client, self.keys, job_id).read()]

    def masks(self, job_id: str) -> dict[int, list[tuple[int, str, str]]]:
        return {
            e.frame_index: [(t.track_id, t.state, t.rle["counts"]) for t in e.tracks]
            for _, e in MaskReader(self.client, self.keys, job_id).read()
        }

    def run(self, timeout: float = 30.0, until: object = None) -> None:
        """Turn the loop until no job is left (or ``until()`` is true), within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.driver.jobs or not self.driver._inbox.empty():
            assert time.monotonic() < deadline, f"jobs still running: {list(self.driver.jobs)}"
            if callable(until) and until():
                return
            self.driver.turn(0.005)

    def close(self) -> None:
        self.transport.shutdown()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def rig(redis_server: EmbeddedRedis) -> Iterator[type[Rig]]:
    made: list[Rig] = []
    client = connect(redis_server.url)
    keys = Keys(prefix=f"test-{uuid.uuid4().hex[:12]}:")

    class Made(Rig):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(client, keys, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    yield Made
    for r in made:
        r.close()
    client.close()
