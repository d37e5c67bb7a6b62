"""``samstream delete`` as a user runs it: against Redis directly and through the REST API, one
clear line when the job runs or does not exist."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import uvicorn

from pipeline.api import ApiSettings, create_app
from pipeline.ledger import JobStatus, JobStore
from pipeline.ledger.sink import RedisSink
from pipeline.ledger.slots import TrackSlots
from pipeline.streams import EmbeddedRedis, Keys, connect
from pipeline.streams.control import Command, send
from tests.pipeline.api.conftest import TOKEN, RecordingBackend
from tests.pipeline.streams.conftest import free_port, make_result

pytestmark = pytest.mark.integration

EXE = str(Path(sys.executable).with_name("samstream"))


def sam(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SAMSTREAM_API_URL": "", "SAMSTREAM_API_TOKEN": ""}
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("cli-redis")) as s:
        yield s


@pytest.fixture
def client(server: EmbeddedRedis) -> Iterator[redis.Redis]:
    c = connect(server.url)
    yield c
    c.close()


@pytest.fixture
def prefix() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}:"


def _job(client: redis.Redis, keys: Keys, job_id: str, live: bool = False) -> JobStore:
    """A running job with every key, each written by its real writer."""
    store = JobStore(client, keys)
    store.create(job_id, {"source": "a.mp4", "live": live})
    store.set_status(job_id, JobStatus.RUNNING)
    RedisSink(client, keys, job_id).publish(make_result(0, preview=True), {"version": 1, "tracks": []})
    send(client, keys, job_id, Command("remove", 1))
    TrackSlots(client, keys, 64).take(job_id, 2, [])
    assert client.exists(*keys.of_job(job_id)) == len(keys.of_job(job_id))
    return store


def test_delete_removes_an_ended_jobs_keys_and_refuses_a_running_one(
    server: EmbeddedRedis, client: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    store = _job(client, keys, "j1")
    where = ["--redis-url", server.url, "--prefix", prefix]

    r = sam("delete", "j1", *where)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == (
        "samstream: error: job j1 is running: cancel it first (samstream cancel j1), then delete it"
    )
    assert client.exists(*keys.of_job("j1")) == len(keys.of_job("j1"))

    store.set_status("j1", JobStatus.CANCELLED, "stopped on request")
    r = sam("delete", "j1", *where)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "deleted: every key of job j1"
    assert client.exists(*keys.of_job("j1")) == 0 and client.zcard(keys.jobs_index()) == 0

    r = sam("delete", "j1", *where)
    assert r.returncode == 1 and r.stderr.startswith("samstream: error: no job 'j1'")
    assert "Traceback" not in r.stderr


@pytest.fixture
def api_url(client: redis.Redis, prefix: str) -> Iterator[str]:
    """The REST API on a loopback port, over the test's Redis (jobs 'run' on a recording backend)."""
    settings = ApiSettings(token=TOKEN, prefix=prefix)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, client, RecordingBackend()), host="127.0.0.1", port=port, log_level="warning"
    )
    api = uvicorn.Server(config)
    thread = threading.Thread(target=api.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not api.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    api.should_exit = True
    thread.join(10)


def test_delete_through_the_api(api_url: str, client: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    store = _job(client, keys, "s1", live=True)
    where = ["--api", api_url, "--token", TOKEN]

    r = sam("delete", "s1", *where)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "samstream: error: the API said 409: stream s1 is running: cancel it first (DELETE /streams/s1)"
    )
    store.set_status("s1", JobStatus.SUCCEEDED)
    r = sam("delete", "s1", *where)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "deleted: every key of stream s1"
    assert client.exists(*keys.of_job("s1")) == 0

    r = sam("delete", "s1", *where)
    assert r.returncode == 1 and "no job or stream 's1'" in r.stderr


def test_submit_keep_and_status_show_how_long_a_job_stays(
    api_url: str, server: EmbeddedRedis, client: redis.Redis, prefix: str
) -> None:
    where = ["--api", api_url, "--token", TOKEN]
    r = sam(
        "submit", "https://videos.example/a.mp4", "--point", "1,1", "--job-id", "k1", "--keep", "1h", *where
    )
    assert r.returncode == 0, r.stderr
    store = JobStore(client, Keys(prefix))
    assert store.get("k1").keep_s == 3600
    r = sam("submit", "https://videos.example/a.mp4", "--point", "1,1", "--keep", "8d", *where)
    assert r.returncode == 1 and "keep_s must be at most 604800 (7d" in r.stderr
    r = sam("submit", "https://videos.example/a.mp4", "--point", "1,1", "--keep", "never", *where)
    assert r.returncode == 1 and "--keep never: a service keeps" in r.stderr

    store.set_status("k1", JobStatus.FAILED, "x")
    r = sam("status", "k1", "--redis-url", server.url, "--prefix", prefix)
    assert r.returncode == 0, r.stderr
    expires = time.strftime("%Y-%m-%d %H:%M", time.localtime(store.get("k1").expires))  # type: ignore[arg-type]
    assert f"expires   {expires}" in r.stdout


def test_submit_and_track_send_mask_prompts_as_compressed_rle(
    api_url: str, server: EmbeddedRedis, client: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    import numpy as np
    from PIL import Image
    from pycocotools import mask as coco

    from pipeline.streams.control import ControlReader

    mask = np.zeros((240, 320), np.uint8)
    mask[40:90, 100:180] = 255
    Image.fromarray(mask).save(tmp_path / "car.png")
    encoded = coco.encode(np.asfortranarray(mask > 0).astype(np.uint8))
    rle = {"size": [240, 320], "counts": encoded["counts"].decode()}
    where = ["--api", api_url, "--token", TOKEN]
    url = "https://videos.example/a.mp4"

    r = sam(
        "submit",
        url,
        "--mask-prompt",
        f"1={tmp_path / 'car.png'}",
        "--point",
        "5,5",
        "--job-id",
        "m1",
        *where,
    )
    assert r.returncode == 0, r.stderr
    tracks = JobStore(client, Keys(prefix)).get("m1").spec["tracks"]
    assert [(t["id"], t.get("mask")) for t in tracks] == [(2, None), (1, rle)]  # points take the free ids

    control = ControlReader(client, Keys(prefix), "m1", everything=True)
    r = sam("track", "add", "m1", "3", "--mask", str(tmp_path / "car.png"), *where)  # through the API
    assert r.returncode == 0, r.stderr
    r = sam("track", "reprompt", "m1", "2", "--mask", str(tmp_path / "car.png"), "--redis-url", server.url,
            "--prefix", prefix)  # fmt: skip
    assert r.returncode == 0, r.stderr
    commands = [c for c in control.poll() if not isinstance(c, Exception)]
    assert [(c.cmd, c.track) for c in commands] == [("add", 3), ("reprompt", 2)]
    assert all(c.prompt is not None and c.prompt.mask and c.prompt.mask.to_rle() == rle for c in commands)

    Image.fromarray(np.arange(240 * 320, dtype=np.uint32).reshape(240, 320) % 251).convert("L").save(
        tmp_path / "grey.png"
    )
    r = sam("submit", url, "--mask-prompt", f"1={tmp_path / 'grey.png'}", *where)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"samstream: error: mask {tmp_path / 'grey.png'} is not a mask: its grey has 251 values "
        "(0, 1, 2, 3, 4, …); expected 0 (background) and one other value (the object)"
    ]


def test_submit_may_ask_a_stream_for_an_adaptive_size(api_url: str, client: redis.Redis, prefix: str) -> None:
    where = ["--api", api_url, "--token", TOKEN]
    cam = "rtsp://cam.example/live"
    r = sam(
        "submit", cam, "--point", "1,1", "--job-id", "a1", "--image-size", "auto", "--target-fps", "3", *where
    )
    assert r.returncode == 0, r.stderr
    spec = JobStore(client, Keys(prefix)).get("a1").spec
    assert spec["auto_size"]["target_fps"] == 3.0 and spec["image_size"] in spec["auto_size"]["sizes"]
    for args, words in [
        (("https://videos.example/a.mp4", "--image-size", "auto"), "--image-size auto is for live streams"),
        ((cam, "--target-fps", "3"), "--target-fps goes with --image-size auto"),
        ((cam, "--image-size", "big"), "--image-size must be a size like 512, or auto"),
    ]:
        r = sam("submit", *args, "--point", "1,1", *where)
        assert r.returncode == 1 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
