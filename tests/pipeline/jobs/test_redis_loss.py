"""Redis losing acknowledged entries mid-job: a real server restarted from an older snapshot.

Exactly-once rests on Redis refusing lower entry IDs, which cannot see writes Redis *lost*. Each
publish therefore checks the stream's newest entry; these tests restart a real ``redis-server``
from a snapshot taken earlier in the job and check that the job republishes what was lost: no
gap, no duplicate, and the masks of a job that was never interrupted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipeline.streams import Keys, connect, read_events
from pipeline.streams.control import Command
from tests.fixtures.redis_snapshot import SnapshotRedis, save
from tests.pipeline.jobs.conftest import Rig
from tests.pipeline.jobs.test_driver import reference

pytestmark = pytest.mark.integration


@pytest.fixture
def snapshot_redis(tmp_path: Path) -> Iterator[SnapshotRedis]:
    server = SnapshotRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def snapshot_rig(snapshot_redis: SnapshotRedis) -> Iterator[Rig]:
    """A driver rig publishing to the snapshot server, under a prefix of its own."""
    client = connect(snapshot_redis.url)
    r = Rig(client, Keys(prefix=f"test-{uuid.uuid4().hex[:8]}:"))
    yield r
    r.close()
    client.close()


def _newest(client: redis.Redis, keys: Keys, job_id: str) -> int:
    top = client.xrevrange(keys.masks(job_id), count=1)
    return int(top[0][0].split("-")[0])


@pytest.mark.parametrize("stride", [1, 2])
def test_a_redis_restarted_from_an_older_snapshot_gets_the_lost_frames_again(
    snapshot_redis: SnapshotRedis, snapshot_rig: Rig, stride: int
) -> None:
    r, client, keys = snapshot_rig, snapshot_rig.client, snapshot_rig.keys
    r.create("job", "file:150:0.01", stride=stride)
    total = len(range(0, 150, stride))
    r.run(until=lambda: len(r.frames("job")) >= total // 5)
    saved = save(client, keys.masks("job"))
    assert saved is not None
    # Two fifths published: the rest (more than the driver's file_window of 24 frames in flight)
    # is still to be read once Redis is back. With less left, all of it could land during the sleep
    # below and the job end before the loss is ever seen (as it did at stride 2 on a slow machine).
    r.run(until=lambda: len(r.frames("job")) >= 2 * total // 5)
    time.sleep(0.5)  # what is in flight lands (the stages run on threads of their own)
    published = _newest(client, keys, "job")
    assert saved < published < 150 - stride

    snapshot_redis.kill()
    snapshot_redis.start()
    assert _newest(client, keys, "job") == saved  # the frames after the snapshot are gone

    r.run(timeout=60)
    assert r.store.get("job").status.value == "succeeded"
    assert r.frames("job") == list(range(0, 150, stride))  # no gap, no duplicate
    assert r.masks("job") == reference(150, stride)  # as if nothing had happened
    lost = [e for e in read_events(client, keys, "job") if e.type == "redis_lost"]
    assert len(lost) == 1, lost
    assert lost[0].data["first"] == saved + 1
    assert lost[0].data["last"] >= published
    assert "published again" in (lost[0].detail or "")


def test_a_live_job_goes_on_after_redis_lost_its_frames_and_says_so(
    snapshot_redis: SnapshotRedis, snapshot_rig: Rig
) -> None:
    r, client, keys = snapshot_rig, snapshot_rig.client, snapshot_rig.keys
    r.create("cam", "feed:30", live=True)
    r.run(until=lambda: len(r.frames("cam")) >= 10)
    saved = save(client, keys.masks("cam"))
    assert saved is not None
    r.run(until=lambda: len(r.frames("cam")) >= 25)
    time.sleep(0.3)
    published = _newest(client, keys, "cam")

    snapshot_redis.kill()
    snapshot_redis.start()
    r.run(until=lambda: _newest(client, keys, "cam") > published + 10, timeout=30)
    frames = r.frames("cam")
    assert frames == sorted(set(frames))  # in order, each once
    assert r.store.get("cam").status.value == "running"
    lost = [e for e in read_events(client, keys, "cam") if e.type == "redis_lost"]
    assert len(lost) == 1 and lost[0].data["first"] == saved + 1
    assert "live feed cannot be read again" in (lost[0].detail or "")
    r.command("cam", Command("stop"))
    r.run(timeout=30)
