"""The reconciler over a real driver loop (in process, no Ray) and a real Redis: a job that nothing
runs is resumed within seconds and finishes exactly; the jobs the driver runs are left alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from pipeline.api.reconcile import Reconciler
from pipeline.jobs.driver import DriverOptions
from pipeline.ledger import JobStatus
from pipeline.streams import Keys
from tests.pipeline.jobs.conftest import Rig
from tests.pipeline.jobs.test_driver import reference


class DriverBackend:
    """The service's backend over an in-process driver turning on a thread; records submissions."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.submitted: list[str] = []
        self.thread = threading.Thread(target=rig.driver.run, kwargs={"until_idle": False}, daemon=True)
        self.thread.start()

    def held(self) -> set[str]:
        return self.rig.driver.held()

    def submit(self, job_id: str) -> None:
        self.submitted.append(job_id)
        self.rig.driver.submit(job_id)

    def close(self) -> None:
        self.rig.driver.stop()
        self.thread.join(5)
        self.rig.close()


@pytest.fixture
def backend(redis_client: redis.Redis, prefix: str) -> Iterator[DriverBackend]:
    made = DriverBackend(Rig(redis_client, Keys(prefix), DriverOptions(tick_s=0.01, control_poll_s=0.01)))
    yield made
    made.close()


def _until(check, timeout: float) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_job_that_nothing_runs_is_resumed_within_seconds_and_ends_exactly(backend: DriverBackend) -> None:
    r = backend.rig
    r.create("running", "file:150:0.01")  # submitted: the driver holds it
    # Left "running" by a driver that is gone (or whose final status could not be written).
    r.store.create("orphan", r.store.get("running").spec | {"source": "file:60"})
    r.store.set_status("orphan", JobStatus.RUNNING)
    reconciler = Reconciler(r.store, backend, every_s=0.2)
    reconciler.start()
    try:
        took = _until(lambda: "orphan" in backend.submitted, 5.0)
        assert took < 1.0
        _until(lambda: r.store.get("orphan").status.value == "succeeded", 20.0)
        _until(lambda: r.store.get("running").status.value == "succeeded", 20.0)
    finally:
        reconciler.stop()
    assert r.frames("orphan") == list(range(60)) and r.masks("orphan") == reference(60)
    assert r.frames("running") == list(range(150))
    assert "running" not in backend.submitted  # held by the driver: never submitted again
    assert backend.submitted.count("orphan") == 1
    assert reconciler.once() == []  # nothing unfinished is left
