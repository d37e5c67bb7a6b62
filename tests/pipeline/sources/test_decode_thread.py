"""DecodeThread: backpressure or drop-oldest, error hand-off after the items before it, stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from pipeline.errors import SourceError
from pipeline.sources.decode_thread import DecodeThread, Emit


def _counting(n: int, fail: BaseException | None = None) -> Callable[[Emit[int], threading.Event], None]:
    def produce(emit: Emit[int], stopping: threading.Event) -> None:
        for i in range(n):
            if not emit(i):
                return
        if fail is not None:
            raise fail

    return produce


def _thread(produce: Callable[[Emit[int], threading.Event], None], **kwargs: Any) -> DecodeThread[int]:
    thread: DecodeThread[int] = DecodeThread(produce, name="test", label="test source", **kwargs)
    thread.start()
    return thread


def test_keeps_every_item_in_order_then_ends() -> None:
    thread = _thread(_counting(20), capacity=3)
    items = []
    while (item := thread.get(timeout=2)) is not None:
        items.append(item)
    assert items == list(range(20)) and thread.dropped == 0
    assert thread.get(timeout=0) is None  # stays ended
    thread.stop()


def test_waits_for_room_when_full() -> None:
    thread = _thread(_counting(100), capacity=2)
    time.sleep(0.1)
    assert thread.counts() == (2, 0, 0)  # two in the buffer, the third waits
    assert thread.get(timeout=1) == 0
    thread.stop()


def test_drop_oldest_keeps_the_newest_and_counts_the_rest() -> None:
    thread = _thread(_counting(50), capacity=1, drop_oldest=True)
    while not thread.finished:
        time.sleep(0.01)
    assert thread.get(timeout=1) == 49
    assert thread.counts() == (50, 1, 49)
    assert thread.get(timeout=1) is None
    thread.stop()


def test_a_source_error_comes_after_the_items_chained() -> None:
    original = SourceError("video x ended early")
    thread = _thread(_counting(3, fail=original), capacity=4)
    assert [thread.get(timeout=1) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(SourceError, match="ended early") as info:
        thread.get(timeout=1)
    assert info.value.__cause__ is original
    thread.stop()


def test_a_bug_keeps_its_type() -> None:
    thread = _thread(_counting(0, fail=ZeroDivisionError("bug")), capacity=1)
    with pytest.raises(ZeroDivisionError, match="bug"):
        thread.get(timeout=1)
    thread.stop()


def test_get_times_out_and_stop_wakes_a_waiting_reader() -> None:
    def idle(emit: Emit[int], stopping: threading.Event) -> None:
        stopping.wait()

    thread = _thread(idle, capacity=1)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        thread.get(timeout=0.05)
    assert time.monotonic() - t0 < 0.5
    errors: list[BaseException] = []

    def read() -> None:
        try:
            thread.get()
        except SourceError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.05)
    thread.stop()
    reader.join(1)
    assert not reader.is_alive() and "test source was closed" in str(errors[0])
    assert not thread._thread.is_alive()


def test_stop_unblocks_a_producer_waiting_for_room() -> None:
    thread = _thread(_counting(1000), capacity=1)
    time.sleep(0.05)
    t0 = time.monotonic()
    thread.stop()
    assert time.monotonic() - t0 < 0.5 and thread.finished
