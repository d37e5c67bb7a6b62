"""The ledger: the only code that knows a job's Redis record.

Its hash and the state machine of its status (:mod:`~pipeline.ledger.record`), the script that
publishes its frames exactly once with their checkpoint (:mod:`~pipeline.ledger.sink`), where it
resumes (:mod:`~pipeline.ledger.resume`), and the steps of its life (:mod:`~pipeline.ledger.lifecycle`).
Key names, the wire format and the readers are :mod:`pipeline.streams`'.
"""

from pipeline.ledger.record import TRANSITIONS, JobInfo, JobStatus, JobStore

__all__ = ["TRANSITIONS", "JobInfo", "JobStatus", "JobStore"]
