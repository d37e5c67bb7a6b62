"""The driver's job loop without Ray: many jobs per call, order, backpressure, stop, resume, rewind."""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.frames import EncodedFrame, FrameResult
from pipeline.jobs.driver import DriverOptions
from pipeline.ledger.resume import ResumePoint, load
from pipeline.prompts import Prompt
from pipeline.streams.control import Command
from pipeline.tracking.host import TrackerHost
from pipeline.tracking.stage import TrackDecoder
from tests.pipeline.jobs.conftest import SIZE, stub, tracks


class _Memory:
    def __init__(self) -> None:
        self.results: dict[int, FrameResult] = {}

    def publish_many(self, items: Sequence[tuple[FrameResult, Mapping[str, Any] | None]]) -> list[bool]:
        for result, _ in items:
            self.results[result.frame_index] = result
        return [True] * len(items)

    def resume_point(self) -> ResumePoint:
        return ResumePoint()

    def event(
        self, type: str, *, frame: int | None, track: int | None, detail: str | None, data: Any = None
    ) -> None:
        pass


def reference(frames: int, stride: int = 1, n_tracks: int = 2) -> dict[int, list[tuple[int, str, str]]]:
    """Masks of one job decoded alone, frame after frame, with no driver."""
    s, sink = stub(), _Memory()
    decoder = TrackDecoder(tracks(n_tracks), s, sink, stride=stride)
    decoder.process(
        [EncodedFrame(t, t / 30, 0.0, SIZE, s.embedding(t), {}) for t in range(0, frames, stride)]
    )
    return {f: [(m.track_id, m.state, m.rle["counts"]) for m in r.tracks] for f, r in sink.results.items()}


def test_many_jobs_share_each_call_and_each_gets_exactly_its_frames(rig) -> None:
    r = rig()
    for i in range(4):
        r.create(f"file-{i}", f"file:{30 + i}")
    r.create("strided", "file:40", stride=3)
    r.run()
    for i in range(4):
        assert r.frames(f"file-{i}") == list(range(30 + i))
        assert r.masks(f"file-{i}") == reference(30 + i)
        assert r.store.get(f"file-{i}").status.value == "succeeded"
        assert r.store.get(f"file-{i}").frames_total == 30 + i
    assert r.frames("strided") == list(range(0, 40, 3))
    assert r.masks("strided") == reference(40, stride=3)
    # One call carried several jobs' frames: reads, encodes and decodes were shared.
    assert max(len(set(b)) for b in r.encoder.batches) >= 4
    reads = [n for kind, n in r.transport.calls if kind == "read"]
    assert max(reads) == 5
    assert sum(1 for kind, _ in r.transport.calls if kind == "decode") < sum(30 + i for i in range(4)) / 4


def test_a_file_job_has_at_most_its_window_in_flight(rig) -> None:
    opts = DriverOptions(batch_frames=4, file_window=8, tick_s=0.01, control_poll_s=0.01)
    r = rig(options=opts, encoder_delay_s=0.02)
    r.create("slow", "file:60")
    most = 0

    def watch() -> bool:
        nonlocal most
        job = r.driver.jobs.get("slow")
        most = max(most, job.in_flight if job else 0)
        return False

    r.run(until=watch)
    assert 4 <= most <= 8
    assert r.frames("slow") == list(range(60))  # backpressure: nothing dropped


def test_live_jobs_go_first_and_every_stream_gets_its_share(rig) -> None:
    # Capacity for 6 frames in flight, 50 ms an encoder call: 4 feeds at 50 fps and a file job
    # want more than that.
    opts = DriverOptions(max_frames_in_flight=6, live_in_flight=1, tick_s=0.01, control_poll_s=0.01)
    r = rig(options=opts, encoder_delay_s=0.05)
    for i in range(4):
        r.create(f"cam-{i}", "feed:50", live=True)
    r.create("file", "file:2000")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        r.driver.turn(0.005)
    counts = [len(r.frames(f"cam-{i}")) for i in range(4)]
    assert min(counts) >= 0.5 * max(counts) and min(counts) > 5, counts
    for i in range(4):  # the newest frame each time: gaps, increasing, drops counted
        frames = r.frames(f"cam-{i}")
        assert frames == sorted(set(frames))
        assert r.driver.jobs[f"cam-{i}"].dropped > 0
    assert 0 < len(r.frames("file")) < 2000  # it had the capacity the feeds left
    for i in range(4):
        r.command(f"cam-{i}", Command("stop"))
    r.command("file", Command("stop"))
    r.run()
    assert all(r.store.get(f"cam-{i}").status.value == "succeeded" for i in range(4))
    assert r.store.get("file").status.value == "cancelled"
    assert int(r.client.hget(r.keys.job("cam-0"), "dropped") or 0) > 0


