"""Mask prompts' RLE through the command line: every malformed or oversized one is one clear line
(exit 1), before Ray, Redis or a video is touched, from ``run`` and ``submit`` alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.pipeline.cli.test_segment import run_cli

CASES = [
    pytest.param([1, 2], [2**63 - 1, 2**63 - 1, 0, 4], "9223372036854775807 pixels long", id="int64-wrap"),
    pytest.param([100_000, 100_000], [0, 1, 0, 10**10 - 1], "more than the 1073741824", id="huge-size"),
    pytest.param([2**32, 2**32], [], "more than the 1073741824", id="size-wraps-int64"),
    pytest.param([4, 4], [2**64 - 4, 4], "18446744073709551612 pixels long", id="uint64"),
    pytest.param([4, 4], [-1, 17], "must be non-negative", id="negative"),
    pytest.param([4, 4], "0" + "o" * 7 + "3", "longer than 7 characters", id="overlong-number"),
    pytest.param([4, 4], "1" * 20, "expected H * W = 4 * 4 = 16", id="too-many-pixels"),
]


@pytest.mark.parametrize(("size", "counts", "message"), CASES)
@pytest.mark.parametrize("form", ["json", "yaml"])
def test_a_bad_rle_in_a_prompts_file_is_one_line(
    tmp_path: Path, size: list[int], counts: Any, message: str, form: str
) -> None:
    tracks = {"tracks": [{"id": 1, "mask": {"size": size, "counts": counts}}]}
    path = tmp_path / f"tracks.{form}"
    path.write_text(json.dumps(tracks) if form == "json" else yaml.safe_dump(tracks))
    for command in (["run", str(tmp_path / "clip.mp4")], ["submit", "https://videos.example/a.mp4"]):
        api = ["--api", "http://127.0.0.1:9", "--token", "t"] if command[0] == "submit" else []
        res = run_cli(*command, "--prompts", str(path), *api, timeout=60)
        assert res.returncode == 1, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
        assert lines[0].startswith("samstream: error: prompts file") and message in lines[0], lines[0]
