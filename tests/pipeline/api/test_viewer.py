"""The viewer's routes and sessions over a real Redis: login, cookie rules, CSRF, frames with masks."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from pipeline.api import ApiSettings, create_app
from pipeline.api.viewer.routes import static_dir
from pipeline.api.viewer.sessions import COOKIE, Sessions
from pipeline.ledger import JobStatus, JobStore
from pipeline.ledger.sink import RedisSink
from pipeline.masks.render import PALETTE
from pipeline.streams import Keys
from tests.pipeline.api.conftest import TOKEN, RecordingBackend
from tests.pipeline.streams.conftest import make_result

CSRF = {"X-Samstream-Viewer": "1"}
STREAM = {"source": "rtsp://cam.example:8554/live", "tracks": [{"id": 1, "box": [0, 0, 50, 40]}]}


@pytest.fixture
def browser(settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend) -> TestClient:
    """A client with no token: what a browser is before it signs in."""
    return TestClient(create_app(settings, redis_client, backend))


def _sign_in(browser: TestClient, token: str = TOKEN) -> int:
    return browser.post("/view/login", json={"token": token}, headers=CSRF).status_code


def _published(redis_client: redis.Redis, prefix: str, job_id: str, frames: int) -> None:
    """A running stream whose frames (masks entries and previews) the real sink wrote."""
    store = JobStore(redis_client, Keys(prefix))
    store.create(job_id, {**STREAM, "live": True})
    store.set_status(job_id, JobStatus.RUNNING)
    sink = RedisSink(redis_client, Keys(prefix), job_id)
    sink.publish_many([(make_result(i, preview=True), None) for i in range(frames)])


def test_without_a_session_pages_are_the_login_form_and_data_is_refused(browser: TestClient) -> None:
    for path in ("/view", "/view/jobs/j1"):
        r = browser.get(path)
        assert r.status_code == 401 and '<form id="login"' in r.text
    for path in ("/view/api/jobs", "/view/api/jobs/j1", "/view/api/jobs/j1/frames", "/jobs"):
        assert browser.get(path).status_code == 401
    assert browser.get("/view/static/job.js").status_code == 200  # code, no data
    assert browser.get("/view/login").status_code == 200


def test_a_wrong_token_gets_no_session(browser: TestClient) -> None:
    assert _sign_in(browser, "wrong") == 401
    assert COOKIE not in browser.cookies
    assert browser.get("/view/api/jobs").status_code == 401
    # A cookie this service did not sign is no session either.
    browser.cookies.set(COOKIE, "nonce.99999999999.deadbeef")
    assert browser.get("/view/api/jobs").status_code == 401


def test_a_session_cookie_is_httponly_strict_and_not_the_token(browser: TestClient) -> None:
    r = browser.post("/view/login", json={"token": TOKEN}, headers=CSRF)
    assert r.status_code == 204
    header = r.headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/" in header
    value = browser.cookies[COOKIE]
    assert TOKEN not in value and TOKEN not in header
    assert browser.get("/view/api/jobs").status_code == 200
    assert browser.get("/view").status_code == 200 and "jobs" in browser.get("/view").text


def test_login_needs_the_csrf_header(browser: TestClient) -> None:
    assert browser.post("/view/login", json={"token": TOKEN}).status_code == 403
    assert COOKIE not in browser.cookies


def test_a_session_changes_things_only_with_the_csrf_header(
    browser: TestClient, redis_client: redis.Redis, prefix: str
) -> None:
    _published(redis_client, prefix, "cam", 2)
    assert _sign_in(browser) == 204
    body = {"id": 2, "points": [[5, 6]]}
    r = browser.post("/streams/cam/tracks", json=body)
    assert r.status_code == 403 and "x-samstream-viewer" in r.json()["detail"]
    assert browser.post("/streams/cam/tracks", json=body, headers=CSRF).status_code == 202
    assert browser.delete("/streams/cam/tracks/2", headers=CSRF).status_code == 202


def test_sessions_expire_and_end_with_another_token(redis_client: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    sessions = Sessions("t1", redis_client, keys, session_s=60)
    value = sessions.make(now=time.time() - 1000.0)
    assert sessions.signed(value, now=time.time() - 941.0) and not sessions.signed(
        value, now=time.time() - 939.0
    )
    value = sessions.make()
    assert sessions.valid(value)
    assert not Sessions("t2", redis_client, keys).valid(value)
    nonce, expiry, signature = value.split(".")
    assert not sessions.valid(f"{nonce}.{int(expiry) + 3600}.{signature}")  # no extending
    assert 0 < int(redis_client.ttl(keys.viewer_session(nonce))) <= 60  # the record expires with it


def test_the_newest_frame_comes_with_its_masks_entry(
    browser: TestClient, redis_client: redis.Redis, prefix: str
) -> None:
    _published(redis_client, prefix, "cam", 3)
    assert _sign_in(browser) == 204
    data = browser.get("/view/api/jobs/cam/frames").json()
    assert data["status"] == "running"
    [frame] = data["frames"]
    assert frame["id"] == "2-1" and frame["frame"] == 2
    assert (frame["width"], frame["height"]) == (32, 24)
    expected = make_result(2)
    assert [t["id"] for t in frame["tracks"]] == [t.track_id for t in expected.tracks]
    assert frame["tracks"][0]["rle"] == expected.tracks[0].rle
    picture = Image.open(io.BytesIO(base64.b64decode(frame["preview"]["jpeg"])))
    assert picture.size == (frame["preview"]["width"], frame["preview"]["height"])
    assert browser.get("/view/api/jobs/cam/frames", params={"after": "2-1"}).json()["frames"] == []
    assert browser.get("/view/api/jobs/cam/frames/0").json()["frame"] == 0
    assert browser.get("/view/api/jobs/cam/frames/9").status_code == 404
    assert browser.get("/view/api/jobs/nope/frames").status_code == 404


def test_the_list_shows_rates_and_drops(browser: TestClient, redis_client: redis.Redis, prefix: str) -> None:
    _published(redis_client, prefix, "cam", 5)
    JobStore(redis_client, Keys(prefix)).record_dropped("cam", 7)
    assert _sign_in(browser) == 204
    [job] = browser.get("/view/api/jobs").json()["items"]
    assert job["id"] == "cam" and job["kind"] == "stream" and job["status"] == "running"
    assert job["dropped"] == 7 and job["frames_done"] == 5
    assert job["latency_s"] is not None and job["fps"] is not None and job["fps"] > 0
    assert browser.get("/view/api/jobs/cam").json()["previews_kept"] == 5
    kept = browser.get("/view/api/jobs/cam/previews").json()["previews"]
    assert [p["frame"] for p in kept] == [0, 1, 2, 3, 4] and kept[0]["pts"] == 0.0


def test_the_page_colours_tracks_as_render_does() -> None:
    script = (static_dir() / "viewer.js").read_text()
    table = re.search(r"const PALETTE = \[(.*?)\];", script, re.S)
    assert table is not None
    colours = [
        tuple(int(v) for v in c.split(",")) for c in re.findall(r"\[(\d+, \d+, \d+)\]", table.group(1))
    ]
    assert colours == list(PALETTE)


@pytest.mark.skipif(shutil.which("node") is None, reason="no node to run the page's script outside a browser")
def test_the_pages_rle_decoder_matches_pycocotools(tmp_path: Path) -> None:
    """The page's COCO RLE decoder, run by node on masks pycocotools encoded: the same pixels."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(7)
    masks = [rng.random((37, 53)) > p for p in (0.2, 0.5, 0.97)]
    masks.append(np.zeros((40, 30), bool))
    masks.append(np.ones((1200, 1900), bool))  # long runs: counts of several characters
    rles = []
    for m in masks:
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        rles.append({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()})
    harness = tmp_path / "decode.js"
    harness.write_text(
        "global.window = {};\n"
        + (static_dir() / "viewer.js").read_text()
        + "\nconst rles = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
        "console.log(JSON.stringify(rles.map(r => Array.from(window.samstreamViewer.decodeRle(r)"
        ".reduce((a, v, i) => (v && a.push(i), a), [])))));\n"
    )
    out = subprocess.run(
        ["node", str(harness)], input=json.dumps(rles), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    for m, on in zip(masks, json.loads(out.stdout), strict=True):
        assert on == np.flatnonzero(m.ravel()).tolist()  # row-major indices of the mask's pixels
