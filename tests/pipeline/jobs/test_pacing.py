"""The pacer alone: how many frames a read may bring, from the encoders' measured cost."""

from __future__ import annotations

import math

import pytest

from pipeline.jobs.pacing import Pacer


def learnt(cost: float, slots: int = 1, lead: float = 0.01, size: int = 512) -> Pacer:
    pacer = Pacer(slots=slots, slack_s=0.04)
    pacer.cost_seen(size, cost)
    pacer.lead = lead
    return pacer


def test_before_any_frame_is_measured_nothing_is_held_back() -> None:
    assert Pacer().room(512, 0.0) == math.inf
    assert Pacer().capacity(512) == math.inf


def test_a_slow_encoder_takes_one_frame_as_it_frees_and_none_before() -> None:
    p = learnt(0.3)
    assert p.room(512, 10.0) == 1  # idle: one frame (a second would wait 0.3 s in its queue)
    p.read_sent("r1", 1, 512, 10.0)
    assert p.room(512, 10.0) == 0  # the read on its way takes the encoder
    p.read_done("r1", 10.01)
    p.encode_sent("e1", 1, 512, 10.01)
    assert p.room(512, 10.05) == 0
    # The encode ends at about 10.31: a read sent within lead + slack of that arrives as it frees.
    assert p.room(512, 10.25) == 0
    assert p.room(512, 10.27) == 1
    p.encode_done("e1", 10.31)
    assert p.room(512, 10.31) == 1
    assert p.backlog_s(10.31) == 0


def test_more_encoders_take_more_frames_at_once() -> None:
    assert learnt(0.3, slots=3).room(512, 0.0) == 3
    assert learnt(0.3, slots=3).capacity(512) == pytest.approx(10.0)


def test_frames_that_cost_microseconds_are_not_held_back() -> None:
    p = learnt(2e-5, lead=0.04)
    assert p.room(512, 0.0) > 1000  # the null model: 100 streams are never paced


def test_pending_frames_of_another_size_share_the_same_encoder() -> None:
    p = learnt(0.2)
    p.cost_seen(1024, 0.8)
    assert p.room(512, 0.0) == 1
    assert p.room(512, 0.0, pending={1024: 1}) == 0  # the 1024 frame about to be read goes first
    assert p.room(1024, 0.0, pending={512: 1}) == 0


def test_cost_and_lead_are_moving_averages_of_what_was_measured() -> None:
    p = Pacer()
    p.cost_seen(512, 0.2)
    assert p.cost[512] == pytest.approx(0.2)  # the first sample is taken as it is
    p.cost_seen(512, 0.4)
    assert 0.2 < p.cost[512] < 0.4
    p.cost_seen(512, math.nan)  # ignored
    assert math.isfinite(p.cost[512])
    p.read_sent("r", 1, 512, 1.0)
    p.read_done("r", 1.05)
    assert p.lead == pytest.approx(0.05)
    p.read_sent("r2", 1, 512, 2.0)
    p.read_done("r2", None)  # given up: no measure
    assert p.lead == pytest.approx(0.05)


def test_work_that_was_given_up_is_forgotten() -> None:
    p = learnt(0.3)
    p.encode_sent("e", 4, 512, 0.0)
    assert p.room(512, 0.0) == 0
    p.forget()
    assert p.room(512, 0.0) == 1


def test_a_spread_cost_is_planned_above_its_mean() -> None:
    p = Pacer()
    for seconds in (0.10, 0.20, 0.10, 0.20):
        p.cost_seen(512, seconds)
    assert 0.1 < p.cost[512] < 0.2
    assert p.planned(512) > p.cost[512] + 0.05  # twice a spread of several hundredths
    assert p.capacity(512) == pytest.approx(1 / p.cost[512])  # capacity is the mean's


def test_a_size_not_measured_yet_is_estimated_from_a_measured_one_by_its_pixels() -> None:
    p = Pacer()
    assert p.estimate(512) is None and p.capacity(512, estimated=True) == math.inf
    p.cost_seen(512, 0.08)
    assert p.estimate(1024) == pytest.approx(0.32) and p.estimate(256) == pytest.approx(0.02)
    assert p.capacity(1024) == math.inf  # measured only, unless asked for an estimate
    assert p.capacity(1024, estimated=True) == pytest.approx(1 / 0.32)
    assert p.room(1024, 0.0) == 1  # a new size's first frames are paced, not let through unbounded
    p.cost_seen(768, 0.2)
    assert p.estimate(1024) == pytest.approx(0.2 * (1024 / 768) ** 2)  # from the nearest measured
