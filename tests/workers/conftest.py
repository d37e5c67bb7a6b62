"""Fixtures for end-to-end tests: the real CLI, real Ray, a real Redis server, real PyAV video."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipeline.bench.samples import write_clip
from pipeline.streams import EmbeddedRedis, Keys, MaskReader, connect

EXE = str(Path(sys.executable).with_name("samstream"))
# An empty samstream cache for the whole session: no weights in it (nothing is downloaded), and
# compiled artefacts made by one test are reused by the next, as on a user's machine.
CACHE = Path(tempfile.mkdtemp(prefix="samstream-test-cache-"))


def _env() -> dict[str, str]:
    return {**os.environ, "SAMSTREAM_CACHE_DIR": str(CACHE), "PYTHONUNBUFFERED": "1"}


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``samstream`` as a user would (no weights cache, so nothing is downloaded)."""
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout, env=_env())


def popen(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "SAMSTREAM_CACHE_DIR": "/nonexistent-samstream-cache", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [EXE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


@pytest.fixture(scope="session")
def clip60(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 frames, 320x240, two moving objects."""
    return write_clip(tmp_path_factory.mktemp("media") / "clip60.mp4", frames=60, width=320, height=240)


class Results:
    """A job's results read back through a real Redis server on the run's data folder."""

    def __init__(self, data_dir: Path) -> None:
        self.server = EmbeddedRedis(data_dir / "redis")
        self.client: redis.Redis = connect(self.server.start())
        self.keys = Keys()

    def entries(self, job_id: str) -> list:
        return list(MaskReader(self.client, self.keys, job_id).read())

    def raw_ids(self, job_id: str) -> list[str]:
        return [eid for eid, _ in self.client.xrange(self.keys.masks(job_id))]  # type: ignore[union-attr]

    def job(self, job_id: str) -> dict[str, str]:
        return self.client.hgetall(self.keys.job(job_id))  # type: ignore[return-value]

    def close(self) -> None:
        self.server.stop()


@pytest.fixture()
def results() -> Iterator[type[Results]]:
    opened: list[Results] = []

    class Opened(Results):
        def __init__(self, data_dir: Path) -> None:
            super().__init__(data_dir)
            opened.append(self)

    yield Opened
    for r in opened:
        r.close()


def wait_for_entries(results: type[Results], data: Path, job: str, count: int, proc, timeout: float = 120):  # type: ignore[no-untyped-def]
    """Wait until a running job (``proc``) has published ``count`` entries; its :class:`Results`."""
    import time

    deadline = time.monotonic() + timeout
    while not (data / "redis" / "samstream-redis.json").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no Redis server came up"
        time.sleep(0.2)
    r = results(data)
    while len(r.raw_ids(job)) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.1)
    return r
