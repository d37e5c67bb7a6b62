"""Live streams that want more than the encoder can take: latency bounded, shares fair and stated.

The rig's encoder takes ``delay_s`` a frame (timed as the real one times its batches); feeds make
30 frames a second, far more than it takes. Without pacing, every live job keeps
``live_in_flight`` frames in flight and they wait in the encoder's queue (latency grows with the
number of streams); with it, a frame is read as the encoder frees.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import pytest

from pipeline.jobs.driver import DriverOptions
from pipeline.streams.control import Command

COST = 0.05  # seconds a frame in the rig's encoder: 20 frames a second in all


def run_for(r: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r.driver.turn(0.005)


def stop_all(r: Any, jobs: list[str]) -> None:
    for job in jobs:
        r.command(job, Command("stop"))
    r.run()


def latencies(r: Any, job: str, after: float) -> list[float]:
    return [s.publish_time - s.capture_time for s in r.recorder.seen.get(job, []) if s.capture_time >= after]


def feeds(r: Any, count: int, name: str = "cam", **spec: Any) -> list[str]:
    jobs = [f"{name}-{i}" for i in range(count)]
    for job in jobs:
        r.create(job, "feed:30", live=True, **spec)
    return jobs


def streams(rig: Any, count: int, paced: bool, **kw: Any) -> tuple[list[float], list[int]]:
    """``count`` feeds on a new rig (``kw``: its encoder and tracker delays; ``live_in_flight``),
    paced or not: the latencies of 3 s after a second's warm-up (the costs are learnt from the
    first frames), and each stream's frames in them."""
    in_flight = kw.pop("live_in_flight", 2)
    opts = DriverOptions(tick_s=0.01, control_poll_s=0.01, pacing=paced, live_in_flight=in_flight)
    r = rig(options=opts, **kw)
    jobs = feeds(r, count, name="paced" if paced else "unpaced")
    run_for(r, 1.0)
    t0 = time.time()
    run_for(r, 3.0)
    values = [v for j in jobs for v in latencies(r, j, t0)]
    counts = [len(latencies(r, j, t0)) for j in jobs]
    stop_all(r, jobs)
    return values, counts


def test_latency_stays_about_one_encode_however_many_streams_and_shares_are_even(rig) -> None:
    paced, counts = streams(rig, 6, True, encoder_delay_s=COST)
    unpaced, unpaced_counts = streams(rig, 6, False, encoder_delay_s=COST)

    # Unpaced, 6 streams x 2 frames wait in the encoder's queue: about 12 encodes of latency.
    assert statistics.median(unpaced) > 6 * COST, statistics.median(unpaced)
    # Paced, a frame waits for little more than its own encode (and the feed's frame interval).
    assert statistics.median(paced) < 3 * COST + 1 / 30, statistics.median(paced)
    assert statistics.median(paced) < statistics.median(unpaced) / 2
    # Pacing costs no throughput, and every stream gets about its share.
    assert sum(counts) >= 0.8 * sum(unpaced_counts), (counts, unpaced_counts)
    assert min(counts) >= 0.7 * sum(counts) / len(counts), counts


def test_weights_and_max_fps_set_a_streams_share(rig) -> None:
    r = rig(options=DriverOptions(tick_s=0.01, control_poll_s=0.01), encoder_delay_s=COST)
    r.create("heavy", "feed:30", live=True, weight=3.0)
    r.create("light", "feed:30", live=True)
    r.create("capped", "feed:30", live=True, max_fps=2.0)
    run_for(r, 1.0)
    t0 = time.time()
    run_for(r, 4.0)
    heavy, light, capped = (len(latencies(r, j, t0)) for j in ("heavy", "light", "capped"))
    stop_all(r, ["heavy", "light", "capped"])
    assert capped <= 2.0 * 4.0 + 2, capped  # at most its max_fps
    assert capped >= 4, capped
    assert 2.0 <= heavy / light <= 4.5, (heavy, light)


def test_a_file_job_beside_overloaded_streams_goes_on_without_pushing_them_back(rig) -> None:
    r = rig(options=DriverOptions(tick_s=0.01, control_poll_s=0.01), encoder_delay_s=COST)
    jobs = feeds(r, 4)
    r.create("file", "file:2000")
    run_for(r, 1.0)
    t0 = time.time()
    done0 = len(r.frames("file"))
    run_for(r, 3.0)
    live = [v for j in jobs for v in latencies(r, j, t0)]
    filed = len(r.frames("file")) - done0
    stop_all(r, [*jobs, "file"])
    assert filed >= 3, filed  # it never starves (a quarter of a stream's share)
    assert statistics.median(live) < 3 * COST + 1 / 30 + 4 * COST  # a file batch may be encoding


