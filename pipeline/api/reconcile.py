"""``serve``'s reconciler: every few seconds, each unfinished job that no driver runs is resumed.

A job is unfinished while its hash says ``queued`` or ``running``. Every job of a service runs in
one driver; a job has no runner when that driver does not hold it: the driver died and was not
restarted (a new one is started by the backend), the job's submission was lost (Redis refused it
when the driver took it up), or its final status could not be written (the driver let it go and
the hash still says ``running``). Resuming is what the job's lifecycle allows: a job that had in
fact ended is not run again, one that had not goes on from its checkpoint.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from pipeline.errors import InvalidInputError
from pipeline.ledger import JobStore
from pipeline.ledger.lifecycle import resume_unfinished

log = logging.getLogger(__name__)


class Runner(Protocol):
    """What the reconciler asks of the backend."""

    def held(self) -> set[str]:
        """Ids of the jobs the driver runs or is about to (empty when it does not answer)."""
        ...

    def submit(self, job_id: str) -> None:
        """Run (or resume) a job."""
        ...


class Reconciler:
    """Resumes unfinished jobs that nothing runs, every ``every_s`` seconds, on a thread.

    Args:
        store: the job hashes.
        backend: the driver's backend.
        every_s: seconds between two passes.
        most: most jobs resumed in one pass (the others in the next ones): a pass stays short
            however many jobs lost their runner at once.
    """

    def __init__(self, store: JobStore, backend: Runner, every_s: float = 5.0, most: int = 100) -> None:
        if not every_s > 0 or most < 1:
            raise InvalidInputError(f"reconcile every {every_s} s, {most} jobs a pass: both must be > 0")
        self.store = store
        self.backend = backend
        self.every_s = every_s
        self.most = most
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def once(self) -> list[str]:
        """One pass: the ids of the jobs resumed (none when Redis or the driver cannot be asked)."""
        try:
            resumed = resume_unfinished(self.store, self.backend.held, self.backend.submit, self.most)
        except Exception as exc:  # Redis or Ray down for now: the next pass asks again
            log.warning("reconcile: cannot list jobs or ask the driver: %s", exc)
            return []
        if resumed:
            log.warning("reconcile: resumed %d jobs that nothing ran: %s", len(resumed), ", ".join(resumed))
        return resumed

    def start(self) -> None:
        """Pass every ``every_s`` seconds on a daemon thread, until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="samstream-reconcile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)  # a daemon: a pass waiting on the driver is left behind

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.once()
