"""Jobs that meet trouble: killed workers, a killed driver, bad inputs. Real Ray, Redis, PyAV."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import redis
from pycocotools import mask as coco

from pipeline.bench.samples import write_clip
from pipeline.streams import Keys, MaskReader, connect, read_events
from tests.fixtures.media import truncate_file, write_audio_only, write_png_frames, write_text_as_mp4
from tests.fixtures.redis_snapshot import SnapshotRedis, save
from tests.workers.conftest import cli, popen, wait_for_entries
from tests.workers.test_video_job import _prompts_file, _reference_masks

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run_args(clip: Path, prompts: Path, checkpoint: Path, data: Path, job: str) -> list[str]:
    return [
        "run", str(clip), "--prompts", str(prompts), "--checkpoint", str(checkpoint), "--image-size", "256",
        "--job-id", job, "--data-dir", str(data), "--min-score", "0", "--no-progress", "--compile", "eager",
        "--precision", "fp32",  # compared with an fp32 reference
    ]  # fmt: skip


def _check_complete(r, job: str, clip: Path, checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    assert r.raw_ids(job) == [f"{i}-1" for i in range(60)]  # no duplicate, no gap, in order
    reference = _reference_masks(clip, checkpoint)
    for _, result in r.entries(job):
        for t in result.tracks:
            got = coco.decode({"size": t.rle["size"], "counts": t.rle["counts"].encode()}).astype(bool)
            want = reference[result.frame_index][t.track_id]
            union = np.logical_or(got, want).sum()
            assert union == 0 or np.logical_and(got, want).sum() / union >= 0.999


def _encoder_processes() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "ray::EncoderWorker" in cmd:
            found.append(p)
    return found


def test_encoder_killed_mid_job(clip60: Path, checkpoint: Path, tmp_path: Path, results) -> None:
    prompts, data = _prompts_file(tmp_path / "t.yaml"), tmp_path / "out"
    proc = popen(*_run_args(clip60, prompts, checkpoint, data, "enc-kill"))
    r = wait_for_entries(results, data, "enc-kill", 10, proc)
    victims = _encoder_processes()
    assert victims, "no encoder worker process found"
    for v in victims:
        v.kill()
    out, err = proc.communicate(timeout=240)
    if proc.returncode != 0:  # the job may fail with the worker; running it again must finish it
        again = cli(*_run_args(clip60, prompts, checkpoint, data, "enc-kill"))
        assert again.returncode == 0, again.stderr
    else:
        assert "succeeded: 60 frames" in out, err
    _check_complete(r, "enc-kill", clip60, checkpoint)
    assert r.job("enc-kill")["status"] == "succeeded"


def _ray_processes() -> set[int]:
    names = ("ray::", "raylet", "gcs_server", "dashboard", "runtime_env")
    return {
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(n in " ".join(p.info["cmdline"] or []) for n in names)
    }


def test_driver_killed_mid_job_resumes_exactly(
    clip60: Path, checkpoint: Path, tmp_path: Path, results
) -> None:
    prompts, data = _prompts_file(tmp_path / "t.yaml"), tmp_path / "out"
    existing = _ray_processes()
    proc = popen(*_run_args(clip60, prompts, checkpoint, data, "drv-kill"))
    r = wait_for_entries(results, data, "drv-kill", 25, proc)  # past frame 20: both tracks running
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # Ray's node processes go with the driver; a few agents outlive it for a while: end them so
    # later tests start clean.
    for pid in _ray_processes() - existing:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    before = len(r.raw_ids("drv-kill"))
    assert 25 <= before < 60
    again = cli(*_run_args(clip60, prompts, checkpoint, data, "drv-kill"))
    assert again.returncode == 0, again.stderr
    assert f"resuming after frame {before - 1}" in again.stderr
    _check_complete(r, "drv-kill", clip60, checkpoint)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _bad(kind: str, tmp: Path) -> str:
    if kind == "missing":
        return str(tmp / "nope.mp4")
    if kind == "text":
        return str(write_text_as_mp4(tmp / "notes.mp4"))
    if kind == "truncated":
        clip = write_clip(tmp / "cut.mp4", frames=30, faststart=False)
        truncate_file(clip, 0.5)
        return str(clip)
    if kind == "audio-only":
        return str(write_audio_only(tmp / "sound.mp4"))
    if kind == "empty":
        (tmp / "empty.mp4").write_bytes(b"")
        return str(tmp / "empty.mp4")
    if kind == "media-bomb":  # one 16384x8192 frame: past the default pixel limit
        return str(write_png_frames(tmp / "bomb.mov", [(16384, 8192)]))
    return f"http://127.0.0.1:{_closed_port()}/clip.mp4"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "kind", ["missing", "text", "truncated", "audio-only", "empty", "unreachable-url", "media-bomb"]
)
def test_bad_inputs_fail_the_job_with_one_line(kind: str, tmp_path: Path, results) -> None:
    source = _bad(kind, tmp_path)
    data = tmp_path / "out"
    start = time.monotonic()
    res = cli("run", source, "--point", "10,10", "--weights", "random", "--image-size", "256",
              "--job-id", "bad", "--data-dir", str(data), "--no-progress", "--compile", "eager", timeout=60)  # fmt: skip
    assert time.monotonic() - start < 60
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("samstream: error:")]
    assert len(errors) == 1, res.stderr
    job = results(data).job("bad")
    assert job["status"] == "failed"
    assert job["error"] and "\n" not in job["error"]
    assert job["error"] in errors[0]


def test_redis_restarted_from_an_older_snapshot_mid_job_loses_nothing(
    clip60: Path, checkpoint: Path, tmp_path: Path
) -> None:
    server = SnapshotRedis(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    server.start()
    try:
        prompts, data = _prompts_file(tmp_path / "t.yaml"), tmp_path / "out"
        args = [*_run_args(clip60, prompts, checkpoint, data, "lossy"), "--redis-url", server.url]
        proc = popen(*args)
        r = _Seen(connect(server.url))
        r.wait(10, proc)
        newest = save(r.client, r.keys.masks("lossy"))
        assert newest is not None
        saved = newest + 1  # frames 0..newest
        r.wait(saved + 12, proc)
        server.kill()  # the frames published since the SAVE are gone
        server.start()
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        assert "succeeded: 60 frames" in out, err
        _check_complete(r, "lossy", clip60, checkpoint)  # no gap, no duplicate, the same masks
        lost = [e for e in read_events(r.client, r.keys, "lossy") if e.type == "redis_lost"]
        assert len(lost) == 1 and lost[0].data["first"] == saved, lost
    finally:
        server.kill()


class _Seen:
    """A job's entries read back from a Redis server given by URL."""

    def __init__(self, client: redis.Redis) -> None:
        self.client, self.keys = client, Keys()

    def raw_ids(self, job_id: str) -> list[str]:
        return [eid for eid, _ in self.client.xrange(self.keys.masks(job_id))]  # type: ignore[union-attr]

    def entries(self, job_id: str) -> list:  # type: ignore[type-arg]
        return list(MaskReader(self.client, self.keys, job_id).read())

    def wait(self, count: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.raw_ids("lossy")) < count:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
