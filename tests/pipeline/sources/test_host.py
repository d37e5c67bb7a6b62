"""The source host: many jobs' sources read in one call, opened in the background, by position."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline.bench.samples import write_clip
from pipeline.sources.host import ReadReply, ReadRequest, SourceHost, SourceSpec, open_reader
from tests.fixtures.streams import StreamSender


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return (
        write_clip(folder / "a.mp4", frames=20, width=160, height=120),
        write_clip(folder / "b.mp4", frames=12, width=320, height=240),
    )


def _drain(host: SourceHost, requests: dict[str, ReadRequest], groups: list[list[str]], limit: float = 20):
    """Read until every job ended or failed; frames by job, and every reply by job."""
    frames: dict[str, list[int]] = {j: [] for j in requests}
    replies: dict[str, list[ReadReply]] = {j: [] for j in requests}
    open_jobs = set(requests)
    deadline = time.monotonic() + limit
    while open_jobs:
        assert time.monotonic() < deadline, replies
        asked = [[requests[j] for j in g if j in open_jobs] for g in groups]
        asked = [g for g in asked if g]
        got, pixels = host.read(asked, wait_s=0.05)
        for group_replies, group_frames in zip(got, pixels, strict=True):
            assert [f.job_id for f in group_frames] == [
                r.job_id for r in group_replies for _ in r.indices
            ]  # each group's frames in request order, tagged
            for reply in group_replies:
                replies[reply.job_id].append(reply)
                frames[reply.job_id] += list(reply.indices)
                req = requests[reply.job_id]
                after = reply.indices[-1] if reply.indices else req.after
                requests[reply.job_id] = ReadRequest(req.job_id, req.source, after, req.count)
                if reply.end or reply.error:
                    open_jobs.discard(reply.job_id)
    return frames, replies


def test_one_read_carries_many_jobs_frames_in_groups(clips: tuple[Path, Path]) -> None:
    host = SourceHost()
    try:
        requests = {
            "a": ReadRequest("a", SourceSpec(str(clips[0]), 256), None, 4),
            "b": ReadRequest("b", SourceSpec(str(clips[1]), 256, stride=3), None, 4),
            "c": ReadRequest("c", SourceSpec(str(clips[0]), 256), 9, 8),  # a restarted job: after frame 9
        }
        frames, replies = _drain(host, requests, [["a", "c"], ["b"]])
        assert frames["a"] == list(range(20))
        assert frames["b"] == [0, 3, 6, 9]
        assert frames["c"] == list(range(10, 20))
        # Opened in the background (a read waits for it a little): the info comes once, with or
        # before the first frames.
        first = next(i for i, r in enumerate(replies["a"]) if r.info is not None)
        assert not any(r.indices for r in replies["a"][:first])
        assert all(r.opening for r in replies["a"][:first])
        infos = [r.info for r in replies["b"] if r.info is not None]
        assert len(infos) == 1 and (infos[0].width, infos[0].height, infos[0].frame_count) == (320, 240, 12)
        assert host.jobs == 3
        host.close(["a", "b", "c"])
        assert host.jobs == 0
    finally:
        host.shutdown()


def test_a_source_that_cannot_open_fails_its_job_only(clips: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "notes.mp4").write_text("not a video")
    host = SourceHost()
    try:
        requests = {
            "bad": ReadRequest("bad", SourceSpec(str(tmp_path / "notes.mp4"), 256), None, 4),
            "good": ReadRequest("good", SourceSpec(str(clips[1]), 256), None, 4),
        }
        frames, replies = _drain(host, requests, [["bad", "good"]])
        errors = [r.error for r in replies["bad"] if r.error]
        assert errors and "\n" not in errors[0] and "notes.mp4" in errors[0]
        assert frames["bad"] == [] and frames["good"] == list(range(12))
    finally:
        host.shutdown()


def test_a_slow_opening_never_holds_a_read_up(clips: tuple[Path, Path]) -> None:
    def slow(spec: SourceSpec, after: int | None, notify):  # type: ignore[no-untyped-def]
        if spec.uri.endswith("b.mp4"):
            time.sleep(1.5)  # a camera that takes its time to answer
        return open_reader(spec, after, notify)

    host = SourceHost(slow, idle_wait_s=0.3)
    try:
        fast, late = SourceSpec(str(clips[0]), 256), SourceSpec(str(clips[1]), 256)
        start = time.monotonic()
        while True:
            (replies,), _ = host.read(
                [[ReadRequest("a", fast, None, 4), ReadRequest("b", late, None, 4)]], 0.05
            )
            if replies[0].indices:
                break
        assert time.monotonic() - start < 1.0  # the fast source's frames did not wait for the slow one
        assert replies[1].opening and not replies[1].indices
        got: list[int] = []
        deadline = time.monotonic() + 10
        while len(got) < 4:  # once open, the slow source reads like any other
            assert time.monotonic() < deadline, got
            after = got[-1] if got else None
            (replies,), (frames,) = host.read([[ReadRequest("b", late, after, 4 - len(got))]], wait_s=0.05)
            got += list(replies[0].indices)
            assert [f.job_id for f in frames] == ["b"] * len(replies[0].indices)
        assert got == [0, 1, 2, 3]
    finally:
        host.shutdown()


def test_live_feeds_give_their_newest_frame_numbered_after_the_jobs_last(tmp_path: Path) -> None:
    host = SourceHost()
    with StreamSender("udp", fps=30) as a, StreamSender("udp", fps=30) as b:
        try:
            specs = {j: SourceSpec(s.url, 256, live=True, give_up_s=10) for j, s in (("a", a), ("b", b))}
            after = {"a": None, "b": 999}  # b resumes after its frame 999
            seen: dict[str, list[int]] = {"a": [], "b": []}
            dropped = {"a": 0, "b": 0}
            deadline = time.monotonic() + 20
            while min(len(v) for v in seen.values()) < 15:
                assert time.monotonic() < deadline, seen
                (replies,), _ = host.read([[ReadRequest(j, specs[j], after[j], 1) for j in specs]], 0.05)
                for r in replies:
                    assert r.error is None, r.error
                    assert len(r.indices) <= 1
                    seen[r.job_id] += list(r.indices)
                    dropped[r.job_id] += r.dropped
                    if r.indices:
                        after[r.job_id] = r.indices[-1]
                time.sleep(0.1)  # a slow pipeline: the feeds drop what it cannot take
            for job in specs:
                assert seen[job] == sorted(set(seen[job]))
                assert dropped[job] > 0
            assert min(seen["b"]) >= 1000
        finally:
            host.shutdown()


def test_a_jobs_frames_carry_previews_at_its_pace(clips: tuple[Path, Path]) -> None:
    """Every frame of a file read at once: the first gets a preview (the frame's size, as a JPEG),
    the next ones within the pace's interval get none; a job without previews gets none."""
    import io

    from PIL import Image

    from pipeline.masks.preview import PreviewOptions

    host = SourceHost()
    try:
        previewed = SourceSpec(str(clips[1]), 256, preview=PreviewOptions(max_side=160, rate=0.5))
        requests = {
            "p": ReadRequest("p", previewed, None, 12),
            "q": ReadRequest("q", SourceSpec(str(clips[0]), 256), None, 20),
        }
        seen: dict[str, list[Any]] = {"p": [], "q": []}
        deadline = time.monotonic() + 20
        while len(seen["p"]) < 12 or len(seen["q"]) < 20:
            assert time.monotonic() < deadline, seen
            asked = [[r for j, r in requests.items() if len(seen[j]) < (12 if j == "p" else 20)]]
            _, pixels = host.read(asked, wait_s=0.05)
            for f in pixels[0]:
                seen[f.job_id].append(f)
                req = requests[f.job_id]
                requests[f.job_id] = ReadRequest(req.job_id, req.source, f.index, req.count)
        with_preview = [f for f in seen["p"] if f.preview is not None]
        assert with_preview[0].index == 0 and len(with_preview) <= 2  # 0.5 a second, read in ~1 s
        p = with_preview[0].preview
        assert (p.width, p.height) == (160, 120)
        assert Image.open(io.BytesIO(p.jpeg)).size == (160, 120)
        assert "preview" in with_preview[0].timings
        assert all(f.preview is None for f in seen["q"])

        # A read that asks for none (a live job nobody watches) gets none, whatever its options.
        again = SourceSpec(str(clips[1]), 256, preview=PreviewOptions(max_side=160, rate=100))
        got: list[Any] = []
        deadline = time.monotonic() + 20
        while len(got) < 5:
            assert time.monotonic() < deadline, got
            _, pixels = host.read(
                [[ReadRequest("r", again, got[-1].index if got else None, 5, preview=False)]], 0.05
            )
            got += pixels[0]
        assert all(f.preview is None for f in got)
    finally:
        host.shutdown()


def test_a_preview_that_cannot_be_made_costs_the_frame_only_its_preview(
    clips: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.sources.host as host_module
    from pipeline.masks.preview import PreviewOptions

    def broken(*args: object) -> None:
        raise ValueError("no picture")

    monkeypatch.setattr(host_module, "make_preview", broken)
    host = SourceHost()
    try:
        spec = SourceSpec(str(clips[0]), 256, preview=PreviewOptions())
        frames, replies = _drain(host, {"a": ReadRequest("a", spec, None, 4)}, [["a"]])
        assert frames["a"] == list(range(20)) and not any(r.error for r in replies["a"])
    finally:
        host.shutdown()


def _frames_of(
    host: SourceHost, request: ReadRequest, limit: float = 20
) -> tuple[list[Any], list[ReadReply]]:
    """Every frame of one job (to its end or error), and the replies."""
    frames: list[Any] = []
    replies: list[ReadReply] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        (got,), (pixels,) = host.read([[request]], wait_s=0.05)
        replies += got
        frames += pixels
        if got[0].end or got[0].error:
            return frames, replies
        after = pixels[-1].index if pixels else request.after
        request = replace(request, after=after)
    raise AssertionError(replies)


@pytest.mark.slow
def test_a_detectors_frames_are_one_a_period_and_the_same_after_a_restart(
    blob_detector: Path, tmp_path: Path
) -> None:
    from pipeline.evaluation.scenes import entering_scene, write_video
    from pipeline.sources.host import DetectorSpec

    clip = write_video(entering_scene(count=3, seconds=3.0), tmp_path / "entering.mp4")
    spec = SourceSpec(str(clip), 256, detector=DetectorSpec(str(blob_detector), 0.5, 0.5, ("red", "green")))
    host = SourceHost()
    try:
        frames, _ = _frames_of(host, ReadRequest("a", spec, None, 8))
    finally:
        host.shutdown()
    assert [f.index for f in frames] == list(range(30))
    marked = {f.index: f.detections for f in frames if f.detections is not None}
    assert sorted(marked) == [0, 5, 10, 15, 20, 25]  # 10 fps: one frame each half second
    assert all("detect" in frames[i].timings for i in marked)
    assert [d.label for d in marked[25]] == ["red", "green"]  # blue is in, but not asked for
    assert marked[0] == ()  # nothing in yet
    again = SourceHost()  # a restarted host, reading on after frame 12: the same frames, the same boxes
    try:
        later, _ = _frames_of(again, ReadRequest("a", spec, 12, 8))
    finally:
        again.shutdown()
    assert {f.index: f.detections for f in later if f.detections is not None} == {
        i: marked[i] for i in (15, 20, 25)
    }
    paused = SourceHost()  # the job's discovery paused: no detector runs, the frames go on
    try:
        quiet, _ = _frames_of(paused, ReadRequest("a", spec, None, 8, detect=False))
        assert [f.index for f in quiet] == list(range(30)) and all(f.detections is None for f in quiet)
        assert not paused._detectors  # never even opened
        # resumed after frame 12: the detection frames from there are the file's own
        resumed, _ = _frames_of(paused, ReadRequest("a", spec, 12, 8))
    finally:
        paused.shutdown()
    assert {f.index: f.detections for f in resumed if f.detections is not None} == {
        i: marked[i] for i in (15, 20, 25)
    }


def test_a_detector_that_cannot_run_costs_the_frames_their_boxes_not_the_job(
    clips: tuple[Path, Path], tmp_path: Path
) -> None:
    """A detector that fails where it runs (a file gone bad since the job was checked, a model that
    throws): the frames go on without boxes, and one ``detector_failed`` event says why, without
    the host's folders."""
    from pipeline.sources.host import DetectorSpec

    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"\x00" * 64)
    host = SourceHost()
    try:
        spec = SourceSpec(str(clips[0]), 256, detector=DetectorSpec(str(garbage), 0.1))
        frames, replies = _frames_of(host, ReadRequest("a", spec, None, 4))
    finally:
        host.shutdown()
    assert [f.index for f in frames] == list(range(20)) and all(f.detections is None for f in frames)
    assert not any(r.error for r in replies)
    [(kind, detail, _)] = [e for r in replies for e in r.events]  # once, not once a detection frame
    assert kind == "detector_failed" and "not an ONNX model" in detail and str(tmp_path) not in detail, detail
    assert detail.startswith("frame 0: detector model.onnx:") and "frames go on without its boxes" in detail


@pytest.mark.slow
def test_a_live_feeds_detector_runs_on_the_first_frame_taken_in_each_period(blob_detector: Path) -> None:
    """A live feed's frames are dropped as the pipeline lags: the detector runs on the first frame
    *taken* in each period of capture time, never twice in one."""
    import math

    from pipeline.sources.host import DetectorSpec

    every = 0.5
    host = SourceHost()
    with StreamSender("tcp", fps=10, scene="entering") as sender:
        try:
            spec = SourceSpec(
                sender.url, 256, live=True, give_up_s=10, detector=DetectorSpec(str(blob_detector), every)
            )
            taken: list[Any] = []
            after = None
            deadline = time.monotonic() + 30
            while len(taken) < 30:
                assert time.monotonic() < deadline, [f.index for f in taken]
                (replies,), (frames,) = host.read([[ReadRequest("cam", spec, after, 1)]], 0.05)
                assert replies[0].error is None, replies[0].error
                taken += frames
                after = frames[-1].index if frames else after
                time.sleep(0.12)  # slower than the feed: it drops frames
        finally:
            host.shutdown()
    slots = [math.floor(f.capture_time / every + 1e-9) for f in taken]
    marked = [i for i, f in enumerate(taken) if f.detections is not None]
    assert marked[0] == 0
    assert marked == [0] + [i for i in range(1, len(taken)) if slots[i] > slots[i - 1]]
    assert len(marked) >= 4
    assert any(f.detections for f in taken if f.detections is not None)  # discs enter from 0.5 s
