"""Retention settings: how ``--keep`` is read, written back, and what a job keeps by default."""

from __future__ import annotations

import pytest

from pipeline.errors import InvalidInputError
from pipeline.streams.retention import (
    DEFAULT_KEEP_S,
    LIVE_MAXLEN,
    MAX_KEEP_S,
    check_keep,
    default_maxlen,
    format_keep,
    parse_keep,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3600", 3600),
        ("45s", 45),
        ("90m", 5400),
        ("12h", 43_200),
        ("7d", DEFAULT_KEEP_S),
        ("2w", 14 * 86_400),
        (" 7D ", DEFAULT_KEEP_S),
        ("never", None),
        ("Never", None),
    ],
)
def test_keep_is_read_in_seconds_minutes_hours_days_weeks(text: str, seconds: int | None) -> None:
    assert parse_keep(text) == seconds


@pytest.mark.parametrize("text", ["0", "0d", "-1", "1.5h", "7 days", "", "d", "forever", "101000000000000d"])
def test_a_keep_that_is_no_duration_names_the_option_and_the_forms(text: str) -> None:
    with pytest.raises(InvalidInputError, match=r"--max-keep must be a duration .*7d.*'never', got"):
        parse_keep(text, "--max-keep")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "never"), (45, "45s"), (5400, "90m"), (DEFAULT_KEEP_S, "7d"), (14 * 86_400, "14d")],
)
def test_format_keep_uses_the_largest_whole_unit(seconds: int | None, text: str) -> None:
    assert format_keep(seconds) == text
    assert parse_keep(text) == seconds


def test_check_keep_bounds() -> None:
    assert check_keep(None) is None and check_keep(1) == 1 and check_keep(MAX_KEEP_S) == MAX_KEEP_S
    for bad in (0, -1, MAX_KEEP_S + 1, True, 1.5, "7d"):
        with pytest.raises(InvalidInputError, match="keep_s must be None"):
            check_keep(bad)


def test_live_jobs_keep_the_newest_entries_and_files_keep_every_one() -> None:
    assert default_maxlen(None, live=True) == LIVE_MAXLEN == 10_000
    assert default_maxlen(None, live=False) is None
    assert default_maxlen(50, live=True) == default_maxlen(50, live=False) == 50
