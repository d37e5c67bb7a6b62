"""The job lifecycle: queued → running → succeeded / failed / cancelled, written in one place.

The changes allowed are the state machine's (:data:`pipeline.ledger.record.TRANSITIONS`), which the
job store checks atomically in Redis on every write; this module says when each one is made.

Both ``samstream run`` and ``samstream serve`` move their jobs through these steps, and only
through them:

* :meth:`Lifecycle.admit` (``run``): create the job, or take up an existing one with the same spec.
* :meth:`Lifecycle.begin`: a job about to run: its spec, where its source reads from (the resume
  rule), whether it starts for the first time; status ``running``. None for a job that has ended.
* :meth:`Lifecycle.placed`: the hosts that run it (recorded for operators).
* :meth:`Lifecycle.opened`: its source is open: prompts are checked against the frame size and a
  file's length recorded.
* :meth:`Lifecycle.end`: the job ended: ``succeeded`` (a file read to its end, a live job stopped),
  ``cancelled`` (a file job stopped early, interrupted) or ``failed`` (with its one-line reason).
  Its keys then expire after its ``keep_s`` (written by :meth:`JobStore.set_status` in the same
  step), unless it runs again first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from pipeline.errors import JobError, SamstreamError
from pipeline.ledger.record import JobInfo, JobStatus, JobStore
from pipeline.ledger.resume import ResumePoint, load
from pipeline.spec import JobSpec
from pipeline.streams.retention import DEFAULT_KEEP_S

if TYPE_CHECKING:
    from pipeline.sources.video import SourceInfo

INTERRUPTED = "interrupted; run again with the same --job-id to resume"

log = logging.getLogger(__name__)


class Ending(str, Enum):
    """How a job ended."""

    FINISHED = "finished"  # a file read to its end
    STOPPED = "stopped"  # a stop command (cancel): live jobs succeed, file jobs are cancelled
    INTERRUPTED = "interrupted"  # the driver was interrupted (Ctrl-C, SIGTERM): resumable
    FAILED = "failed"


@dataclass(frozen=True)
class Start:
    """A job about to run.

    Attributes:
        job_id: the job.
        spec: its spec.
        resume: how far it got (no tracker snapshot: the tracker side loads its own).
        first_run: it never ran: control commands sent while it was queued apply.
    """

    job_id: str
    spec: JobSpec
    resume: ResumePoint
    first_run: bool

    @property
    def read_after(self) -> int | None:
        """The frame the job's source reads after (the resume rule's answer)."""
        return self.resume.read_after(self.spec.live)


class Lifecycle:
    """Status transitions of jobs kept in Redis.

    Args:
        store: the job hashes.
        stop_reason: the error text of a file job stopped by a command (``stopped on request``
            for ``run``, ``cancelled on request`` for the API).
    """

    def __init__(self, store: JobStore, stop_reason: str = "stopped on request") -> None:
        self.store = store
        self.stop_reason = stop_reason

    def admit(
        self,
        job_id: str,
        spec: JobSpec,
        total_frames: int | None = None,
        keep_s: int | None = DEFAULT_KEEP_S,
    ) -> JobInfo | None:
        """Create the job (``queued``), or take up the existing one; None if it succeeded already.

        ``keep_s``: how long its keys stay once it has ended (None: until deleted); a job taken up
        again is kept as long as its latest run says.

        Raises:
            JobError: a job with this id exists with another spec.
        """
        if not self.store.exists(job_id):
            self.store.create(job_id, spec.to_dict(), total_frames=total_frames, keep_s=keep_s)
            return self.store.get(job_id)
        info = self.store.get(job_id)
        if info.spec != spec.to_dict():
            raise JobError(
                f"job {job_id!r} exists with another spec (source {info.spec.get('source')!r}); "
                "use another --job-id to start a new job"
            )
        if info.status is JobStatus.SUCCEEDED:
            return None
        self.store.set_keep(job_id, keep_s)
        return info

    def begin(self, job_id: str, again: bool = False) -> Start | None:
        """Mark the job ``running`` and say where it goes on; None if it has ended (nothing to do).

        ``again``: a job that failed or was cancelled runs again (``samstream run`` with its id).
        A job that succeeded never runs again.

        Raises:
            JobError: no such job, or its stored spec is not valid (the job is marked failed).
            RedisUnavailableError: Redis cannot be reached.
        """
        info = self.store.get(job_id)
        if info.status is JobStatus.SUCCEEDED or (info.status.terminal and not again):
            return None
        try:
            spec = JobSpec.from_dict(info.spec)
        except SamstreamError as exc:
            self.store.set_status(job_id, JobStatus.FAILED, str(exc))
            raise JobError(f"job {job_id!r} cannot run: {exc}") from None
        resume = load(self.store.client, self.store.keys, job_id, with_snapshot=False)
        # Checked again in the write: a job cancelled since it was read does not start.
        ongoing = None if again else (JobStatus.QUEUED, JobStatus.RUNNING)
        if not self.store.set_status(job_id, JobStatus.RUNNING, only_from=ongoing):
            return None
        return Start(job_id, spec, resume, first_run=info.status is JobStatus.QUEUED and resume.fresh)

    def resume_point(self, job_id: str) -> ResumePoint:
        """How far the job got, now (without the tracker state)."""
        return load(self.store.client, self.store.keys, job_id, with_snapshot=False)

    def placed(self, job_id: str, source_host: int, tracker_host: int) -> None:
        """The job was given a source host and a tracker host (kept in its hash, for operators)."""
        self.store.record_placement(job_id, source_host, tracker_host)

    def opened(self, start: Start, info: SourceInfo) -> None:
        """The job's source is open: its prompts must lie inside the frames; a file's length is kept.

        Raises:
            PromptError: a prompt lies outside the frame (the caller ends the job ``failed``).
        """
        for track in start.spec.tracks:
            track.prompt.check_inside(info.width, info.height)
        if not start.spec.live and info.frame_count:
            stride = start.spec.stride
            self.store.set_total(start.job_id, (info.frame_count + stride - 1) // stride)

    def end(self, job_id: str, spec: JobSpec | None, ending: Ending, error: str | None = None) -> JobStatus:
        """Write the job's final status (and its event); the status it has then.

        The first ending wins: a job that ended meanwhile (cancelled through the API while its
        driver finished it) keeps the status it has, which is returned.
        """
        if ending is Ending.FAILED:
            status, text = JobStatus.FAILED, error or "failed"
        elif ending is Ending.INTERRUPTED:
            status, text = JobStatus.CANCELLED, error or INTERRUPTED
        elif ending is Ending.STOPPED and (spec is None or not spec.live):
            status, text = JobStatus.CANCELLED, self.stop_reason
        else:
            status, text = JobStatus.SUCCEEDED, None
        if self.store.set_status(job_id, status, text):
            return status
        return self.store.get(job_id).status

    def terminal(self, job_id: str) -> bool:
        """Whether the job has ended (or is gone)."""
        try:
            return self.store.get(job_id).status.terminal
        except JobError:
            return True


def unfinished(store: JobStore) -> list[str]:
    """Ids of jobs that are queued or running, oldest first."""
    return [i.job_id for i in store.list() if not i.status.terminal]


def resume_unfinished(
    store: JobStore,
    held: Callable[[], set[str]],
    submit: Callable[[str], None],
    most: int | None = None,
) -> list[str]:
    """The one place unfinished jobs are taken up again: every queued or running job that nothing
    holds is submitted, oldest first; the ids submitted.

    Used by a driver that (re)starts, by ``serve`` as it starts, and by its reconciler every few
    seconds after.

    Args:
        store: the job hashes.
        held: the ids of the jobs something runs now (asked only when a job is unfinished).
        submit: runs (or resumes) one job; one that raises is logged and left for the next call.
        most: submit at most this many (the rest in the next call); None: all.
    """
    waiting = unfinished(store)
    if not waiting:
        return []
    taken = held()
    resumed = []
    for job_id in [j for j in waiting if j not in taken][:most]:
        try:
            submit(job_id)
        except Exception as exc:
            log.warning("resuming job %s: %s", job_id, exc)
            continue
        resumed.append(job_id)
    return resumed
