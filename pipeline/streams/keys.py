"""Redis key names of samstream, all under one configurable prefix."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

from pipeline.errors import InvalidInputError

# A job id: 1 to 128 characters from A-Z a-z 0-9 _ . -, but not "." or "..", the path segments a
# URL normalises away (/view/jobs/.. is /view). The one rule of every entry point (API paths and
# bodies, the CLI, the store); written without look-arounds, so that pydantic's regex engine takes
# it as it is: one character that is not a dot, two that are not both dots, or three and more.
JOB_ID = r"^(?:[A-Za-z0-9_-]|[A-Za-z0-9_.-][A-Za-z0-9_-]|[A-Za-z0-9_-]\.|[A-Za-z0-9_.-]{3,128})$"
JOB_ID_PATTERN = re.compile(JOB_ID)


def validate_job_id(job_id: object) -> str:
    """Return ``job_id`` if it is a valid job id, else raise.

    A job id is 1 to 128 characters from ``A-Z a-z 0-9 _ . -``, not ``.`` or ``..``; no ``:``, so
    one job's keys can never collide with another's, and no URL changes it.

    Raises:
        InvalidInputError: naming the expected pattern and the value that came.
    """
    if not isinstance(job_id, str) or JOB_ID_PATTERN.fullmatch(job_id) is None:
        raise InvalidInputError(
            "job id must be 1 to 128 characters from A-Z, a-z, 0-9, '_', '.', '-', and not '.' or "
            f"'..'; got {job_id!r}"
        )
    return job_id


@dataclass(frozen=True)
class Keys:
    """The names of every Redis key samstream uses.

    Attributes:
        prefix: namespace put before every key (default ``samstream:``), so several deployments or
            test runs can share one Redis database.
    """

    prefix: str = "samstream:"

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str):
            raise InvalidInputError(f"key prefix must be a string, got {type(self.prefix).__name__}")

    def job(self, job_id: str) -> str:
        """Hash with the job's spec, status, progress and timestamps: ``{prefix}job:{id}``."""
        return f"{self.prefix}job:{validate_job_id(job_id)}"

    def masks(self, job_id: str) -> str:
        """Stream with one entry per processed frame: ``{prefix}job:{id}:masks``."""
        return f"{self.job(job_id)}:masks"

    def events(self, job_id: str) -> str:
        """Stream of status changes, track lost/found, reconnects, errors: ``{prefix}job:{id}:events``."""
        return f"{self.job(job_id)}:events"

    def control(self, job_id: str) -> str:
        """Stream of live commands (add/remove/update track, stop): ``{prefix}job:{id}:control``."""
        return f"{self.job(job_id)}:control"

    def state(self, job_id: str) -> str:
        """String with the tracker state after the last published frame (internal; JSON, then the
        tracks' logits as raw bytes, see :mod:`pipeline.ledger.sink`): ``{prefix}job:{id}:state``."""
        return f"{self.job(job_id)}:state"

    def tracks(self, job_id: str) -> str:
        """Set of the track ids the API counts against its track limit (and ``0``, so that it
        outlives the removal of every track): ``{prefix}job:{id}:tracks``."""
        return f"{self.job(job_id)}:tracks"

    def preview(self, job_id: str) -> str:
        """Stream of small JPEG previews of processed frames (bounded): ``{prefix}job:{id}:preview``."""
        return f"{self.job(job_id)}:preview"

    def watched(self, job_id: str) -> str:
        """Set, with a short expiry, while a viewer shows the job: ``{prefix}job:{id}:watched``.
        A live job makes previews only then (unless its previews are kept always)."""
        return f"{self.job(job_id)}:watched"

    def of_job(self, job_id: str) -> tuple[str, ...]:
        """Every key of one job: hash, masks, events, control, state, tracks, preview (they expire
        and go together; the hash first, as the job store's scripts want). Not ``watched``: it
        lives seconds of its own."""
        return (
            self.job(job_id),
            self.masks(job_id),
            self.events(job_id),
            self.control(job_id),
            self.state(job_id),
            self.tracks(job_id),
            self.preview(job_id),
        )

    def viewer_session(self, nonce: str) -> str:
        """String, expiring with it, while a viewer session is signed in (sign-out deletes it):
        ``{prefix}viewer:session:{nonce}``."""
        return f"{self.prefix}viewer:session:{nonce}"

    def login_failures(self, address: str) -> str:
        """Counter of a client address's failed viewer sign-ins in the current window:
        ``{prefix}viewer:login-failures:{address}``."""
        return f"{self.prefix}viewer:login-failures:{address}"

    def encoder_capacity(self) -> str:
        """Hash the driver writes about once a second, expiring when it stops: frames a second the
        encoders take at each image size (field: the size) and ``grow`` (1: the pool may grow):
        ``{prefix}encoder-capacity``."""
        return f"{self.prefix}encoder-capacity"

    def creating(self) -> str:
        """The lock an API process holds while it admits a live stream by capacity and creates it
        (``serve --admission capacity``): ``{prefix}creating``."""
        return f"{self.prefix}creating"

    def active_jobs(self) -> str:
        """Set of the ids of queued and running jobs (and ``""``), counted and written by the
        script that creates a job (``--max-jobs``): ``{prefix}jobs:active``."""
        return f"{self.prefix}jobs:active"

    def jobs_index(self) -> str:
        """Sorted set of every job id, scored by creation time (epoch s): ``{prefix}jobs``."""
        return f"{self.prefix}jobs"


def new_job_id() -> str:
    """A fresh job id: ``job-YYYYmmdd-HHMMSS-`` and six random hex digits."""
    return time.strftime("job-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