def test_a_streams_rates_are_in_its_record(rig) -> None:
    opts = DriverOptions(tick_s=0.01, control_poll_s=0.01, drops_every_s=0.5)
    r = rig(options=opts, encoder_delay_s=COST)
    jobs = feeds(r, 3)
    run_for(r, 3.0)
    infos = [r.store.get(j) for j in jobs]
    capacity = r.store.capacity()  # what admission reads: 1 / COST frames a second at 256
    stop_all(r, jobs)
    assert capacity is not None and set(capacity[0]) == {256} and capacity[1] is False
    assert capacity[2] is not None and capacity[2] > 0  # the tracker hosts' track-frames a second
    assert 12.0 <= capacity[0][256] <= 25.0, capacity
    for info in infos:
        assert info.requested_fps == 30.0
        assert info.delivered_fps is not None and 2.0 <= info.delivered_fps <= 12.0, info.delivered_fps
        assert info.capacity_bound
        assert info.dropped > 0


def test_streams_the_encoder_keeps_up_with_are_not_capacity_bound(rig) -> None:
    opts = DriverOptions(tick_s=0.01, control_poll_s=0.01, drops_every_s=0.5)
    r = rig(options=opts, encoder_delay_s=0.002)
    r.create("cam", "feed:10", live=True)
    run_for(r, 3.0)
    info = r.store.get("cam")
    stop_all(r, ["cam"])
    assert info.delivered_fps is not None and info.delivered_fps >= 7.0, info.delivered_fps
    assert not info.capacity_bound


def test_the_live_streams_demand_on_the_encoders_is_said_each_window(rig) -> None:
    """Paced reads keep about one call in flight per encoder, so the driver says what the streams
    need: each one's rate at its size's cost, over the share of time an encoder can be busy."""
    r = rig(options=DriverOptions(tick_s=0.01, control_poll_s=0.01), encoder_delay_s=COST)
    jobs = feeds(r, 3)  # 3 x 30 frames a second at 0.05 s a frame: 4.5 encoders' work
    run_for(r, 3.0)
    demanded = r.transport.demanded
    # ceil(4.5 / 0.85) = 6 at the stub's 0.05 s; from the cost measured (a loaded machine stretches it)
    work = 3 * 30 * (r.driver.pacer.estimate(256) or 0.0)
    assert demanded and abs(demanded[-1] - work / 0.85) <= 1, (demanded, work)
    stop_all(r, jobs)
    run_for(r, 1.2)
    assert r.transport.demanded[-1] == 0  # said once after the last stream has gone
    said = len(r.transport.demanded)
    run_for(r, 1.2)
    assert len(r.transport.demanded) == said  # and then no more


def test_an_auto_streams_demand_is_its_target_not_its_feeds_rate(rig) -> None:
    from pipeline.spec import AutoSize

    r = rig(options=DriverOptions(tick_s=0.01, control_poll_s=0.01), encoder_delay_s=COST)
    r.create("auto", "feed:30", live=True, auto_size=AutoSize((256,), target_fps=5.0))
    run_for(r, 2.5)
    # 5 x 0.05 s = 0.25 encoders: 1, not the feed's 30 x 0.05 = 1.5 (2); from the cost measured
    cost = r.driver.pacer.estimate(256) or 0.0
    demanded = r.transport.demanded[-1]
    assert abs(demanded - 5 * cost / 0.85) <= 1 and demanded < math.ceil(30 * cost / 0.85), (demanded, cost)
    stop_all(r, ["auto"])


def test_a_tracker_host_that_cannot_keep_up_holds_frames_back_not_in_its_queue(rig) -> None:
    """The encoder is fast; the tracker host takes 0.05 s a frame (20 frames a second in all, far
    less than 4 feeds of 30 send). Paced by the encoders alone, each stream's frames would wait in
    the tracker host's queue: latency about streams × frames in flight × its cost."""
    slow = 0.05
    rig_kw = {"encoder_delay_s": 0.002, "tracker_delay_s": slow, "live_in_flight": 3}
    paced, counts = streams(rig, 4, True, **rig_kw)
    unpaced, unpaced_counts = streams(rig, 4, False, **rig_kw)

    # Unpaced, 4 streams x 3 frames wait at the tracker host: about 12 of its frames of latency.
    assert statistics.median(unpaced) > 6 * slow, statistics.median(unpaced)
    # Paced by the host's load, a frame waits for about one call of the host's.
    assert statistics.median(paced) < 4 * slow + 1 / 30, statistics.median(paced)
    # It costs no throughput, and the streams share the host evenly.
    assert sum(counts) >= 0.8 * sum(unpaced_counts), (counts, unpaced_counts)
    assert min(counts) >= 0.7 * sum(counts) / len(counts), counts


