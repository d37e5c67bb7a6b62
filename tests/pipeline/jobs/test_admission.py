"""Admission by capacity: fair shares as the driver's pacing gives them, and who is refused."""

from __future__ import annotations

import pytest

from pipeline.jobs.admission import Capacity, Demand, admit, fair_shares


def test_shares_are_even_or_by_weight_and_capped_streams_leave_the_rest() -> None:
    assert fair_shares([Demand(1, 512)] * 4, {512: 8.0}) == pytest.approx([2.0] * 4)
    assert fair_shares([Demand(3, 512), Demand(1, 512)], {512: 8.0}) == pytest.approx([6.0, 2.0])
    # one stream takes at most 1 fps: the other two share the remaining 7
    shares = fair_shares([Demand(1, 512, cap=1.0), Demand(1, 512), Demand(1, 512)], {512: 8.0})
    assert shares == pytest.approx([1.0, 3.5, 3.5])
    # every stream capped below its share: each gets its cap, the encoders are not full
    assert fair_shares([Demand(1, 512, cap=1.0)] * 2, {512: 8.0}) == pytest.approx([1.0, 1.0])
    # a 1024 frame costs four 512 ones: the same frames a second each, paid in encoder time
    shares = fair_shares([Demand(1, 512), Demand(1, 1024)], {512: 8.0, 1024: 2.0})
    assert shares == pytest.approx([1.6, 1.6])
    assert fair_shares([], {512: 8.0}) == []


def test_a_stream_that_would_push_a_share_below_the_floor_is_refused_naming_capacity_and_share() -> None:
    capacity = Capacity({512: 6.0})
    running = [Demand(1, 512)] * 2
    assert admit(Demand(1, 512), running, capacity, floor_fps=2.0) is None  # 3 streams: 2 fps each
    refusal = admit(Demand(1, 512), [*running, Demand(1, 512)], capacity, floor_fps=2.0)
    assert refusal is not None and refusal.share_fps == pytest.approx(1.5)
    assert refusal.capacity_fps == 6.0
    text = refusal.message()
    assert "6.00 frames a second at 512 px" in text and "1.50 fps" in text and "--min-stream-fps" in text
    # a heavy newcomer that would starve the others is refused too
    assert admit(Demand(10, 512), running, capacity, floor_fps=1.0) is not None


def test_streams_that_want_little_leave_room_and_a_growing_pool_or_no_measure_admits() -> None:
    capacity = Capacity({512: 6.0})
    slow = [Demand(1, 512, cap=0.5)] * 4  # 2 fps in all
    assert admit(Demand(1, 512), slow, capacity, floor_fps=4.0) is None
    # a stream capped below the floor is not starved at its cap
    assert admit(Demand(1, 512, cap=0.5), [Demand(1, 512)] * 5, capacity, floor_fps=1.0) is None
    many = [Demand(1, 512)] * 10
    assert admit(Demand(1, 512), many, Capacity({512: 6.0}, can_grow=True), 2.0) is None
    assert admit(Demand(1, 512), many, None, 2.0) is None
    assert admit(Demand(1, 1024), many, capacity, 2.0) is None  # nothing measured at 1024 yet


def test_the_tracker_hosts_bind_streams_of_many_tracks_while_the_encoders_have_room() -> None:
    # encoders: 8 frames a second at 512; tracker hosts: 20 track-frames a second
    light = [Demand(1, 512, tracks=1)] * 4
    assert fair_shares(light, {512: 8.0}, 20.0) == pytest.approx([2.0] * 4)  # the encoders bind
    heavy = [Demand(1, 512, tracks=5)] * 4  # 20 track-frames a frame of all four: 1 fps each
    assert fair_shares(heavy, {512: 8.0}, 20.0) == pytest.approx([1.0] * 4)
    assert fair_shares(heavy, {512: 8.0}) == pytest.approx([2.0] * 4)  # trackers not measured
    # a heavy stream capped low leaves tracker time to the others
    shares = fair_shares(
        [Demand(1, 512, cap=0.5, tracks=10), *[Demand(1, 512, tracks=5)] * 3], {512: 8.0}, 20.0
    )
    assert shares == pytest.approx([0.5, 1.0, 1.0, 1.0])

    capacity = Capacity({512: 8.0}, track_frames=20.0)
    assert admit(Demand(1, 512, tracks=1), light, capacity, floor_fps=1.5) is None  # 1.6 fps each
    refusal = admit(Demand(1, 512, tracks=5), heavy[:3], capacity, floor_fps=1.5)
    assert refusal is not None and refusal.share_fps == pytest.approx(1.0)
    text = refusal.message()
    assert "tracker hosts take about 20.0 track-frames a second" in text and "1.00 fps" in text, text
    # where the encoders bind, the refusal names them, as before
    refusal = admit(Demand(1, 512), [Demand(1, 512)] * 7, capacity, floor_fps=1.5)
    assert refusal is not None and "8.00 frames a second at 512 px" in refusal.message()
