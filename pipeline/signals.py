"""SIGINT and SIGTERM sent to the process alone end it as Ctrl-C in its terminal does.

Process managers (``docker stop``, systemd, Kubernetes) send SIGTERM to the main process only, not
to its process group as a terminal's Ctrl-C does; and Ray's ``ray.init`` replaces the SIGTERM
handler with one that exits at once. :class:`InterruptOnSignals` raises :class:`Interrupted` (a
:class:`KeyboardInterrupt`) in the main thread for either signal, so the code that handles Ctrl-C
(the job left resumable, the embedded Redis and local Ray shut down) handles both.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The process got SIGINT or SIGTERM.

    Attributes:
        signum: the signal's number.
        exit_code: the shell's code for a process ended by it (128 + signum: 130, 143).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


# The signal taken by a handler of this module, if any. Kept apart from the exception because Ray
# turns any KeyboardInterrupt raised while it waits into a plain one of its own.
_received: list[int] = []


def _signum(exc: BaseException) -> int:
    if isinstance(exc, Interrupted):
        return exc.signum
    return _received[-1] if _received else int(signal.SIGINT)


def exit_code(exc: BaseException) -> int:
    """The exit code for an interrupt: 128 + the signal taken (143 for SIGTERM), else 130 (Ctrl-C)."""
    return 128 + _signum(exc)


def signal_name(exc: BaseException) -> str:
    """``SIGTERM`` (say) for an interrupt, ``SIGINT`` for a plain Ctrl-C."""
    return signal.Signals(_signum(exc)).name


class InterruptOnSignals:
    """Within the ``with`` block, the first SIGINT or SIGTERM raises :class:`Interrupted` in the main thread.

    Later signals are ignored while the block unwinds, so a second ``kill`` does not cut the
    shutdown short (SIGKILL still does). The handlers from before the block are restored after it.
    Outside the main thread, where Python cannot set handlers, it does nothing.
    """

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._fired: list[int] = []

    def __enter__(self) -> InterruptOnSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    @property
    def signum(self) -> int | None:
        """The signal taken in the block (the first one), or None."""
        return self._fired[0] if self._fired else None

    def reassert(self) -> None:
        """Take the signals back from whoever set handlers since (``ray.init`` sets SIGTERM's)."""
        if self._previous:
            for s in SIGNALS:
                signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._fired:
            return
        self._fired.append(signum)
        _received.append(signum)
        raise Interrupted(signum)
