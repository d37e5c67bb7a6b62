"""``samstream run`` on a real loopback URL that sends a few seconds of video, then only audio: the
job fails with "no picture for N s" (one line, no traceback) once the pictures sent are published."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.stalling_http import serve_stalling, write_video_then_audio
from tests.workers.conftest import cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(240)
def test_run_fails_a_url_that_goes_on_without_pictures(tmp_path: Path, results) -> None:
    path, video_end = write_video_then_audio(tmp_path / "v.ts")
    data = tmp_path / "out"
    with serve_stalling(path.read_bytes(), video_end + 4000, "trickle") as url:
        res = cli("run", url, "--point", "100,100", "--weights", "random", "--image-size", "256",
                  "--job-id", "stall", "--data-dir", str(data), "--no-progress", "--compile", "eager",
                  "--stall-s", "3", timeout=200)  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("samstream: error:")]
    assert len(errors) == 1 and "no picture for 3 s" in errors[0], res.stderr
    r = results(data)
    job = r.job("stall")
    assert job["status"] == "failed" and "no picture for 3 s" in job["error"]
    frames = [e.frame_index for _, e in r.entries("stall")]
    assert len(frames) >= 30 and frames == list(range(len(frames)))  # every picture sent, in order
