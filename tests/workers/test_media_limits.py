"""A file job past ``--max-frames`` under ``samstream run``: its frames up to the limit, then a failure.

Real Ray, a real Redis server, real PyAV; the null model (the limits are the sources' business).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.media import write_undeclared_clip
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
