"""A background thread that decodes ahead into a bounded buffer and hands its error to the reader.

Both sources read through one. The file source keeps every frame: the thread waits while the
buffer is full (backpressure, nothing lost). The live source passes ``drop_oldest``: a new item
pushes out the oldest one, counted in :attr:`DecodeThread.dropped`; with ``capacity=1`` the
buffer is a one-slot mailbox that always holds the newest frame. Memory stays flat either way.

The thread runs ``produce(emit, stopping)``. ``emit(item)`` hands an item over and returns False
once the thread is asked to stop (the producer then returns); long waits inside the producer
should use ``stopping.wait(seconds)``. An exception the producer raises is stored and re-raised,
chained, by the reader's next :meth:`DecodeThread.get` after the items emitted before it. The end
of the stream is marked in ``finally``, so a reader never waits on a finished thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, NoReturn, TypeVar

from pipeline.errors import InvalidInputError, SourceError

T = TypeVar("T")

Emit = Callable[[T], bool]
Produce = Callable[[Emit[T], threading.Event], None]


def reraise(error: BaseException) -> NoReturn:
    """Raise a producer's error in the reader: a SourceError anew (chained), a bug as it is."""
    if isinstance(error, SourceError):
        raise SourceError(str(error)) from error
    raise error  # a bug, not bad input: keep its own type and traceback


class DecodeThread(Generic[T]):
    """A daemon thread running ``produce``, its bounded buffer, and the hand-off of its error.

    Args:
        produce: ``produce(emit, stopping)``, run on the thread (see the module docstring).
        name: the thread's name.
        label: what is read, for messages (``video clip.mp4``).
        capacity: most items held at once (>= 1).
        drop_oldest: when full, drop the oldest item (counted) instead of waiting for room.
        join_timeout_s: how long :meth:`stop` waits for the thread (it may sit in a blocking read
            that only its own timeout ends).
        raise_error: raises the reader's exception for the producer's error (default
            :func:`reraise`).
        on_item: called (on the producing thread, outside the buffer's lock) after each item is
            buffered and once when the producer ends: a host that reads many sources waits on
            one event instead of polling each.
    """

    def __init__(
        self,
        produce: Produce[T],
        *,
        name: str,
        label: str,
        capacity: int,
        drop_oldest: bool = False,
        join_timeout_s: float = 5.0,
        raise_error: Callable[[BaseException], NoReturn] = reraise,
        on_item: Callable[[], None] | None = None,
    ) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise InvalidInputError(f"capacity must be an int >= 1, got {capacity!r}")
        self.label = label
        self.capacity = capacity
        self.drop_oldest = drop_oldest
        self.join_timeout_s = join_timeout_s
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.emitted = 0  # items handed to the buffer
        self.taken = 0  # items returned by get()
        self.dropped = 0  # items pushed out unread (drop_oldest only)
        self._produce = produce
        self._raise_error = raise_error
        self._on_item = on_item
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._finished = False  # the producer returned or raised
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def finished(self) -> bool:
        """The producer has returned or raised (items may still wait in the buffer)."""
        return self._finished

    def counts(self) -> tuple[int, int, int]:
        """(emitted, taken, dropped), read together."""
        with self._cond:
            return self.emitted, self.taken, self.dropped

    def emit(self, item: T) -> bool:
        """Put ``item`` in the buffer (waiting for room, or dropping the oldest); False if stopping."""
        with self._cond:
            while len(self._items) >= self.capacity and not self.stopping.is_set():
                if self.drop_oldest:
                    self._items.popleft()
                    self.dropped += 1
                else:
                    self._cond.wait()  # get() and stop() notify
            if self.stopping.is_set():
                return False
            self._items.append(item)
            self.emitted += 1
            self._cond.notify_all()
        if self._on_item is not None:
            self._on_item()
        return True

    def peek(self) -> tuple[T | None, int]:
        """The newest item in the buffer without taking it (None: empty), and how many were emitted."""
        with self._cond:
            return (self._items[-1] if self._items else None), self.emitted

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item in the buffer, waiting for one; None once the stream has ended.

        Args:
            timeout: seconds to wait; None waits until an item comes or the producer ends.

        Raises:
            TimeoutError: no item within ``timeout``.
            SourceError: the thread was stopped (the source closed while being read).
            the producer's error, through ``raise_error``, once the items before it are read.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self.stopping.is_set():
                    raise SourceError(f"{self.label} was closed while being read")
                if self._items:
                    self.taken += 1
                    item = self._items.popleft()
                    self._cond.notify_all()
                    return item
                if self._finished:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no frame from {self.label} within {timeout:g} s")
                self._cond.wait(remaining)
        if self.error is None:
            return None
        self._raise_error(self.error)

    def stop(self) -> None:
        """Ask the thread to stop, unblock it and any reader, and wait for it to finish."""
        with self._cond:
            self.stopping.set()
            self._items.clear()
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.join_timeout_s)

    def _run(self) -> None:
        try:
            self._produce(self.emit, self.stopping)
        except BaseException as exc:  # handed to the reader, re-raised at its next get()
            self.error = exc
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()
            if self._on_item is not None:
                self._on_item()
