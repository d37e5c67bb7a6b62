"""Discovery end to end: ``samstream run --discover`` with no prompt on a generated H.264 file where
six discs enter one by one (real Ray, real Redis, PyAV), through the reference segmenter
(``--weights reference``): each disc gets one track within two discovery periods of entering, a
disc that leaves has its track ended with an event, and a run killed half-way resumes to the same
tracks, masks and events as one that never stopped."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import numpy as np
import psutil
import pytest

from pipeline.evaluation.scenes import Scene, entering_scene, write_video
from pipeline.masks.rle import decode_rle
from pipeline.streams import read_events
from tests.fixtures.streams import StreamSender
from tests.workers.conftest import cli, popen, wait_for_entries
from tests.workers.test_job_failures import _ray_processes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVERY_S = 0.5
SCENE = entering_scene(seconds=9.0)


@pytest.fixture(scope="module")
def entering(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(SCENE, tmp_path_factory.mktemp("discovery") / "entering.mp4")


@pytest.fixture(scope="module")
def whole(entering: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data folder of a run that never stopped (job ``whole``)."""
    data = tmp_path_factory.mktemp("discovery-runs") / "out"
    done = cli(*_args(entering, data, "whole"))
    assert done.returncode == 0, done.stderr
    return data


def _args(entering: Path, data: Path, job: str) -> list[str]:
    return [
        "run", str(entering), "--weights", "reference", "--image-size", "256", "--discover",
        "--discover-every", str(EVERY_S), "--discover-grid", "16", "--discover-forget", "1", "--job-id", job,
        "--data-dir", str(data), "--no-progress", "--no-preview",
    ]  # fmt: skip


def _owners(scene: Scene, entries: list) -> dict[int, dict[int, int]]:  # type: ignore[type-arg]
    """Per frame, each active track's disc (the one most of its mask is on, if at least half)."""
    owners: dict[int, dict[int, int]] = {}
    for _, result in entries:
        _, visible = scene.render(result.frame_index)
        held = owners.setdefault(result.frame_index, {})
        for t in result.tracks:
            if t.state != "active":
                continue
            mask = decode_rle(t.rle)
            best = max(visible, key=lambda k: np.count_nonzero(mask & visible[k]))
            if np.count_nonzero(mask & visible[best]) >= 0.5 * np.count_nonzero(mask):
                held[t.track_id] = best
    return owners


def _one_track_each(owners: dict[int, dict[int, int]]) -> tuple[dict[int, set[int]], dict[int, float]]:
    """Each disc's tracks over the frames, and when (scene time) it was first held; no frame may
    have two tracks on one disc."""
    tracks_of: dict[int, set[int]] = {}
    first: dict[int, float] = {}
    for i, held in sorted(owners.items()):
        assert len(set(held.values())) == len(held), f"frame {i}: one disc, two tracks: {held}"
        for tid, disc in held.items():
            tracks_of.setdefault(disc, set()).add(tid)
            first.setdefault(disc, SCENE.times[i])
    return tracks_of, first


def _track_events(results, job: str) -> list[tuple]:  # type: ignore[no-untyped-def, type-arg]
    return [
        (e.type, e.frame, e.track, e.data)
        for e in read_events(results.client, results.keys, job, count=1000)
        if e.type.startswith("track_")
    ]


def test_discs_that_enter_are_found_once_each_and_end_when_they_leave(whole: Path, results) -> None:
    r = results(whole)
    entries = r.entries("whole")
    assert len(entries) == len(SCENE.times)
    tracks_of, first = _one_track_each(_owners(SCENE, entries))
    assert sorted(tracks_of) == [1, 2, 3, 4, 5, 6]
    assert all(len(t) == 1 for t in tracks_of.values()), tracks_of
    for disc in tracks_of:
        assert first[disc] - SCENE.first_shown(disc, 1 / 3) <= 2 * EVERY_S + 1e-9, disc
    events = _track_events(r, "whole")
    discovered = [e for e in events if e[0] == "track_discovered"]
    assert len(discovered) == 6 and all(e[3]["by"] == "grid" for e in discovered)
    ended = {e[2] for e in events if e[0] == "track_ended"}
    assert {next(iter(tracks_of[d])) for d in (1, 2)} <= ended  # gone by 6.5 s and 7.5 s


