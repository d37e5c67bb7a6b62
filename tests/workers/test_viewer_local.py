"""The viewer of ``samstream run``'s jobs: ``run --view`` beside a live job, ``samstream view`` after a
file job (played and scrubbed in a real headless Chromium).

Real ``samstream run`` processes (local Ray, the embedded Redis of their data folder), a real feed
on loopback, real video, Debian's Chromium through Playwright.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.bench.samples import write_clip
from tests.fixtures.serve import free_port
from tests.fixtures.streams import StreamSender
from tests.workers.conftest import EXE, cli, popen

CHROMIUM = "/usr/bin/chromium"
CSRF = {"X-Samstream-Viewer": "1"}
MODEL = ["--weights", "random", "--image-size", "256", "--compile", "eager", "--min-score", "0"]

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]


class _Lines:
    """A process's stderr, line by line, read on a thread (so that waiting for one never blocks)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line)

    def until(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first line from now on that matches ``pattern``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "".join(self.seen)
                continue
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"no line like {pattern!r} within {timeout_s:.0f} s: {''.join(self.seen)}")


def _signed_in(base: str, token: str) -> httpx.Client:
    page = httpx.Client(base_url=base, timeout=30)
    assert page.post("/view/login", json={"token": token}, headers=CSRF).status_code == 204
    return page


def test_run_view_serves_the_page_beside_a_live_run_and_stops_it(tmp_path: Path) -> None:
    port = free_port()
    with StreamSender("udp", fps=10) as sender:
        proc = popen(
            "run", sender.url, "--point", "60,120", *MODEL, "--job-id", "cam", "--data-dir", str(tmp_path),
            "--no-progress", "--view", "--view-port", str(port),
        )  # fmt: skip
        try:
            lines = _Lines(proc)
            url = lines.until(r"viewer on (http://\S+)", 60).group(1)
            token = lines.until(r"viewer's token \(asked once by the page\): (\S+)", 5).group(1)
            assert url == f"http://127.0.0.1:{port}/view/jobs/cam" and token not in url
            base = url.split("/view/")[0]
            assert httpx.get(f"{base}/view/api/jobs/cam").status_code == 401
            page = _signed_in(base, token)
            deadline = time.monotonic() + 120
            while not page.get("/view/api/jobs/cam/frames").json()["frames"]:
                assert time.monotonic() < deadline, "no preview within 120 s"
                time.sleep(0.3)
            frame = page.get("/view/api/jobs/cam/frames").json()["frames"][0]
            assert (frame["width"], frame["height"]) == (320, 240) and frame["tracks"][0]["id"] == 1
            # The page's Stop button: the API's cancel, with the session and its header.
            assert page.delete("/streams/cam", headers=CSRF).status_code == 202
            page.close()
            assert proc.wait(90) == 0, "".join(lines.seen)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield context
        finally:
            context.close()


@contextlib.contextmanager
def _viewed(chromium: Any, job: str, data: Path) -> Iterator[Any]:
    """``samstream view JOB`` running, and a page of it signed in, showing the job's playback."""
    port = free_port()
    env = {**os.environ, "SAMSTREAM_API_TOKEN": "view-token", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [EXE, "view", job, "--data-dir", str(data), "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        url = _Lines(proc).until(r"viewer on (http://\S+)", 60).group(1)
        page = chromium.new_page()
        page.goto(url)
        page.fill("#token", "view-token")
        page.click("button[type=submit]")
        page.wait_for_selector("#playback:not([hidden])")
        yield page
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)


def test_samstream_view_plays_and_scrubs_a_finished_file_job(tmp_path: Path, chromium: Any) -> None:
    clip = write_clip(tmp_path / "clip.mp4", frames=24, width=160, height=120, fps=8)
    # One preview a frame (at most 50 a second): every frame of this short job can be scrubbed to.
    r = cli(
        "run", str(clip), "--point", "40,60", *MODEL, "--job-id", "f1", "--data-dir", str(tmp_path / "out"),
        "--no-progress", "--preview-rate", "50",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    with _viewed(chromium, "f1", tmp_path / "out") as page:
        previews = int(page.get_attribute("#scrub", "max") or 0) + 1
        assert previews >= 12, f"only {previews} previews of 24 frames"
        # Scrub to the middle: that frame is drawn, with its masks.
        page.locator("#scrub").fill(str(previews // 2))
        page.wait_for_function(
            "n => window.samstreamViewer.shown && window.samstreamViewer.shown.frame >= n", arg=previews // 2
        )
        middle = page.evaluate("window.samstreamViewer.shown")
        assert middle["tracks"] and middle["tracks"][0]["id"] == 1
        page.screenshot(path=str(tmp_path / "scrubbed.png"))
        # Play from there: the frames advance to the last one kept.
        page.click("#play")
        page.wait_for_function("() => document.getElementById('play').textContent === 'Play'", timeout=30_000)
        last = page.evaluate(
            "fetch('/view/api/jobs/f1/previews').then(r => r.json()).then(j => j.previews.at(-1).frame)"
        )
        assert last >= 20 and page.evaluate("window.samstreamViewer.shown.frame") == last
        assert "succeeded" in page.inner_text("#status")


def test_a_detectors_tracks_are_shown_with_their_class(
    tmp_path: Path, chromium: Any, blob_detector: Path
) -> None:
    """A file job that discovers with the reference detector (red and blue only): the viewer lists
    and draws each found track under its class's name."""
    from pipeline.evaluation.scenes import entering_scene, write_video

    clip = write_video(entering_scene(count=3, seconds=4.0), tmp_path / "entering.mp4")
    r = cli(
        "run", str(clip), "--weights", "reference", "--image-size", "256", "--detector", str(blob_detector),
        "--classes", "red,blue", "--discover-every", "0.5", "--job-id", "d1", "--data-dir", str(tmp_path / "out"),
        "--no-progress", "--preview-rate", "50",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    with _viewed(chromium, "d1", tmp_path / "out") as page:
        last = int(page.get_attribute("#scrub", "max") or 0)
        page.locator("#scrub").fill(str(last))  # 4 s: red and blue are in, green too (not asked for)
        page.wait_for_function(
            "() => window.samstreamViewer.shown && window.samstreamViewer.shown.tracks.length === 2"
        )
        shown = page.evaluate("window.samstreamViewer.shown")
        assert sorted(t["label"] for t in shown["tracks"]) == ["blue", "red"], shown
        page.wait_for_selector("#tracks li:has-text('red 1')")
        listed = page.inner_text("#tracks")
        assert "red 1 · active" in listed and "blue 2 · active" in listed and "track " not in listed, listed
