"""The lifecycle's part in retention, on a real Redis: a job ends with its keys on a clock, and a
job taken up again (``samstream run`` with its id) keeps them for as long as its latest run says."""

from __future__ import annotations

import uuid

import pytest

from pipeline.ledger import JobStatus, JobStore
from pipeline.ledger.lifecycle import Ending, Lifecycle
from pipeline.prompts import Prompt, TrackSpec
from pipeline.spec import JobSpec
from pipeline.streams import EmbeddedRedis, Keys, connect

pytestmark = pytest.mark.integration

SPEC = JobSpec(source="clip.mp4", tracks=(TrackSpec(1, Prompt(points=((5.0, 5.0),), labels=(1,))),))


def test_an_interrupted_job_expires_unless_it_runs_again(redis_server: EmbeddedRedis) -> None:
    client = connect(redis_server.url)
    keys = Keys(f"life-{uuid.uuid4().hex[:8]}:")
    store = JobStore(client, keys)
    life = Lifecycle(store)
    assert life.admit("j", SPEC, keep_s=600) is not None
    assert life.begin("j") is not None
    assert life.end("j", SPEC, Ending.INTERRUPTED) is JobStatus.CANCELLED
    assert 590 < int(client.ttl(keys.job("j"))) <= 600  # type: ignore[arg-type]

    assert life.admit("j", SPEC, keep_s=None) is not None  # run again, now kept until deleted
    assert life.begin("j", again=True) is not None
    assert int(client.ttl(keys.job("j"))) == -1  # type: ignore[arg-type]
    assert life.end("j", SPEC, Ending.FINISHED) is JobStatus.SUCCEEDED
    assert int(client.ttl(keys.job("j"))) == -1 and store.get("j").keep_s is None  # type: ignore[arg-type]
    client.close()
