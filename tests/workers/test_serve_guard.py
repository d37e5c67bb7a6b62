"""``samstream serve`` fetches only what it may, for every connection its jobs make (SSRF).

The service is allowed 127.0.0.1 only. Servers on 127.0.0.2 and ::1 (loopback too, so refused)
stand for the cluster's own services: a job whose source redirects there, or whose playlist's
segment is there, fails "blocked", and those servers receive no request. A closed port and a name
that does not resolve fail with the same words, so the API is no port scanner.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from pipeline.bench.samples import write_clip
from pipeline.sources.addresses import BLOCKED, UNREACHABLE
from tests.fixtures.http import serve_directory
from tests.fixtures.serve import ServeProcess
from tests.fixtures.streams import StreamSender, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRACKS = [{"id": 1, "points": [[30, 20]]}]
PLAYLIST = (
    "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n"
    "#EXTINF:1.0,\n{segment}\n#EXT-X-ENDLIST\n"
)


def _ended(api: httpx.Client, job_id: str, service: ServeProcess) -> dict[str, object]:
    deadline = time.monotonic() + 120
    while True:
        view: dict[str, object] = api.get(f"/jobs/{job_id}").json()
        if view["status"] in ("succeeded", "failed", "cancelled"):
            return view
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.5)


def test_jobs_reach_only_allowed_addresses_and_say_blocked_or_could_not_connect(tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    write_clip(media / "clip.mp4", frames=8, width=64, height=48)
    write_clip(media / "segment.ts", frames=8, width=64, height=48)
    seen_v4: list[str] = []
    seen_v6: list[str] = []
    with (
        serve_directory(media, "127.0.0.2", seen=seen_v4) as inside_v4,
        serve_directory(media, "::1", seen=seen_v6) as inside_v6,
    ):
        (media / "far.m3u8").write_text(PLAYLIST.format(segment=f"{inside_v6}/segment.ts"))
        redirects = {"/r.mp4": f"{inside_v4}/clip.mp4"}
        with serve_directory(media, redirects=redirects) as allowed:
            args = [
                "--data-dir", str(tmp_path / "data"), "--weights", "null", "--image-size", "256",
                "--encoder-gpus", "0", "--min-encoders", "1", "--max-encoders", "1",
                "--source-hosts", "1", "--metrics-port", "0", "--allow-hosts", "127.0.0.1",
                "--allow-schemes", "http,udp",
            ]  # fmt: skip
            service = ServeProcess(args, tmp_path, "guard-test-token")
            try:
                service.start()
                with service.api() as api:
                    r = api.post("/jobs", json={"source": f"{inside_v4}/clip.mp4", "tracks": TRACKS})
                    assert r.status_code == 422 and "source blocked" in r.text
                    jobs = {
                        "plain": f"{allowed}/clip.mp4",
                        "redirect": f"{allowed}/r.mp4",
                        "segment": f"{allowed}/far.m3u8",
                        "closed": f"http://127.0.0.1:{free_port()}/clip.mp4",
                        "unknown": "http://no-such-host.invalid/clip.mp4",
                    }
                    for job_id, source in jobs.items():
                        r = api.post("/jobs", json={"source": source, "tracks": TRACKS, "job_id": job_id})
                        assert r.status_code == 201, r.text
                    views = {job_id: _ended(api, job_id, service) for job_id in jobs}
                    events = {j: api.get(f"/jobs/{j}/events").text for j in jobs}
                    with StreamSender("udp") as feed:  # a live feed on the allowed address plays
                        body = {"source": feed.url, "tracks": TRACKS, "job_id": "feed"}
                        assert api.post("/streams", json=body).status_code == 201
                        deadline = time.monotonic() + 60
                        while not api.get("/streams/feed/masks").json()["entries"]:
                            assert time.monotonic() < deadline, service.log()
                            time.sleep(0.5)
                        assert api.delete("/streams/feed").status_code == 202
            finally:
                service.stop()
    assert views["plain"]["status"] == "succeeded", views["plain"]
    for job_id in ("redirect", "segment"):
        assert views[job_id]["status"] == "failed"
        assert str(views[job_id]["error"]).endswith(BLOCKED), views[job_id]
    for job_id in ("closed", "unknown"):
        assert views[job_id]["status"] == "failed"
        assert str(views[job_id]["error"]) == f"cannot open video {jobs[job_id]}: {UNREACHABLE}"
    for text in events.values():  # nothing tells where a refused connection was going
        assert "127.0.0.2" not in text and "::1" not in text and "refused" not in text
    assert seen_v4 == [] and seen_v6 == []
