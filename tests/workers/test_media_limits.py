"""Media limits end to end: ``samstream run`` and the REST API of ``samstream serve``.

Real Ray, a real Redis server, real PyAV; the null model (the limits are the sources' business).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.bench.samples import write_clip
from tests.fixtures.media import write_png_frames, write_undeclared_clip
from tests.fixtures.serve import ServeProcess
from tests.workers.conftest import cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(300)
def test_a_file_longer_than_max_frames_fails_after_its_frames_up_to_the_limit(
    tmp_path: Path, results
) -> None:
    # No duration or frame count in its container: the limit is met while reading, in the source
    # host the driver hands it to, not by the probe at open.
    clip = write_undeclared_clip(tmp_path / "long.mkv", frames=40)
    data = tmp_path / "out"
    res = cli("run", str(clip), "--point", "30,20", "--weights", "null", "--image-size", "256",
              "--job-id", "capped", "--data-dir", str(data), "--no-progress", "--max-frames", "25")  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    expected = f"video {clip} stopped after frame 24: it has more than 25 frames, the limit (--max-frames)"
    assert f"samstream: error: job capped failed: {expected}" in res.stderr
    r = results(data)
    job = r.job("capped")
    assert job["status"] == "failed" and job["error"] == expected
    assert r.raw_ids("capped") == [f"{i}-1" for i in range(25)]  # every frame before the limit, no more


def _ended(service: ServeProcess, job: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with service.api() as api:
        while True:
            view: dict[str, Any] = api.get(f"/jobs/{job}").json()
            if view["status"] in ("succeeded", "failed", "cancelled"):
                return view
            assert time.monotonic() < deadline, service.log()
            time.sleep(0.5)


@pytest.mark.timeout(600)
def test_the_service_fails_jobs_past_its_media_limits_with_the_reason(tmp_path: Path) -> None:
    bomb = write_png_frames(tmp_path / "bomb.mov", [(16384, 8192)])
    declared = write_clip(tmp_path / "declared.mp4", frames=60, width=64, height=48)
    undeclared = write_undeclared_clip(tmp_path / "undeclared.mkv", frames=40)
    within = write_clip(tmp_path / "within.mp4", frames=20, width=64, height=48)
    args = [
        "--data-dir", str(tmp_path / "data"), "--weights", "null", "--image-size", "256",
        "--allow-local-files", "--encoder-gpus", "0", "--min-encoders", "1", "--max-encoders", "1",
        "--source-hosts", "1", "--metrics-port", "0", "--max-frames", "25",
    ]  # fmt: skip
    service = ServeProcess(args, tmp_path, "media-limits-token")
    try:
        service.start()
        sources = {"bomb": bomb, "declared": declared, "undeclared": undeclared, "within": within}
        with service.api() as api:
            for job, path in sources.items():
                body = {"source": str(path), "tracks": [{"id": 1, "points": [[30, 20]]}], "job_id": job}
                response = api.post("/jobs", json=body)
                assert response.status_code == 201, response.text
        views = {job: _ended(service, job) for job in sources}
    finally:
        service.stop()
    assert views["within"]["status"] == "succeeded" and views["within"]["frames_done"] == 20
    assert views["bomb"]["status"] == "failed" and views["bomb"]["frames_done"] == 0
    assert "larger than the limit of 35.4 Mpx per frame (--max-frame-pixels)" in views["bomb"]["error"]
    assert views["declared"]["status"] == "failed" and views["declared"]["frames_done"] == 0
    assert views["declared"]["error"].endswith("it has 60 frames, more than the limit of 25 (--max-frames)")
    assert views["undeclared"]["status"] == "failed" and views["undeclared"]["frames_done"] == 25
    assert views["undeclared"]["error"].endswith(
        "stopped after frame 24: it has more than 25 frames, the limit (--max-frames)"
    )
