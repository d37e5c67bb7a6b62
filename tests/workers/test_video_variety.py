"""Jobs over many kinds of video: codecs, containers, sizes, rotations, frame rates, an http URL.

Each clip goes through the real job graph (Ray local cluster, embedded Redis server, PyAV) in one
Ray session, with the null model: what is checked here is the video handling, not the masks.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from pipeline.apps.run import LocalRun, run_local
from pipeline.bench.samples import write_clip
from pipeline.config import ModelConfig
from pipeline.prompts import Prompt, TrackSpec
from pipeline.spec import JobSpec
from pipeline.streams import EmbeddedRedis, Keys, MaskReader, connect
from tests.fixtures.http import serve_directory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VARIANTS = [
    # name, file, codec, frames, width, height, fps, rotation, expected (width, height) of masks
    ("h264-mp4", "a.mp4", "h264", 12, 320, 240, 30, 0, (320, 240)),
    ("hevc-mkv", "b.mkv", "hevc", 10, 352, 288, 25, 0, (352, 288)),
    ("vp9-webm", "c.webm", "vp9", 10, 320, 180, 24, 0, (320, 180)),
    ("mpeg4-avi", "d.avi", "mpeg4", 10, 176, 144, 15, 0, (176, 144)),
    ("rotated-90", "e.mp4", "h264", 8, 320, 240, 30, 90, (240, 320)),
    ("rotated-180", "f.mov", "h264", 8, 320, 240, 30, 180, (320, 240)),
    ("one-frame", "g.mp4", "h264", 1, 320, 240, 30, 0, (320, 240)),
    ("big-60fps", "h.mp4", "h264", 6, 1920, 1080, 60, 0, (1920, 1080)),
]


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _spec(source: str, width: int, height: int) -> JobSpec:
    prompt = Prompt(box=(width * 0.1, height * 0.1, width * 0.5, height * 0.6))
    return JobSpec(source, (TrackSpec(1, prompt),), image_size=256, weights="null")


def _run(source: str, width: int, height: int, data: Path, job: str) -> list:
    model = ModelConfig(weights="null", image_size=256, compile="eager")
    with redirect_stderr(io.StringIO()):
        code = run_local(
            _spec(source, width, height),
            model,
            LocalRun(job_id=job, out_dir=data, progress=False),
            io.StringIO(),
        )
    assert code == 0
    import ray

    # The module's Ray is the caller's: the run used it and left it running. (A run that stopped
    # it made the next one start Ray from a thread of its own, and a child Ray forked then hung in
    # PyAV's clean-up of the main thread's reformatter.)
    assert ray.is_initialized()
    with EmbeddedRedis(data / "redis") as server:
        return [r for _, r in MaskReader(connect(server.url), Keys(), job).read()]


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_every_frame_at_its_own_size(variant: tuple, tmp_path: Path, ray_session: None) -> None:
    name, filename, codec, frames, width, height, fps, rotation, (mw, mh) = variant
    clip = write_clip(
        tmp_path / filename,
        frames=frames,
        width=width,
        height=height,
        fps=fps,
        codec=codec,
        rotation=rotation,
    )
    results = _run(str(clip), mw, mh, tmp_path / "out", name)
    assert [r.frame_index for r in results] == list(range(frames))
    for r in results:
        assert (r.width, r.height) == (mw, mh)
        assert r.tracks[0].rle["size"] == [mh, mw]


def test_an_http_url(tmp_path: Path, ray_session: None) -> None:
    root = tmp_path / "www"
    root.mkdir()
    write_clip(root / "clip.mp4", frames=10, width=320, height=240)

    with serve_directory(root) as base:
        results = _run(f"{base}/clip.mp4", 320, 240, tmp_path / "out", "url")
    assert [r.frame_index for r in results] == list(range(10))
