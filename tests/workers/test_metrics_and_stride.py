"""Per-stage metrics scraped from a running job; strided jobs."""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.metrics import STAGES
from tests.workers.conftest import popen

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _counts(text: str) -> dict[str, float]:
    out = {}
    for stage, value in re.findall(r'^samstream_stage_seconds_count\{stage="(\w+)"\} (\S+)$', text, re.M):
        out[stage] = float(value)
    m = re.search(r"^samstream_end_to_end_seconds_count (\S+)$", text, re.M)
    if m:
        out["end_to_end"] = float(m.group(1))
    return out


def test_scrape_during_a_run_shows_every_stage(clip60: Path, tmp_path: Path, results) -> None:
    port = _free_port()
    data = tmp_path / "out"
    proc = popen(
        "run", str(clip60), "--point", "60,120", "--weights", "random", "--image-size", "256", "--stride", "2",
        "--job-id", "m", "--data-dir", str(data), "--metrics-port", str(port), "--no-progress", "--compile", "eager",
    )  # fmt: skip
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            time.sleep(0.2)
            continue
        seen = _counts(text)
        if all(seen.get(s, 0) > 0 for s in (*STAGES, "end_to_end")):
            break
        time.sleep(0.2)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    for stage in (*STAGES, "end_to_end"):
        assert seen.get(stage, 0) > 0, (stage, seen)

    # Every second frame, numbered as in the source.
    assert results(data).raw_ids("m") == [f"{i}-1" for i in range(0, 60, 2)]
