"""The browser viewer in a real headless Chromium, over ``samstream serve`` and a live UDP stream.

Everything is real: the service (local Ray, encoder pool, hosts), its embedded Redis, a feed sent
over loopback, Debian's Chromium driven by Playwright. Random weights give arbitrary masks, so the
page is checked against what the service published: the colour of a track is drawn on the edge of
that frame's mask, as decoded from the masks entry the API serves, and nowhere else to speak of.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.bench.samples import object_centres
from tests.fixtures.serve import ALLOW_LOOPBACK, ServeProcess
from tests.fixtures.streams import StreamSender

CHROMIUM = "/usr/bin/chromium"
WIDTH, HEIGHT, FPS = 480, 270, 10
TOKEN = "viewer-test-token"
DOCS = Path(__file__).resolve().parents[2] / "docs"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(420),
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM) or shutil.which("chromium") is None,
        reason="Debian's chromium is not installed (scripts/setup.sh installs it as root)",
    ),
]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    data = tmp_path_factory.mktemp("viewer-serve")
    args = [
        "--data-dir", str(data), "--weights", "random", "--image-size", "256", "--compile", "eager",
        "--allow-schemes", "udp", *ALLOW_LOOPBACK, "--encoder-gpus", "0", "--min-encoders", "1",
        "--max-encoders", "1", "--source-hosts", "1",
    ]  # fmt: skip
    serve = ServeProcess(args, data, TOKEN)
    serve.start()
    try:
        yield serve
    finally:
        serve.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile: no cookie from an earlier run
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
            viewport={"width": 1180, "height": 620},
        )
        try:
            yield context
        finally:
            context.close()


def _wait(page: Any, script: str, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = page.evaluate(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout_s:.0f} s (page: {page.inner_text('body')[:500]})")


def _mask_entry(api: httpx.Client, job: str, frame: int) -> dict[str, Any]:
    """The masks entry of ``frame`` as the API serves it (what the service published)."""
    params = {"count": "1", **({"after": f"{frame - 1}-1"} if frame > 0 else {})}
    [entry] = api.get(f"/streams/{job}/masks", params=params).json()["entries"]
    assert entry["frame"] == frame
    return entry


def _edges(rle: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(edge, inside) boolean maps of a mask: edge pixels are drawn in the track's solid colour."""
    mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior, mask


def _shown(page: Any, tmp_path: Path, name: str, track: int | None = None) -> tuple[int, np.ndarray]:
    """Freeze the page on a frame (one where ``track`` has a mask, if given: random weights may
    give an empty one); that frame's index and a screenshot of the canvas."""
    has_mask = f"t.id === {track} && t.state === 'active' && t.bbox"
    for _ in range(20):
        page.evaluate("window.samstreamViewer.pause(true)")
        time.sleep(0.4)  # a frame being drawn when paused finishes
        shown = page.evaluate("window.samstreamViewer.shown")
        if track is None or page.evaluate(f"window.samstreamViewer.shown.tracks.some(t => {has_mask})"):
            break
        page.evaluate("window.samstreamViewer.pause(false)")
        time.sleep(0.3)
    else:
        raise AssertionError(f"no frame with a mask of track {track} on screen")
    shot = tmp_path / f"{name}.png"
    box = page.locator("#view").bounding_box()
    assert all(float(v).is_integer() for v in box.values()), f"the canvas is off the pixel grid: {box}"
    page.locator("#view").screenshot(path=str(shot))
    page.screenshot(path=str(tmp_path / f"{name}-page.png"))
    picture = np.asarray(Image.open(shot).convert("RGB"))
    page.evaluate("window.samstreamViewer.pause(false)")
    return int(shown["frame"]), picture


def _colour_at(picture: np.ndarray, where: np.ndarray, colour: list[int]) -> float:
    """The fraction of ``where``'s pixels that hold ``colour`` exactly (within 2 levels)."""
    if not where.any():
        return 0.0
    close = np.abs(picture.astype(int) - np.asarray(colour)).max(axis=2) <= 2
    return float(close[where].mean())


def _active(entry: dict[str, Any], track: int) -> dict[str, Any] | None:
    found = [t for t in entry["tracks"] if t["track_id"] == track and t["state"] == "active" and t["bbox"]]
    return found[0] if found else None


def _check_drawn(
    api: httpx.Client, job: str, frame: int, picture: np.ndarray, track: int, colour: list[int]
) -> float:
    """The track's colour is on the edge of its mask of ``frame``, and (almost) nowhere else."""
    entry = _mask_entry(api, job, frame)
    assert picture.shape[:2] == (entry["height"], entry["width"])
    t = _active(entry, track)
    assert t is not None, f"track {track} is not active on frame {frame}: {entry['tracks']}"
    edge, inside = _edges(t["rle"])
    on_edge = _colour_at(picture, edge, colour)
    elsewhere = _colour_at(picture, ~inside, colour)
    assert on_edge > 0.9, f"track {track}'s colour on {on_edge:.0%} of its mask's edge"
    assert elsewhere < 0.01, f"track {track}'s colour on {elsewhere:.1%} of the pixels outside its mask"
    return on_edge