def test_stop_ends_a_file_job_before_its_end_and_running_it_again_resumes_exactly(rig) -> None:
    r = rig(encoder_delay_s=0.005)
    r.create("job", "file:200:0.01")  # a frame every 10 ms
    r.run(until=lambda: len(r.frames("job")) >= 40)
    r.command("job", Command("stop"))
    r.run()
    assert r.store.get("job").status.value == "cancelled"
    done = r.frames("job")
    assert 40 <= len(done) < 200 and done == list(range(len(done)))
    again = rig()  # a new driver, same Redis: run again, as `samstream run` with the job's id
    again.driver.submit("job", again=True)
    again.run()
    assert again.frames("job") == list(range(200))
    assert again.masks("job") == reference(200)
    assert again.store.get("job").status.value == "succeeded"


def test_an_interrupted_driver_resumes_from_the_checkpoint_with_the_same_output(rig) -> None:
    r = rig()
    r.create("job", "file:120:0.002")
    r.run(until=lambda: len(r.frames("job")) >= 35)
    r.driver.interrupt()
    assert r.store.get("job").status.value == "cancelled"
    again = rig()
    again.driver.submit("job", again=True)
    again.run()
    assert again.frames("job") == list(range(120))
    assert again.masks("job") == reference(120)


class _Watched(TrackerHost):
    """A tracker host that notes, per job, the first frame it was given and the rewinds it asked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first: dict[str, tuple[int, ResumePoint]] = {}
        self.rewinds: dict[str, list[int | None]] = {}

    def process(self, setups, frames, parts=None):  # type: ignore[no-untyped-def]
        for f in frames:
            if f.job_id not in self.first:
                self.first[f.job_id] = (f.index, load(self.client, self.keys, f.job_id, with_snapshot=False))
        replies = super().process(setups, frames, parts)
        for r in replies:
            if r.rewind is not None:
                self.rewinds.setdefault(r.job_id, []).append(r.rewind[0])
        return replies


def test_a_restarted_tracker_host_rewinds_file_jobs_to_their_checkpoint(rig) -> None:
    r = rig()
    r.create("a", "file:90:0.003")
    r.create("b", "file:70:0.003")
    r.run(until=lambda: len(r.frames("a")) >= 25)
    # The tracker host's process dies: a fresh one (no tracker state) takes its calls.
    fresh = _Watched(lambda size, n: stub(), r.client, r.keys, checkpoint_every=10)
    r.transport.tracker_hosts[0] = fresh
    r.run()
    for job, n in (("a", 90), ("b", 70)):
        assert r.frames(job) == list(range(n))
        assert r.masks(job) == reference(n)
        first, point = fresh.first[job]
        if point.checkpoint == point.last_published == first - 1:
            assert job not in fresh.rewinds  # it went on right after the checkpoint: nothing to replay
        else:  # frames after the checkpoint were missing: read again after it
            assert fresh.rewinds[job][0] == point.checkpoint, (first, point, fresh.rewinds)


def test_track_commands_apply_from_a_later_frame(rig) -> None:
    r = rig()
    r.create("cam", "feed:100", live=True)
    r.run(until=lambda: len(r.frames("cam")) >= 5)
    r.command("cam", Command("add", 3, Prompt(box=(200, 20, 260, 80))))
    r.run(until=lambda: any(len(t) == 3 for t in r.masks("cam").values()))
    r.command("cam", Command("remove", 1))
    r.run(until=lambda: list(r.masks("cam").values())[-1][0][0] == 2)
    r.command("cam", Command("stop"))
    r.run()
    ids = [[t for t, _, _ in m] for m in r.masks("cam").values()]
    assert ids[0] == [1, 2] and [1, 2, 3] in ids and ids[-1] == [2, 3]
    kinds = [e["type"] for _, e in r.client.xrange(r.keys.events("cam"))]
    assert "track_added" in kinds and "track_removed" in kinds and "stop_requested" in kinds


def test_a_source_that_fails_ends_its_job_and_no_other(rig) -> None:
    r = rig()
    r.opener.fail_at["file:50"] = 20
    r.create("bad", "file:50")
    r.create("missing", "missing:clip.mp4")
    r.create("good", "file:50#other")
    r.run()
    assert r.store.get("bad").status.value == "failed"
    assert "frame 20" in (r.store.get("bad").error or "")
    assert r.frames("bad") == list(range(20))
    assert r.store.get("missing").status.value == "failed"
    assert "no such file" in (r.store.get("missing").error or "")
    assert r.frames("good") == list(range(50))


def test_frames_whose_encode_failed_are_counted_and_fail_their_job_only(rig) -> None:
    from prometheus_client import CollectorRegistry

    from pipeline.metrics import PrometheusMetrics

    registry = CollectorRegistry()
    r = rig(metrics=PrometheusMetrics(registry))
    r.encoder.fail_jobs.add("bad")
    r.create("bad", "file:30")
    r.create("good", "file:30#other")
    r.run()
    assert r.store.get("bad").status.value == "failed" and "encoder: boom" in (r.store.get("bad").error or "")
    assert r.frames("bad") == [] and r.frames("good") == list(range(30))
    failed = registry.get_sample_value("samstream_frames_failed_total")
    published = registry.get_sample_value("samstream_frames_published_total")
    assert failed is not None and 1 <= failed <= 24, failed  # the bad job's frames in flight (its window)
    assert published == 30


def test_a_prompt_outside_the_frame_fails_the_job_when_its_source_opens(rig) -> None:
    from pipeline.prompts import TrackSpec
    from pipeline.spec import JobSpec

    r = rig()
    spec = JobSpec(source="file:10", tracks=(TrackSpec(1, Prompt(box=(10, 10, 900, 900))),), image_size=256)
    r.store.create("outside", spec.to_dict())
    r.driver.submit("outside")
    r.run()
    info = r.store.get("outside")
    assert info.status.value == "failed" and "outside" in (info.error or "")


def test_jobs_are_spread_over_hosts_more_start_when_full_and_stop_when_idle(rig) -> None:
    opts = DriverOptions(
        streams_per_host=3,
        tracks_per_tracker=4,
        tick_s=0.01,
        control_poll_s=0.01,
        host_idle_s=0.2,
        drops_every_s=0.05,
    )
    r = rig(options=opts, hosts=2)
    for i in range(7):
        r.create(f"j{i}", f"file:12#{i}")
    r.run()
    calls = [kind for kind, _ in r.transport.calls]
    assert len(r.transport.hosts) >= 2
    for i in range(7):
        assert r.frames(f"j{i}") == list(range(12))
    placed = {r.client.hget(r.keys.job(f"j{i}"), "source_host") for i in range(7)}
    assert len(placed) == 3  # 2 hosts of 3 jobs, then a third
    trackers = {r.client.hget(r.keys.job(f"j{i}"), "tracker_host") for i in range(7)}
    assert len(trackers) == 4  # 2 tracks a job, 4 a tracker host
    deadline = time.monotonic() + 5
    while len(r.transport.hosts) > 2 or len(r.transport.decoders) > 1:
        assert time.monotonic() < deadline, (r.transport.hosts, r.transport.decoders)
        r.driver.turn(0.01)
    assert r.transport.hosts == [0, 1]  # the hosts it started with stay
    assert "read" in calls


def test_streams_coming_and_going_by_the_hundred_leave_nothing_behind(rig) -> None:
    import threading

    r = rig(options=DriverOptions(tick_s=0.01, control_poll_s=0.01, streams_per_host=64))
    threads = 0
    for wave in range(4):
        jobs = [r.create(f"w{wave}-{i}", "feed:20", live=True) for i in range(100)]
        r.run(until=lambda jobs=jobs: all(r.client.xlen(r.keys.masks(j)) for j in jobs), timeout=60)
        for j in jobs:
            r.command(j, Command("stop"))
        r.run(timeout=60)
        assert all(r.store.get(j).status.value == "succeeded" for j in jobs)
        time.sleep(0.3)  # the feeds' threads and the threads that close sources end
        threads = threads or threading.active_count()  # after the first wave: the stages' threads
    assert not r.driver.jobs and not r.driver._reads and not r.driver._decoding
    assert all(not lane for lane in r.driver._lanes.values())
    assert all(host.jobs == 0 for host in r.transport.source_hosts.values())
    assert all(host.jobs == 0 for host in r.transport.tracker_hosts.values())
    assert not r.driver.control._last
    assert threading.active_count() <= threads


def test_a_job_with_more_tracks_than_a_tracker_host_follows_is_split_and_published_whole(rig) -> None:
    opts = DriverOptions(tracks_per_tracker=2, tick_s=0.01, control_poll_s=0.01)
    r = rig(options=opts)
    r.create("many", "file:60:0.002", n_tracks=5)
    r.create("few", "file:40")
    r.run(until=lambda: len(r.frames("many")) >= 20)
    # A part's host dies mid-job: every share starts again from the job's checkpoint.
    part = r.driver.jobs["many"].parts[0][0]
    r.transport.tracker_hosts[part] = TrackerHost(
        lambda size, n: stub(), r.client, r.keys, checkpoint_every=10
    )
    r.run()
    # 3 shares of 2, 2 and 1 tracks on 3 tracker hosts, and the other job on a fourth (room for 2)
    assert r.transport.decoders == [0, 1, 2, 3]
    assert r.frames("many") == list(range(60))
    assert r.masks("many") == reference(60, n_tracks=5)  # one entry a frame, every track in it
    assert r.masks("few") == reference(40)
    takes = [after for reader in r.opener.made["file:60:0.002"] for after, _ in reader.takes]
    assert any(b is not None and a is not None and b < a for a, b in itertools.pairwise(takes)), "no rewind"
    # The checkpoint holds every share's tracks: a run resumed from it goes on with all of them.
    from pipeline.ledger.sink import read_state

    state = read_state(r.client, r.keys, "many")
    assert state is not None and sorted(t["id"] for t in state["tracker"]["tracks"]) == [1, 2, 3, 4, 5]


def test_track_commands_reach_the_share_that_follows_the_track(rig) -> None:
    opts = DriverOptions(tracks_per_tracker=2, tick_s=0.01, control_poll_s=0.01)
    r = rig(options=opts)
    r.create("cam", "feed:100", live=True, n_tracks=4)
    r.run(until=lambda: len(r.frames("cam")) >= 5)
    r.command("cam", Command("remove", 3))  # a part's track
    r.command("cam", Command("add", 9, Prompt(box=(200, 20, 260, 80))))  # a new one: the owner's
    r.run(
        until=lambda: (
            list(r.masks("cam").values())[-1]
            and [t for t, _, _ in list(r.masks("cam").values())[-1]] == [1, 2, 9, 4]
        )
    )
    r.command("cam", Command("stop"))
    r.run()
    ids = [[t for t, _, _ in m] for m in r.masks("cam").values()]
    assert ids[0] == [1, 2, 3, 4] and ids[-1] == [1, 2, 9, 4]
    assert all(i in ([1, 2, 3, 4], [1, 2, 9, 3, 4], [1, 2, 4], [1, 2, 9, 4], [1, 2, 3, 4]) for i in ids), ids


def test_a_jobs_detector_does_not_run_while_its_discovery_is_paused(rig) -> None:
    """The tracker leaves a paused discovery's boxes unused: its source host is not asked for them."""
    r = rig()
    r.create("cam", "feed:100", live=True)
    host = r.transport.source_hosts[0]
    asked: list[bool] = []
    read = host.read

    def recording(groups: Any, wait_s: float = 0.04) -> Any:
        asked.extend(q.detect for g in groups for q in g)
        return read(groups, wait_s)

    host.read = recording  # type: ignore[method-assign]
    r.run(until=lambda: len(r.frames("cam")) >= 3)
    assert asked and all(asked)
    for cmd, wanted in (("pause_discovery", False), ("resume_discovery", True)):
        r.command("cam", Command(cmd))
        r.run(until=lambda cmd=cmd: r.driver.jobs["cam"].discovery_paused == (cmd == "pause_discovery"))
        asked.clear()  # but for the one read a source host may have in flight, sent before
        r.run(until=lambda: len(asked) >= 4)
        assert set(asked[1:]) == {wanted}, (cmd, asked)
    r.command("cam", Command("stop"))
    r.run()


def test_a_live_jobs_previews_are_asked_for_only_while_a_viewer_watches(rig) -> None:
    r = rig()
    r.create("cam", "feed:50", live=True)
    r.create("clip", "file:200:0.01")
    r.run(until=lambda: len(r.frames("cam")) >= 3 and len(r.frames("clip")) >= 3)
    cam, clip = r.driver.jobs["cam"], r.driver.jobs["clip"]
    r.driver._poll_watched()
    assert not r.driver._previews(cam)  # nobody watches: no JPEG per frame of a feed
    assert r.driver._previews(clip)  # a file job's frames are previewed all the same
    r.client.set(r.keys.watched("cam"), 1, ex=10)  # what the viewer's page does while open
    r.driver._poll_watched()
    assert r.driver._previews(cam)
    r.client.delete(r.keys.watched("cam"))  # the page closed (or its key expired)
    r.driver._poll_watched()
    assert not r.driver._previews(cam)
    r.command("cam", Command("stop"))
    r.command("clip", Command("stop"))
    r.run()
