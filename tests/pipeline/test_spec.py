"""The job spec: a live feed's share (weight, max_fps) is checked and survives the round trip."""

from __future__ import annotations

import math

import pytest

from pipeline.errors import InvalidInputError
from pipeline.prompts import Prompt, TrackSpec
from pipeline.spec import JobSpec

TRACKS = (TrackSpec(1, Prompt(points=((5.0, 5.0),), labels=(1,))),)


def test_weight_and_max_fps_round_trip() -> None:
    spec = JobSpec(source="udp://127.0.0.1:5000", tracks=TRACKS, live=True, weight=3.0, max_fps=2.5)
    again = JobSpec.from_dict(spec.to_dict())
    assert (again.weight, again.max_fps) == (3.0, 2.5)
    plain = JobSpec(source="clip.mp4", tracks=TRACKS).to_dict()
    assert "weight" not in plain and "max_fps" not in plain  # old records read the same
    assert (JobSpec.from_dict(plain).weight, JobSpec.from_dict(plain).max_fps) == (1.0, None)


@pytest.mark.parametrize(
    ("weight", "max_fps"),
    [(0.0, None), (-1.0, None), (math.nan, None), (1e6, None), (1.0, 0.0), (1.0, math.inf)],
)
def test_a_share_out_of_bounds_is_a_clear_error(weight: float, max_fps: float | None) -> None:
    with pytest.raises(InvalidInputError, match=r"weight|max_fps"):
        JobSpec(source="clip.mp4", tracks=TRACKS, weight=weight, max_fps=max_fps)
