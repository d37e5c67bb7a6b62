"""The resume rule: where a job goes on after a stop, for the side that reads and the side that publishes.

A job's progress lives in Redis: the masks stream's newest entry is the last published frame, and
the state key holds the tracker's checkpoint (written with every n-th published frame, atomically
with it). A job that stops anywhere resumes from these two facts alone:

* a **file** job reads again from the frame after its checkpoint. Frames after the checkpoint and up
  to the last published one go through the tracker again without being published (the same model
  on the same frames gives the same state); later frames are published. Its output therefore
  equals that of a job that never stopped. Without a checkpoint the tracker starts from the
  job's prompts, which is the state before frame 0: every published frame is replayed.
* a **live** job cannot read its past: it goes on from the feed's present, numbering its frames
  after the last published one, with the checkpointed tracker state.

This module is the only place that says so: the driver asks :meth:`ResumePoint.read_after`, the
track decoder asks :meth:`ResumePoint.action`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Action(str, Enum):
    """What the track decoder does with a frame of a resumed job."""

    PUBLISH = "publish"  # never published: decode and publish
    REPLAY = "replay"  # published before, after the checkpoint: decode (tracker state), do not publish
    SKIP = "skip"  # at or before the checkpoint: the restored state already holds it


@dataclass(frozen=True)
class ResumePoint:
    """How far a job got.

    Attributes:
        last_published: index of the newest frame in the masks stream, or None before the first.
        checkpoint: index of the frame the stored tracker state follows, or None if none is stored.
        snapshot: that tracker state (see :meth:`pipeline.tracking.Tracker.snapshot`), or None.
    """

    last_published: int | None = None
    checkpoint: int | None = None
    snapshot: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def fresh(self) -> bool:
        """Nothing was published yet: the job starts from its first frame."""
        return self.last_published is None

    def read_after(self, live: bool) -> int | None:
        """The frame the job's source reads after (None: from the first frame).

        A file job: its checkpoint (None without one: from the start). A live job: the last
        published frame (the feed's present is numbered after it).
        """
        if self.last_published is None or live:
            return self.last_published
        if self.checkpoint is None:
            return None
        return min(self.checkpoint, self.last_published)

    def action(self, index: int) -> Action:
        """What to do with frame ``index`` of this job."""
        if self.last_published is None or index > self.last_published:
            return Action.PUBLISH
        if self.checkpoint is None or index > self.checkpoint:
            return Action.REPLAY
        return Action.SKIP

    def caught_up(self, tracker_last: int | None) -> bool:
        """Whether a tracker whose last stepped frame is ``tracker_last`` has replayed every
        published frame, so that the next frame may be published with its state."""
        if self.last_published is None or self.checkpoint == self.last_published:
            return True
        return tracker_last is not None and tracker_last >= self.last_published


def load(client: Any, keys: Any, job_id: str, with_snapshot: bool = True) -> ResumePoint:
    """The resume point of a job stored in Redis (``client`` a redis-py client, ``keys`` its Keys)."""
    from pipeline.ledger.sink import read_state, read_state_frame
    from pipeline.streams.publisher import Publisher

    last = Publisher(client, keys, job_id).last_published_frame()
    if last is None:
        return ResumePoint()
    if not with_snapshot:
        frame = read_state_frame(client, keys, job_id)
        return ResumePoint(last, frame)
    state = read_state(client, keys, job_id)
    if state is None:
        return ResumePoint(last)
    return ResumePoint(last, int(state["frame"]), state.get("tracker"))
