"""The encoder pool's plain parts: its config, and how one replica call serves several jobs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipeline.config import ModelConfig
from pipeline.encoding import SizedEncoders
from pipeline.errors import InvalidInputError
from pipeline.frames import EncodedFrame, Frame
from workers.pool import EncoderReplica, PoolConfig


def _frame(index: int, h: int, w: int) -> Frame:
    return Frame(index, None, 0.0, np.zeros((h, w, 3), np.uint8), (h * 2, w * 2), {"decode": 0.01})


class CountingEncoder:
    """Stands in for FrameEncoder: records each call's batch, returns frames tagged by index."""

    def __init__(self, size: int, calls: list[tuple[int, int]]) -> None:
        self.size, self.calls = size, calls

    def encode(self, frames: list[Frame]) -> list[EncodedFrame]:
        self.calls.append((self.size, len(frames)))
        return [EncodedFrame(f.index, f.pts, f.capture_time, f.original_size, None, {}) for f in frames]  # type: ignore[arg-type]


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
