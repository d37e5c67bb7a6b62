"""``image_size: auto`` streams through the driver: overloaded, they move to a size that keeps
their target rate, say so in events, and every entry names the size it was made at."""

from __future__ import annotations

import time
from typing import Any

from pipeline.jobs.driver import DriverOptions
from pipeline.spec import AutoSize
from pipeline.streams import read_events
from pipeline.streams.control import Command

from .test_driver_pacing import run_for, stop_all

COST = 0.01  # seconds a 256 px frame costs the rig's encoder; 1024 px: 16 times as much
LADDER = AutoSize((256, 512, 768, 1024), target_fps=5.0)


def size_events(r: Any, job: str) -> list[str]:
    return [e.detail or "" for e in read_events(r.client, r.keys, job) if e.type == "image_size"]


def entries(r: Any, job: str) -> list[tuple[int, float, int | None]]:
    from pipeline.streams import MaskReader

    return [
        (e.frame_index, e.capture_time, e.image_size) for _, e in MaskReader(r.client, r.keys, job).read()
    ]


def test_overloaded_auto_streams_move_down_to_keep_their_target(rig) -> None:
    r = rig(options=DriverOptions(tick_s=0.01, control_poll_s=0.01), encoder_delay_s=COST, per_pixel=True)
    jobs = [f"cam-{i}" for i in range(4)]
    for job in jobs:
        r.create(job, "feed:30", live=True, image_size=1024, auto_size=LADDER)
    # at 1024 four streams get 1.6 fps each; at 512, 6.2 (one at 768 beside three: 4.8, too little)
    run_for(r, 5.0)
    t0 = time.time()
    run_for(r, 3.0)
    seen = {job: entries(r, job) for job in jobs}
    stop_all(r, jobs)

    for job in jobs:
        assert size_events(r, job) == [
            "1024 -> 512: at 1024 the encoders' share would be below the target 5 fps"
        ], size_events(r, job)
        sizes = [size for _, _, size in seen[job]]
        assert sizes[0] == 1024 and sizes[-1] == 512, sizes  # every entry names its size
        assert sizes == sorted(sizes, reverse=True)  # one change, no flapping back
        late = [1 for _, t, size in seen[job] if t >= t0]
        assert len(late) / 3.0 >= 0.9 * LADDER.target_fps, (job, len(late))
        info = r.store.get(job)
        assert info.image_size == 512 and info.delivered_fps is not None


def test_a_fixed_size_stream_keeps_its_size_and_entries_say_it(rig) -> None:
    r = rig(options=DriverOptions(tick_s=0.01, control_poll_s=0.01), encoder_delay_s=COST, per_pixel=True)
    r.create("fixed", "feed:30", live=True, image_size=512)
    run_for(r, 1.5)
    r.command("fixed", Command("stop"))
    r.run()
    assert size_events(r, "fixed") == []
    assert {size for _, _, size in entries(r, "fixed")} == {512}
