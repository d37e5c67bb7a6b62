"""A live reader leaves a stale frame when the next one is due: frames read under pacing are fresh.

The feed is a stand-in for :class:`~pipeline.sources.live.LiveSource` (its mailbox: when the
waiting frame was captured and how many came); the real feeds are in ``test_live.py``.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.sources.reader import LiveReader


class Mailbox:
    """Frames every ``interval`` seconds from ``start``; the newest waits until taken."""

    def __init__(self, interval: float, start: float) -> None:
        self.interval, self.start = interval, start
        self.taken: list[int] = []

    def _newest(self) -> int:
        return int((time.time() - self.start) / self.interval)

    def waiting(self) -> tuple[float | None, int]:
        n = self._newest()
        if self.taken and self.taken[-1] == n:
            return None, n + 1
        return self.start + n * self.interval, n + 1

    def latest(self, timeout_s: float | None = None) -> Any:
        n = self._newest()
        if self.taken and self.taken[-1] == n:
            return None
        self.taken.append(n)
        return n


def reader(box: Mailbox, fresh: bool = True) -> LiveReader:
    r = LiveReader.__new__(LiveReader)  # without a feed: the mailbox stands in for it
    r.fresh, r.interval, r._seen, r._offset, r.source = fresh, None, None, 0, box
    return r


def wait_until_age(box: Mailbox, low: float, high: float) -> None:
    while not low <= (time.time() - box.start) % box.interval <= high:
        time.sleep(0.002)


def test_a_frame_over_half_an_interval_old_is_left_for_the_next() -> None:
    box = Mailbox(0.1, time.time())
    r = reader(box)
    for _ in range(3):  # the interval is learnt from the frames seen
        wait_until_age(box, 0.0, 0.03)
        r._stale()
        time.sleep(0.1)
    assert r.interval is not None and abs(r.interval - 0.1) < 0.01
    wait_until_age(box, 0.06, 0.08)
    assert r.take(None, 1) == ([], False)  # 60-80 ms old, the next due within 40
    wait_until_age(box, 0.0, 0.03)
    frames, _ = r.take(None, 1)
    assert len(frames) == 1  # the new one, at most 30 ms old


def test_without_fresh_or_before_the_interval_is_known_the_newest_is_taken() -> None:
    box = Mailbox(0.1, time.time())
    wait_until_age(box, 0.06, 0.08)
    assert len(reader(box).take(None, 1)[0]) == 1  # nothing learnt yet
    r = reader(box, fresh=False)
    r.interval = 0.1
    time.sleep(0.1)
    wait_until_age(box, 0.06, 0.08)
    assert len(r.take(None, 1)[0]) == 1
