"""The encoder pool's plain parts: its config, and how one replica call serves several jobs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pipeline.config import ModelConfig
from pipeline.encoding.stage import SizedEncoders
from pipeline.errors import InvalidInputError
from pipeline.frames import EncodedFrame, Frame
from tests.fixtures.pool import local_pool
from workers.pool import EncoderReplica, PoolConfig


def _frame(index: int, h: int, w: int, job_id: str = "") -> Frame:
    return Frame(index, None, 0.0, np.zeros((h, w, 3), np.uint8), (h * 2, w * 2), {"decode": 0.01}, job_id)


class CountingEncoder:
    """Stands in for FrameEncoder: records each call's batch, returns frames tagged by index."""

    def __init__(self, size: int, calls: list[tuple[int, int]]) -> None:
        self.size, self.calls = size, calls

    def encode(self, frames: list[Frame]) -> list[EncodedFrame]:
        self.calls.append((self.size, len(frames)))
        if any(f.job_id == "bad" for f in frames):
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")
        return [
            EncodedFrame(f.index, f.pts, f.capture_time, f.original_size, "emb", {}, f.job_id) for f in frames
        ]


def _replica(calls: list[tuple[int, int]]) -> Any:
    replica = EncoderReplica.__new__(EncoderReplica)  # no model: the encoders are the stand-ins
    replica.model = ModelConfig(weights="null")
    replica.encoders = SizedEncoders(lambda size: None)  # type: ignore[arg-type, return-value]
    replica.encoders.encoder = lambda size: replica.encoders.encoders.setdefault(
        size, CountingEncoder(size, calls)
    )  # type: ignore[method-assign, assignment, arg-type]
    return replica


def test_one_call_per_image_size_for_all_jobs_and_results_back_in_request_order() -> None:
    calls: list[tuple[int, int]] = []
    requests = [
        [_frame(0, 256, 192), _frame(1, 256, 192)],  # job A, 256
        [_frame(7, 144, 256)],  # job B, 256 (another aspect)
        [_frame(3, 512, 384)],  # job C, 512
        [_frame(8, 256, 144), _frame(9, 256, 144)],  # job B again
    ]
    out = _replica(calls)._encode_requests(requests)
    assert sorted(calls) == [(256, 5), (512, 1)]  # frames of three jobs in one encoder call
    assert [[e.index for e in r] for r in out] == [[0, 1], [7], [3], [8, 9]]


def test_pool_config_carries_autoscaling_and_resources() -> None:
    opts = PoolConfig(
        min_replicas=1, max_replicas=6, gpus=0.5, cpus=2, downscale_delay_s=12
    ).deployment_options()
    auto = opts["autoscaling_config"]
    assert (auto["min_replicas"], auto["initial_replicas"], auto["max_replicas"]) == (1, 1, 6)
    assert auto["downscale_delay_s"] == 12
    assert opts["ray_actor_options"] == {"num_gpus": 0.5, "num_cpus": 2}


@pytest.mark.parametrize(
    "kwargs",
    [{"min_replicas": 3, "max_replicas": 2}, {"max_replicas": 0}, {"gpus": -1}, {"max_batch": 0}],
)
def test_bad_pool_configs_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        PoolConfig(**kwargs)


def test_a_failing_batch_is_encoded_job_by_job_and_only_the_failing_jobs_frames_are_marked() -> None:
    calls: list[tuple[int, int]] = []
    requests = [
        [_frame(0, 256, 192, "a"), _frame(1, 256, 192, "a")],
        [_frame(5, 256, 192, "bad"), _frame(0, 256, 192, "c"), _frame(6, 256, 192, "bad")],
        [_frame(1, 256, 192, "c")],
    ]
    out = _replica(calls)._encode_requests(requests)
    assert calls[0] == (256, 6)  # the batch as one call first
    assert [[(e.job_id, e.index) for e in r] for r in out] == [
        [("a", 0), ("a", 1)],
        [("bad", 5), ("c", 0), ("bad", 6)],
        [("c", 1)],
    ]  # every request answered, each in its own order
    for request in out:
        for e in request:
            if e.job_id == "bad":
                assert e.embedding is None
                assert (
                    e.error
                    == "internal error in the encoder: RuntimeError: CUDA error: an illegal memory access was encountered"
                )
            else:
                assert e.error is None and e.embedding == "emb"


