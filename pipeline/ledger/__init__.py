"""The ledger: the only code that knows a job's Redis record.

Its hash, the state machine of its status and the count of active jobs it is created within
(:mod:`~pipeline.ledger.record`), the script that publishes its frames exactly once with their
checkpoint (:mod:`~pipeline.ledger.sink`), where it resumes (:mod:`~pipeline.ledger.resume`), the
steps of its life (:mod:`~pipeline.ledger.lifecycle`), and its track slots and the lock a live
stream is admitted under (:mod:`~pipeline.ledger.slots`).
Key names, the wire format and the readers are :mod:`pipeline.streams`'.
"""

from pipeline.ledger.record import TRANSITIONS, JobInfo, JobStatus, JobStore

__all__ = ["TRANSITIONS", "JobInfo", "JobStatus", "JobStore"]
