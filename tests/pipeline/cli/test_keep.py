"""``--keep`` / ``--max-keep`` / ``--max-maxlen`` of ``run`` and ``serve``: one clear line per mistake,
checked before anything starts."""

from __future__ import annotations

import pytest

from tests.pipeline.cli.test_jobs import sam


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "clip.mp4", "--point", "1,1", "--keep", "0"],
            "--keep must be a duration from 1 s to 100 years (3600, 90m, 12h, 7d, 2w) or 'never', got '0'",
        ),
        (
            ["serve", "--keep", "2 days"],
            "--keep must be a duration from 1 s to 100 years (3600, 90m, 12h, 7d, 2w) or 'never', got '2 days'",
        ),
        (["serve", "--keep", "7d", "--max-keep", "1d"], "--keep (7d) is longer than --max-keep (1d)"),
        (["serve", "--keep", "never", "--max-keep", "7d"], "--keep (never) is longer than --max-keep (7d)"),
        (["serve", "--max-maxlen", "0"], "--max-maxlen must be an int >= 1, got 0"),
    ],
)
def test_bad_retention_options_are_one_line(args: list[str], message: str) -> None:
    r = sam(*args, "--weights", "random")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.strip() == f"samstream: error: {message}"