class Loads:
    """A model loader that records the sizes it loads."""

    def __init__(self) -> None:
        self.loaded: list[int] = []

    def __call__(self, size: int) -> Any:
        self.loaded.append(size)
        return object()


def test_the_per_size_models_are_a_bounded_lru() -> None:
    load = Loads()
    encoders = SizedEncoders(load, max_sizes=2)
    for size in (256, 512, 256, 1024, 256, 512):
        encoders.encoder(size)
    # 1024 dropped 512 (256 was used since); 512 again dropped 1024.
    assert load.loaded == [256, 512, 1024, 512]
    assert list(encoders.encoders) == [256, 512]
    unbounded = SizedEncoders(Loads())
    for size in range(64, 64 * 20, 64):
        unbounded.encoder(size)
    assert len(unbounded.encoders) == 19
    with pytest.raises(InvalidInputError):
        SizedEncoders(Loads(), max_sizes=0)


# -- the real pool: Ray Serve's batching ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[Any]:
    """The encoder pool on a local Ray: one CPU replica of the null model, batches gathered for
    half a second so that requests sent together are encoded as one batch."""
    config = PoolConfig(min_replicas=1, max_replicas=1, gpus=0, cpus=0.5, max_batch=8, batch_wait_s=0.5)
    with local_pool(config) as handle:
        yield handle


@pytest.mark.integration
@pytest.mark.slow
def test_a_bad_request_in_a_pool_batch_fails_its_own_job_only(pool: Any) -> None:
    # Image size 100 is no model's (sizes are multiples of 16): loading it fails, as a size that
    # does not fit the device would. Before, the whole batch failed with it.
    good = [_frame(i, 64, 48, "good") for i in range(3)]
    bad = [_frame(i, 100, 75, "bad") for i in range(2)]
    mixed = [_frame(7, 64, 48, "other"), _frame(9, 100, 75, "bad")]
    pool.encode.remote([_frame(0, 64, 48, "warm")]).result(timeout_s=120)  # the replica is up
    started = time.monotonic()
    responses = [pool.encode.remote(r) for r in (good, bad, mixed)]  # one batch: sent together
    out = [r.result(timeout_s=60) for r in responses]
    assert time.monotonic() - started < 30
    assert [(e.job_id, e.index, e.error) for e in out[0]] == [("good", i, None) for i in range(3)]
    assert all(e.embedding is not None for e in out[0])
    message = "the encoder cannot encode this job's frames: image size must be a multiple of 16"
    assert [(e.job_id, e.index) for e in out[1]] == [("bad", 0), ("bad", 1)]
    assert all(e.error is not None and e.error.startswith(message) and e.embedding is None for e in out[1])
    assert [(e.job_id, e.index) for e in out[2]] == [("other", 7), ("bad", 9)]
    assert out[2][0].error is None and out[2][0].embedding is not None
    assert out[2][1].error is not None and out[2][1].error.startswith(message)


@pytest.mark.parametrize(
    "states", [{"RUNNING": 2, "STARTING": 1}, {"RUNNING": 2, "STOPPING": 3, "PENDING_MIGRATION": 1}]
)
def test_running_replicas_are_counted_from_serves_status(states: dict[str, int]) -> None:
    from ray.serve._private.common import ReplicaState

    from workers.pool import replicas_running

    assert replicas_running(states) == 2  # plain names, as Serve's status gives them now
    assert (
        replicas_running({ReplicaState(k): n for k, n in states.items() if k in ReplicaState.__members__})
        == 2
    )
