"""The encoder pool grows and shrinks to the live streams' demand its drivers publish (paced reads
keep about one call in flight per replica, so Serve's requests-in-flight measure alone would not
see it): the board in Ray's key-value store, and Serve's controller running the pool's policy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.pool import local_pool
from workers import demand
from workers.demand import DemandBoard, EncoderDemandPolicy, read_board
from workers.pool import APP, PoolConfig, PoolEncoders, replicas_running


class FakeKv:
    """Ray's internal key-value store's functions, in a dict (the plain tests run without Ray)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def put(self, key: bytes, value: bytes, overwrite: bool = True, namespace: str | None = None) -> None:
        assert namespace == demand.NAMESPACE
        self.data[key] = value

    def get(self, key: bytes, namespace: str | None = None) -> bytes | None:
        return self.data.get(key)

    def delete(self, key: bytes, namespace: str | None = None) -> None:
        self.data.pop(key, None)

    def list(self, prefix: str, namespace: str | None = None) -> list[bytes]:
        return [k for k in self.data if k.startswith(prefix.encode())]


@pytest.fixture
def kv(monkeypatch: pytest.MonkeyPatch) -> FakeKv:
    from ray.experimental import internal_kv

    fake = FakeKv()
    monkeypatch.setattr(internal_kv, "_internal_kv_put", fake.put)
    monkeypatch.setattr(internal_kv, "_internal_kv_get", fake.get)
    monkeypatch.setattr(internal_kv, "_internal_kv_del", fake.delete)
    monkeypatch.setattr(internal_kv, "_internal_kv_list", fake.list)
    return fake


def test_the_board_sums_the_drivers_fresh_figures_and_forgets_old_ones(kv: FakeKv) -> None:
    assert read_board() is None  # no driver says anything: Serve's own measure stands
    DemandBoard("a").publish(3)
    DemandBoard("b").publish(2)
    assert read_board() == 5
    now = time.time()
    assert read_board(now + demand.FRESH_S + 1) is None  # the drivers stopped saying it
    kv.data[b"encoder-demand/junk"] = b"not json"
    assert read_board(now + demand.FORGET_S + 1) is None
    assert kv.data == {}  # malformed and long-stale lines are deleted
    board = DemandBoard("c")
    board.publish(1)
    board.withdraw()
    assert read_board() is None


def test_the_policy_takes_the_larger_of_serves_answer_and_the_demand(
    kv: FakeKv, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray.serve.autoscaling_policy as serve_policy

    queued = {"replicas": 1.0}
    monkeypatch.setattr(
        serve_policy, "replica_queue_length_autoscaling_policy", lambda ctx: (queued["replicas"], {})
    )
    policy = EncoderDemandPolicy(every_s=0.0)
    assert policy(None) == (1.0, {})
    DemandBoard("a").publish(3)
    assert policy(None) == (3.0, {})  # paced live streams want 3 though one call is in flight
    queued["replicas"] = 4.5  # file jobs' requests queue up: Serve's own answer is larger
    assert policy(None) == (4.5, {})


@pytest.fixture(scope="module")
def ray_pool() -> Iterator[Any]:
    from ray import serve

    with local_pool(PoolConfig(min_replicas=1, max_replicas=2, gpus=0, cpus=0.5, downscale_delay_s=2)):
        yield serve


def _running(serve: Any) -> int:
    return replicas_running(serve.status().applications[APP].deployments["encoder"].replica_states)


def _wait_running(serve: Any, want: int, timeout: float) -> float:
    start = time.monotonic()
    while _running(serve) != want:
        assert time.monotonic() - start < timeout, f"{_running(serve)} replicas running, not {want}"
        time.sleep(0.5)
    return time.monotonic() - start


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_serve_grows_the_pool_to_the_published_demand_and_shrinks_it_after(ray_pool: Any) -> None:
    serve = ray_pool
    _wait_running(serve, 1, 120)
    time.sleep(3)
    assert _running(serve) == 1  # no request in flight, no demand: it stays at its minimum
    encoders = PoolEncoders(handle=object(), max_replicas=2, every_s=0.0)
    assert encoders.slots() == (1, True)  # what the driver's pacing plays its work onto
    encoders.demand(2)  # a driver's live streams need two replicas
    _wait_running(serve, 2, 90)
    assert encoders.slots() == (2, False)
    encoders.demand(0)  # they ended
    _wait_running(serve, 1, 90)
    encoders.shutdown()
    assert read_board() is None
