"""How long a finished job's keys stay in Redis, and how far its streams may grow.

A job's keys (hash, masks, events, control, state) get a TTL of the job's ``keep_s`` when it
reaches a terminal status, in the same atomic step (see :class:`~pipeline.ledger.record.JobStore`),
and lose it again if the job runs again. The events and control streams are trimmed as they are
written; the masks stream keeps what the job's ``maxlen`` says.
"""

from __future__ import annotations

import re

from pipeline.errors import InvalidInputError

DEFAULT_KEEP_S = 7 * 86_400  # a week: time to fetch results, short enough that Redis does not fill
NEVER = "never"
# Longer is "never" for any purpose, and Redis refuses an EXPIRE that overflows its clock.
MAX_KEEP_S = 100 * 365 * 86_400

# Live jobs keep about this many masks entries unless told otherwise (MAXLEN ~): ~7 minutes at 25 fps.
LIVE_MAXLEN = 10_000
# The most entries the API lets a job or stream ask to keep (``serve --max-maxlen``).
MAX_MAXLEN = 1_000_000

# Events: status changes, tracks lost and found, reconnects. A long live job writes them for ever;
# the newest ten thousand (a few MB at most) tell the recent story.
EVENTS_MAXLEN = 10_000
# Control commands are read by the job's driver every 50 ms, 100 a read, from the last id it saw
# (2,000 a second): a command is trimmed unread only if ten thousand arrive between two reads,
# or while the job is queued. Trimming only bounds a client that floods one job with commands.
CONTROL_MAXLEN = 10_000

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_DURATION = re.compile(r"(\d{1,12})([smhdw]?)")


def parse_keep(text: str, option: str = "--keep") -> int | None:
    """Seconds from ``"3600"``, ``"90m"``, ``"12h"``, ``"7d"``, ``"2w"``; None for ``"never"``.

    Raises:
        InvalidInputError: naming the option, the accepted forms and what came (``0`` included:
            data that expires at once could never be read; say ``never`` to keep it).
    """
    value = text.strip().lower()
    if value == NEVER:
        return None
    match = _DURATION.fullmatch(value)
    seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"] if match else 0
    if not 1 <= seconds <= MAX_KEEP_S:
        raise InvalidInputError(
            f"{option} must be a duration from 1 s to 100 years (3600, 90m, 12h, 7d, 2w) or 'never', "
            f"got {text!r}"
        )
    return seconds


def format_keep(seconds: int | None) -> str:
    """``7d``, ``12h``, ``90m``, ``45s`` or ``never``: the largest unit (up to days) that divides ``seconds``."""
    if seconds is None:
        return NEVER
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def check_keep(keep_s: object, what: str = "keep_s") -> int | None:
    """``keep_s`` if it is None (never expire) or 1 s to 100 years, else :class:`InvalidInputError`."""
    if keep_s is not None and (
        isinstance(keep_s, bool) or not isinstance(keep_s, int) or not 1 <= keep_s <= MAX_KEEP_S
    ):
        raise InvalidInputError(
            f"{what} must be None (keep for ever) or seconds from 1 to {MAX_KEEP_S} (100 years), got {keep_s!r}"
        )
    return keep_s


def default_maxlen(maxlen: int | None, live: bool) -> int | None:
    """The masks entries a job keeps: ``maxlen`` if given, else :data:`LIVE_MAXLEN` for live jobs
    and every entry (None) for files, whose entries are the job's result."""
    if maxlen is not None:
        return maxlen
    return LIVE_MAXLEN if live else None
