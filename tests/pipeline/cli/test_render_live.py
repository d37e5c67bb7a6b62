"""``samstream render`` of a live job: from its previews, at preview resolution, saying so."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import redis

from pipeline.ledger import JobStatus, JobStore
from pipeline.ledger.sink import RedisSink
from pipeline.masks.render import track_colour
from pipeline.streams import EmbeddedRedis, Keys, connect
from tests.pipeline.cli.test_jobs import sam
from tests.pipeline.streams.conftest import make_result

pytestmark = pytest.mark.integration

STREAM = {"source": "udp://127.0.0.1:5000", "live": True, "tracks": [{"id": 1, "points": [[5, 5]]}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("render-redis")) as s:
        yield s


@pytest.fixture
def client(server: EmbeddedRedis) -> Iterator[redis.Redis]:
    c = connect(server.url)
    yield c
    c.close()


def _live_job(client: redis.Redis, keys: Keys, job_id: str, frames: int, previews: bool = True) -> None:
    store = JobStore(client, keys)
    store.create(job_id, STREAM)
    store.set_status(job_id, JobStatus.RUNNING)
    sink = RedisSink(client, keys, job_id)
    sink.publish_many([(make_result(i, 96, 128, preview=previews), None) for i in range(frames)])


def test_a_running_live_job_renders_from_its_previews(
    server: EmbeddedRedis,
    client: redis.Redis,
    tmp_path: Path,
) -> None:
    prefix = f"render-{uuid.uuid4().hex[:8]}:"
    _live_job(client, Keys(prefix), "cam", 12)
    out = tmp_path / "cam.mp4"
    r = sam("render", "cam", "--out", str(out), "--redis-url", server.url, "--prefix", prefix)
    assert r.returncode == 0, r.stderr
    assert "12 frames of live job cam, from its previews at preview resolution 128x96" in r.stdout
    with av.open(str(out)) as video:
        frames = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
    assert len(frames) == 12 and frames[0].shape == (96, 128, 3)
    # The tracks' colours where their masks are on frame 3 (7x5 boxes at x 6.. and 9.., y 1.. and
    # 2..: see make_result) over a flat grey picture, and nowhere else (4:2:0 blurs the colour of
    # such small boxes at their edges).
    masks = np.zeros((96, 128), bool)
    masks[1:6, 6:13] = masks[2:7, 9:16] = True
    picture = frames[3].astype(int)
    coloured = picture.max(axis=2) - picture.min(axis=2) > 60
    assert coloured[masks].mean() > 0.6 and coloured[~masks].mean() < 0.01
    assert np.abs(picture[3, 6] - np.asarray(track_colour(1))).max() < 60  # track 1's outline


def test_a_live_job_without_previews_is_a_clear_error(
    server: EmbeddedRedis,
    client: redis.Redis,
    tmp_path: Path,
) -> None:
    prefix = f"render-{uuid.uuid4().hex[:8]}:"
    _live_job(client, Keys(prefix), "bare", 3, previews=False)
    r = sam("render", "bare", "--out", str(tmp_path / "x.mp4"), "--redis-url", server.url, "--prefix", prefix)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("samstream: error: job bare reads a live feed, whose frames are not kept")