def test_a_killed_run_resumes_to_the_same_tracks_masks_and_events(
    entering: Path, whole: Path, results
) -> None:
    data = whole  # the same Redis: the killed job beside the whole one
    existing = _ray_processes()
    proc = popen(*_args(entering, data, "killed"))
    r = wait_for_entries(results, data, "killed", 45, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for pid in _ray_processes() - existing:  # a few of Ray's agents outlive their driver a while
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    assert 45 <= len(r.raw_ids("killed")) < len(SCENE.times)
    again = cli(*_args(entering, data, "killed"))
    assert again.returncode == 0, again.stderr
    assert "resuming after frame" in again.stderr

    def masks(job: str) -> list[tuple]:  # type: ignore[type-arg]
        return [
            (res.frame_index, [(t.track_id, t.state, t.bbox, t.rle["counts"]) for t in res.tracks])
            for _, res in r.entries(job)
        ]

    assert masks("killed") == masks("whole")
    assert _track_events(r, "killed") == _track_events(r, "whole")


def test_a_live_feed_where_discs_enter_gets_one_track_each_soon_after(tmp_path: Path, results) -> None:
    """A live TCP feed that starts sending when the job connects (frame i at i / 10 s of the scene,
    as the frames' pts say): discs enter one a second. Each is found within two discovery periods of
    the first frame the job processed once a third of it showed (a live job drops frames while it
    starts), one track each."""
    data = tmp_path / "out"
    with StreamSender("tcp", fps=10, scene="entering") as sender:
        args = _args(entering=Path("feed"), data=data, job="cam")
        args[1] = sender.url
        proc = popen(*args, "--live")
        try:
            r = wait_for_entries(results, data, "cam", 90, proc, timeout=180)
            assert cli("stop", "cam", "--data-dir", str(data)).returncode == 0
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    entries = [result for _, result in r.entries("cam")]
    assert all(e.pts is not None for e in entries)
    tracks_of, first = _one_track_each(
        _owners(SCENE, [(None, e) for e in entries if e.frame_index < len(SCENE.times)])
    )
    processed = sorted(e.pts for e in entries)
    assert sorted(tracks_of) == [1, 2, 3, 4, 5, 6], tracks_of
    assert all(len(t) == 1 for t in tracks_of.values()), tracks_of
    for disc, seen in first.items():
        entered = SCENE.first_shown(disc, 1 / 3)
        since = next(t for t in processed if t >= entered - 1e-9)  # the first frame it could be found on
        assert seen - since <= 2 * EVERY_S + 0.1 + 1e-9, (disc, entered, since, seen)


def test_a_detector_gives_tracks_to_the_classes_asked_only_labelled_on_the_wire(
    entering: Path, whole: Path, blob_detector: Path, results
) -> None:
    """``--detector`` with ``--classes``: the source host runs the reference detector (real ONNX
    Runtime) on a frame each period; red, blue and magenta discs get one track each, soon after
    entering, labelled in every masks entry and in their events; the others none."""
    data = whole  # the same Redis, beside the grid's job
    args = _args(entering, data, "detected")
    grid = args.index("--discover-grid")
    del args[grid : grid + 2]
    args += ["--detector", str(blob_detector), "--classes", "red,blue,magenta", "--detector-score", "0.5"]
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    r = results(data)
    entries = r.entries("detected")
    assert len(entries) == len(SCENE.times)
    tracks_of, first = _one_track_each(_owners(SCENE, entries))
    assert sorted(tracks_of) == [1, 3, 5], tracks_of
    assert all(len(t) == 1 for t in tracks_of.values()), tracks_of
    for disc in tracks_of:
        assert first[disc] - SCENE.first_shown(disc, 1 / 3) <= 2 * EVERY_S + 1e-9, disc
    names = {1: "red", 3: "blue", 5: "magenta"}
    label_of = {next(iter(tids)): names[disc] for disc, tids in tracks_of.items()}
    for _, result in entries:
        for t in result.tracks:
            assert t.label == label_of[t.track_id], (result.frame_index, t)
    discovered = [e for e in _track_events(r, "detected") if e[0] == "track_discovered"]
    assert sorted((e[2], e[3]["label"], e[3]["by"]) for e in discovered) == sorted(
        (tid, label, "detector") for tid, label in label_of.items()
    )


def test_a_bad_detector_file_is_one_line_before_the_job_starts(entering: Path, tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_text("not a model")
    done = cli(
        "run", str(entering), "--weights", "reference", "--detector", str(bad), "--data-dir", str(tmp_path)
    )
    assert done.returncode != 0
    assert "not an ONNX model" in done.stderr and "Traceback" not in done.stderr, done.stderr
