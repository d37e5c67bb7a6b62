"""Many streams per process under ``samstream serve``: a source host killed mid-run.

The real service on local Ray with the null model (every stage but the model does its real work),
two source hosts, 40 live UDP feeds and 4 file jobs spread over them, a real Redis server. One
host process is killed with SIGKILL: Ray starts it again, its streams resume within seconds (live
ones at the feed's present, file jobs by position), the file jobs end with exactly their frames,
and the streams of the other host never pause.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from pipeline.bench.feeds import TsClip, UdpFeeds, free_udp_ports
from pipeline.bench.samples import write_clip
from pipeline.streams import EmbeddedRedis, Keys, connect
from tests.fixtures.serve import ALLOW_LOOPBACK, ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

LIVE, FILES, FILE_FRAMES, FPS = 40, 4, 1500, 5


def _hosts() -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if "ray::SourceHostWorker" in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE
    ]


def _publish_times(client, keys: Keys, job: str) -> list[float]:  # type: ignore[no-untyped-def]
    return [float(f["publish_time"]) for _, f in client.xrange(keys.masks(job))]


def _longest_gap(times: list[float], start: float, end: float) -> float:
    inside = [start, *(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(inside))


def test_a_killed_source_host_comes_back_and_only_its_streams_pause(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.mp4", frames=FILE_FRAMES, width=160, height=120, fps=25)
    feeds = UdpFeeds(TsClip.encode(frames=FPS * 120, fps=FPS), free_udp_ports(LIVE))
    with EmbeddedRedis(tmp_path / "redis") as redis_server:
        args = [
            "--redis-url", redis_server.url, "--weights", "null", "--image-size", "256",
            "--allow-schemes", "udp", *ALLOW_LOOPBACK, "--allow-local-files", "--encoder-gpus", "0",
            "--min-encoders", "1", "--max-encoders", "1", "--source-hosts", "2", "--metrics-port", "0",
        ]  # fmt: skip
        service = ServeProcess(args, tmp_path, "hosts-test-token")
        client = connect(redis_server.url)
        keys = Keys()
        try:
            service.start()
            feeds.start()
            live = [f"cam-{i}" for i in range(LIVE)]
            files = [f"file-{i}" for i in range(FILES)]
            with service.api() as api:
                for job, url in zip(live, feeds.urls, strict=True):
                    body = {"source": url, "tracks": [{"id": 1, "points": [[100, 100]]}], "job_id": job}
                    assert api.post("/streams", json=body).status_code == 201
                for job in files:
                    body = {"source": str(clip), "tracks": [{"id": 1, "points": [[40, 60]]}], "job_id": job}
                    assert api.post("/jobs", json=body).status_code == 201
            deadline = time.monotonic() + 120
            while not all(client.xlen(keys.masks(j)) >= 5 for j in live + files):
                assert time.monotonic() < deadline, service.log()
                assert all(client.hget(keys.job(j), "status") != "failed" for j in files), service.log()
                time.sleep(0.5)
            time.sleep(3)
            hosts = _hosts()
            assert len(hosts) == 2, hosts
            # Ray started by serve passed the worker env on (OpenMP's idle threads sleep).
            assert all(h.environ().get("OMP_WAIT_POLICY") == "PASSIVE" for h in hosts)
            placement = {j: client.hget(keys.job(j), "source_host") for j in live + files}
            assert sorted(set(placement.values())) == ["0", "1"]
            running = {j for j in files if client.hget(keys.job(j), "status") == "running"}
            killed_at = time.time()
            os.kill(hosts[0].pid, signal.SIGKILL)
            time.sleep(15)
            after = time.time()
            # Which host index was killed: the one whose streams paused.
            gaps = {j: _longest_gap(_publish_times(client, keys, j), killed_at - 2, after) for j in live}
            paused = {placement[j] for j, g in gaps.items() if g > 2.0}
            assert len(paused) == 1, (gaps, placement)
            victim = paused.pop()
            on_victim = [j for j in live if placement[j] == victim]
            others = [j for j in live if placement[j] != victim]
            assert len(on_victim) == LIVE // 2 and len(others) == LIVE // 2
            assert any(placement[j] == victim for j in running), "no file job was running on the host"
            # Streams of the other host never paused (a frame every 0.2 s; no gap near a second).
            assert max(gaps[j] for j in others) < 1.0, {j: gaps[j] for j in others}
            # The killed host's streams came back within 10 s.
            assert max(gaps[j] for j in on_victim) <= 10.0, {j: gaps[j] for j in on_victim}
            print(
                f"killed host's streams resumed within {max(gaps[j] for j in on_victim):.1f} s; "
                f"the other host's longest gap {max(gaps[j] for j in others):.2f} s"
            )
            assert len(_hosts()) == 2
            # The file jobs end with exactly their frames, each once, in order.
            deadline = time.monotonic() + 240
            while any(client.hget(keys.job(j), "status") not in ("succeeded", "failed") for j in files):
                assert time.monotonic() < deadline, service.log()
                time.sleep(1)
            for job in files:
                assert client.hget(keys.job(job), "status") == "succeeded", client.hgetall(keys.job(job))
                ids = [eid for eid, _ in client.xrange(keys.masks(job))]
                assert ids == [f"{n}-1" for n in range(FILE_FRAMES)], job
            assert all(client.hget(keys.job(j), "status") == "running" for j in live)
        finally:
            feeds.stop()
            service.stop()
            client.close()


def _host_footprint() -> tuple[int, int]:
    """Threads and private memory (bytes) of the source-host processes together, the object
    store's pages left out.

    Private, not RSS: the frames a host hands on live in Ray's shared object store, whose pages
    count in the RSS of every process that touched them. Nor all of USS: a store page that only
    the host wrote (the null model never reads the pixels) counts in its USS, and how many of
    them it has touched depends on where the store placed its frames (freed objects' memory is
    reused), not on what the host holds.
    """
    threads = private = 0
    for p in _hosts():
        threads += p.num_threads()
        for m in p.memory_maps(grouped=True):
            if "plasma" not in m.path:  # /dev/shm/plasmaXXXXXX (deleted), or its fallback file
                private += m.private_clean + m.private_dirty
    return threads, private


def test_streams_coming_and_going_by_the_hundred_leave_the_hosts_as_they_were(tmp_path: Path) -> None:
    waves, per_wave = 6, 50
    feeds = UdpFeeds(TsClip.encode(frames=FPS * 60, fps=FPS), free_udp_ports(per_wave))
    with EmbeddedRedis(tmp_path / "redis") as redis_server:
        args = [
            "--redis-url", redis_server.url, "--weights", "null", "--image-size", "256",
            "--allow-schemes", "udp", *ALLOW_LOOPBACK, "--encoder-gpus", "0", "--min-encoders", "1",
            "--max-encoders", "1",
            "--source-hosts", "2", "--metrics-port", "0",
        ]  # fmt: skip
        service = ServeProcess(args, tmp_path, "churn-test-token")
        client = connect(redis_server.url)
        keys = Keys()
        after_wave = []
        try:
            service.start()
            feeds.start()
            with service.api() as api:
                for wave in range(waves):
                    jobs = [f"w{wave}-{i}" for i in range(per_wave)]
                    for job, url in zip(jobs, feeds.urls, strict=True):
                        body = {"source": url, "tracks": [{"id": 1, "points": [[100, 100]]}], "job_id": job}
                        assert api.post("/streams", json=body).status_code == 201
                    deadline = time.monotonic() + 120
                    while not all(client.xlen(keys.masks(j)) >= 3 for j in jobs):
                        assert time.monotonic() < deadline, service.log()
                        time.sleep(0.5)
                    for job in jobs:
                        assert api.delete(f"/streams/{job}").status_code == 202
                    while any(client.hget(keys.job(j), "status") == "running" for j in jobs):
                        assert time.monotonic() < deadline, service.log()
                        time.sleep(0.5)
                    assert all(client.hget(keys.job(j), "status") == "succeeded" for j in jobs)
                    # Sources close on threads of their own, within a read timeout (5 s) or so.
                    time.sleep(5)
                    settle = time.monotonic() + 20
                    while (
                        after_wave
                        and _host_footprint()[0] > after_wave[0][0] + 6
                        and time.monotonic() < settle
                    ):
                        time.sleep(1)
                    after_wave.append(_host_footprint())
            threads = [t for t, _ in after_wave]
            private = [m for _, m in after_wave]
            print(f"source hosts after each wave: threads {threads}, private MB {[m >> 20 for m in private]}")
            assert max(threads[3:]) <= min(threads[:3]) + 6, threads  # each stream's threads went with it
            # A stream's decoder holds megabytes: a leak of 2 MB a stream adds 100 MB a wave, and the
            # two floors compared lie at least a wave apart. What is left swings by tens of MB from
            # wave to wave and grows by a few tens over the first waves (41-66 MB over six here,
            # before and after the object store's faster frees), so compare floors.
            assert min(private[3:]) - min(private[:3]) <= 96 * 2**20, private
            assert len(_hosts()) == 2
        finally:
            feeds.stop()
            service.stop()
            client.close()


def test_a_job_with_more_tracks_than_a_tracker_host_follows_is_split_and_published_whole(
    tmp_path: Path,
) -> None:
    clip = write_clip(tmp_path / "clip.mp4", frames=60, width=320, height=240)
    with EmbeddedRedis(tmp_path / "redis") as redis_server:
        args = [
            "--redis-url", redis_server.url, "--weights", "random", "--image-size", "256", "--compile", "eager",
            "--allow-local-files", "--encoder-gpus", "0", "--min-encoders", "1", "--max-encoders", "1",
            "--source-hosts", "1", "--tracks-per-tracker", "2", "--metrics-port", "0",
        ]  # fmt: skip
        service = ServeProcess(args, tmp_path, "split-test-token")
        client = connect(redis_server.url)
        keys = Keys()
        try:
            service.start()
            tracks = [{"id": i, "points": [[40 + 40 * i, 100]]} for i in range(1, 6)]
            with service.api() as api:
                body = {"source": str(clip), "tracks": tracks, "job_id": "many", "tracking": {"min_score": 0}}
                assert api.post("/jobs", json=body).status_code == 201
                deadline = time.monotonic() + 240
                while api.get("/jobs/many").json()["status"] not in ("succeeded", "failed"):
                    assert time.monotonic() < deadline, service.log()
                    time.sleep(1)
                assert api.get("/jobs/many").json()["status"] == "succeeded", api.get("/jobs/many").json()
            entries = client.xrange(keys.masks("many"))
            assert [eid for eid, _ in entries] == [f"{n}-1" for n in range(60)]
            from pipeline.streams import decode_entry

            assert all([t.track_id for t in decode_entry(e, f).tracks] == [1, 2, 3, 4, 5] for e, f in entries)
            # Three tracker hosts followed it (shares of 2, 2 and 1 tracks): three processes.
            trackers = [
                p
                for p in psutil.process_iter(["cmdline"])
                if "ray::TrackerHostWorker" in " ".join(p.info["cmdline"] or [])
            ]
            assert len(trackers) >= 3
        finally:
            service.stop()
            client.close()