def test_the_viewer_follows_a_live_stream_and_adds_and_removes_tracks(
    service: ServeProcess, browser: Any, tmp_path: Path
) -> None:
    base = f"http://127.0.0.1:{service.port}"
    with StreamSender("udp", fps=FPS, width=WIDTH, height=HEIGHT) as sender, service.api() as api:
        x, y = object_centres(0, WIDTH, HEIGHT)[0]
        body = {
            "source": sender.url,
            "job_id": "cam",
            "tracks": [{"id": 1, "points": [[float(x), float(y)]]}],
            # random weights: keep every mask active (no memory to judge them by, and their arbitrary
            # masks may overlap: each track keeps its own)
            "tracking": {"min_score": 0, "min_area": 0, "memory": False, "exclusive": False},
        }
        assert api.post("/streams", json=body).status_code == 201
        page = browser.new_page()
        refused: list[str] = []  # what the pages' content security policy blocked: nothing, wanted
        page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)

        # A wrong token: the login form says so, and the page's session gets no data.
        page.goto(f"{base}/view/jobs/cam")
        page.fill("#token", "not-the-token")
        page.click("button[type=submit]")
        page.wait_for_selector("#login-error:has-text('Wrong token')")
        status = page.evaluate("fetch('/view/api/jobs/cam/frames').then(r => r.status)")
        assert status == 401

        page.fill("#token", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector("#view")
        cookies = browser.cookies()
        assert [c["httpOnly"] for c in cookies] == [True] and TOKEN not in cookies[0]["value"]

        # Track 1 is drawn over the frame within a few seconds.
        _wait(
            page, "window.samstreamViewer.drawn.some(d => d.tracks.includes(1))", 90, "no frame with track 1"
        )
        colour1 = page.evaluate("window.samstreamViewer.colour(1)")
        frame, picture = _shown(page, tmp_path, "track-1", track=1)
        on_edge = _check_drawn(api, "cam", frame, picture, 1, colour1)
        print(f"track 1 on frame {frame}: its colour on {on_edge:.0%} of its mask's edge")

        # A click on the second object adds track 2, in its own colour.
        shown = int(page.evaluate("window.samstreamViewer.shown.frame"))
        x2, y2 = object_centres(shown, WIDTH, HEIGHT)[1]
        box = page.locator("#view").bounding_box()
        page.mouse.click(
            box["x"] + float(x2) * box["width"] / WIDTH, box["y"] + float(y2) * box["height"] / HEIGHT
        )
        page.wait_for_selector("#message:has-text('added track 2')")
        _wait(page, "window.samstreamViewer.drawn.some(d => d.tracks.includes(2))", 30, "track 2 never drawn")
        colour2 = page.evaluate("window.samstreamViewer.colour(2)")
        assert colour2 != colour1
        frame, picture = _shown(page, tmp_path, "track-2", track=2)
        _check_drawn(api, "cam", frame, picture, 2, colour2)
        if os.environ.get("SAMSTREAM_WRITE_DOCS") == "1":  # the README's picture, made here
            page.screenshot(path=str(DOCS / "viewer.png"))

        # Removing it from the track list: its colour goes.
        page.click("li[data-track='2'] button.remove")
        page.wait_for_selector("#message:has-text('removed track 2')")
        since = len(page.evaluate("window.samstreamViewer.drawn"))
        _wait(
            page,
            f"window.samstreamViewer.drawn.slice({since}).filter(d => !d.tracks.includes(2)).length >= 3",
            30,
            "track 2 still drawn after its removal",
        )
        frame, picture = _shown(page, tmp_path, "track-2-removed")
        assert all(t["track_id"] != 2 for t in _mask_entry(api, "cam", frame)["tracks"])
        close = np.abs(picture.astype(int) - np.asarray(colour2)).max(axis=2) <= 2
        assert close.mean() < 0.001, f"track 2's colour on {close.mean():.2%} of the picture after removal"

        # Capture to screen, against the mask's own latency (capture to publish), same frames: over
        # 30 frames drawn after the first three (the page starts behind).
        _wait(page, "window.samstreamViewer.drawn.length >= 33", 60, "fewer than 33 frames drawn")
        drawn = page.evaluate("window.samstreamViewer.drawn")
        screen = [d["drawn_at"] - d["capture_time"] for d in drawn[3:]]
        published = [d["publish_time"] - d["capture_time"] for d in drawn[3:] if d["publish_time"]]
        gaps = [b["capture_time"] - a["capture_time"] for a, b in itertools.pairwise(drawn)]
        report = {
            "frames_drawn": len(drawn),
            "capture_to_screen_median_ms": round(1000 * statistics.median(screen)),
            "capture_to_screen_p90_ms": round(1000 * statistics.quantiles(screen, n=10)[-1]),
            "capture_to_publish_median_ms": round(1000 * statistics.median(published)),
            "frame_interval_median_ms": round(1000 * statistics.median(gaps)),
        }
        print("viewer latency:", json.dumps(report))
        (tmp_path / "latency.json").write_text(json.dumps(report))
        # The goal: on screen within one processed frame and 100 ms of the mask's own latency.
        extra = statistics.median(screen) - statistics.median(published)
        assert extra < statistics.median(gaps) + 0.1, report

        # A drag adds a box track (3); Re-prompt, then a shift-click, gives track 1 a point that is
        # not on it. The job applies both: its events say so.
        box = page.locator("#view").bounding_box()
        page.mouse.move(box["x"] + 20, box["y"] + 150)
        page.mouse.down()
        page.mouse.move(box["x"] + 140, box["y"] + 250, steps=5)
        page.mouse.up()
        page.wait_for_selector("#message:has-text('added track 3')")
        page.click("li[data-track='1'] button:has-text('Re-prompt')")
        page.keyboard.down("Shift")
        page.mouse.click(box["x"] + 400, box["y"] + 200)
        page.keyboard.up("Shift")
        page.wait_for_selector("#message:has-text('re-prompted track 1')")
        wanted = {("track_added", 3), ("track_reprompted", 1)}
        deadline = time.monotonic() + 30
        while not wanted <= {
            (e["type"], e["track"]) for e in api.get("/streams/cam/events").json()["events"]
        }:
            assert time.monotonic() < deadline, api.get("/streams/cam/events").json()
            time.sleep(0.3)

        # The list page shows the stream; the job page's Stop button ends it.
        page.goto(f"{base}/view")
        page.wait_for_selector("#jobs a[href='/view/jobs/cam']")
        row = page.locator("#jobs tr", has=page.locator("a[href='/view/jobs/cam']")).inner_text()
        assert "stream" in row and "running" in row
        page.click("#jobs a[href='/view/jobs/cam']")
        page.wait_for_selector("#stop:has-text('Stop stream'):not([disabled])")
        page.click("#stop")
        page.wait_for_function(
            "() => /^(cancelled|succeeded)/.test(document.getElementById('status').textContent)",
            timeout=60_000,
        )
        assert api.get("/streams/cam").json()["status"] in ("cancelled", "succeeded")

        # Signing out ends the session in the service: the same cookie, replayed, is refused.
        [cookie] = browser.cookies()
        page.click("#logout")
        page.wait_for_selector("#login")
        replayed = httpx.get(f"{base}/view/api/jobs", cookies={cookie["name"]: cookie["value"]})
        assert replayed.status_code == 401
        assert refused == []


def test_the_viewers_toggle_pauses_and_resumes_a_streams_discovery(
    service: ServeProcess, browser: Any, tmp_path: Path
) -> None:
    base = f"http://127.0.0.1:{service.port}"
    with StreamSender("udp", fps=FPS, width=WIDTH, height=HEIGHT) as sender, service.api() as api:
        # random weights: any candidate will do (the toggle is what is tested here)
        discover = {"every_s": 0.5, "grid": 4, "min_score": 0, "min_stability": 0, "max_tracks": 2}
        assert (
            api.post(
                "/streams", json={"source": sender.url, "job_id": "found", "discover": discover}
            ).status_code
            == 201
        )
        page = browser.new_page()
        page.goto(f"{base}/view/jobs/found")
        page.fill("#token", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector("#discovery:has-text('Pause discovery'):not([disabled])")

        def events() -> list[str]:
            return [e["type"] for e in api.get("/streams/found/events").json()["events"]]

        def wait_event(kind: str) -> None:
            deadline = time.monotonic() + 60
            while kind not in events():
                assert time.monotonic() < deadline, events()
                time.sleep(0.3)

        page.click("#discovery")
        page.wait_for_selector("#message:has-text('discovery paused')")
        page.wait_for_selector("#discovery:has-text('Resume discovery')")
        wait_event("discovery_paused")
        page.click("#discovery")
        page.wait_for_selector("#message:has-text('discovery resumes')")
        wait_event("discovery_resumed")
        assert events().index("discovery_paused") < events().index("discovery_resumed")
        assert api.delete("/streams/found").status_code == 202