def test_tracker_load_measures_each_hosts_cost_and_backlog() -> None:
    from pipeline.jobs.pacing import TrackerLoad

    load = TrackerLoad()
    assert not load.late(0, coming=100, reach_s=0.0, now=0.0)  # nothing measured: no limit
    load.sent("a", 0, 2, now=0.0)
    load.sent("b", 0, 2, now=0.0)  # queued behind "a" on the same host
    load.done("a", now=0.2)  # 0.1 s a frame
    load.done("b", now=0.4)  # from a's return: 0.1 s a frame again, not 0.2
    assert load.cost[0] == pytest.approx(0.1) and load.call_frames[0] == 2.0
    load.sent("c", 0, 4, now=1.0)
    assert load.backlog_s(0, coming=2, now=1.1) == pytest.approx(0.5)  # 6 frames less 0.1 s done
    assert load.late(0, coming=2, reach_s=0.2, now=1.1)  # 0.5 > 0.2 + one call (0.2)
    assert not load.late(0, coming=0, reach_s=0.2, now=1.1)  # 0.3 ≤ 0.4
    assert not load.late(1, coming=50, reach_s=0.0, now=1.1)  # another host: its own measure
    load.done("c", None)  # failed: no measure, and no longer held
    assert load.backlog_s(0, coming=0, now=1.2) == 0.0


def test_tracker_load_measures_the_track_frames_its_hosts_take() -> None:
    from pipeline.jobs.pacing import TrackerLoad

    load = TrackerLoad()
    assert load.track_frames([0, 1]) is None  # nothing measured
    load.sent("a", 0, 2, now=0.0, tracks=10)  # 2 frames of 5 tracks each
    load.done("a", now=0.5)  # 0.05 s a track-frame: 20 a second
    load.sent("b", 1, 1, now=0.0)  # its tracks not said: no track measure
    load.done("b", now=0.1)
    assert load.track_cost == {0: pytest.approx(0.05)}
    assert load.track_frames([0, 1]) == pytest.approx(20.0)  # host 1 not measured: adds nothing
    load.sent("c", 1, 1, now=1.0, tracks=2)
    load.done("c", now=1.1)  # 0.05 s a track-frame on host 1 too
    assert load.track_frames([0, 1]) == pytest.approx(40.0) and load.track_frames([1]) == pytest.approx(20.0)


def test_a_split_jobs_frames_wait_for_the_host_of_any_of_its_shares(rig) -> None:
    """A split job's frame goes to every host that follows a share of its tracks: each one's calls
    are measured, and a backlog on any of them holds the job's reads back, not only its owner's."""
    opts = DriverOptions(tick_s=0.01, control_poll_s=0.01, live_in_flight=2, tracks_per_tracker=2)
    r = rig(options=opts, encoder_delay_s=0.002)
    r.create("split", "feed:30", live=True, n_tracks=4)
    r.create("whole", "feed:30", live=True, n_tracks=2)
    run_for(r, 1.5)
    split, whole = r.driver.jobs["split"], r.driver.jobs["whole"]
    (part,) = [d for d, _ in split.parts]
    assert part != split.decoder and whole.decoder not in (part, split.decoder)
    load = r.driver.trackers
    assert load.cost.get(part, 0) > 0 and load.cost.get(split.decoder, 0) > 0, load.cost
    # (Each answer is also the hosts' own load at ``now``: the other job's must not move.)
    now = time.monotonic()
    whole_late = r.driver._tracker_late(whole, {}, now)
    # Frames on their way to the part's host only: the split job waits, the other one does not.
    coming = {part: 1000}
    assert r.driver._tracker_late(split, coming, now)
    assert r.driver._tracker_late(whole, coming, now) == whole_late
    # The same for work the part's host holds: a call sent and not returned.
    load.sent("stuck", part, 1000, now)
    assert r.driver._tracker_late(split, {}, now)
    assert r.driver._tracker_late(whole, {}, now) == whole_late
    load.done("stuck", None)
    stop_all(r, ["split", "whole"])
