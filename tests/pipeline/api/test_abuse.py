"""What a client with bad intent sends: bombs in mask prompts, malformed sign-ins, guessed tokens,
stolen cookies after sign-out, ids a URL rewrites, pages framed by another site."""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

import numpy as np
import psutil
import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.api import ApiSettings, create_app
from pipeline.api.viewer.sessions import COOKIE, LOGIN_FAILURES
from pipeline.ledger import JobStore
from pipeline.masks.rle import encode_rle
from pipeline.streams import Keys
from tests.pipeline.api.conftest import TOKEN, RecordingBackend
from tests.pipeline.masks.test_rle_untrusted import WRAP, oracle, oracle_mask

CSRF = {"X-Samstream-Viewer": "1"}
STREAM = "rtsp://cam.example:8554/live"


def _stream(mask: dict[str, Any], job_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"source": STREAM, "tracks": [{"id": 1, "mask": mask}]}
    if job_id is not None:
        body["job_id"] = job_id
    return body


# --- mask prompts --------------------------------------------------------------------------------


def test_the_int64_wrap_is_a_422_and_the_service_keeps_answering(api: TestClient) -> None:
    started = time.perf_counter()
    r = api.post("/streams", json=_stream(WRAP))
    took = time.perf_counter() - started
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "tracks", 0]
    assert "9223372036854775807 pixels long" in r.json()["detail"][0]["msg"]
    assert took < 5  # a bound on a hang, not a speed target
    assert api.get("/healthz").json() == {"status": "ok", "redis": True}
    ok = encode_rle(np.eye(4, 6, dtype=bool))
    assert api.post("/streams", json={**_stream(ok), "source": STREAM}).status_code == 201


def test_a_mask_over_the_frame_limit_is_refused_before_it_is_read(api: TestClient) -> None:
    n = 20_000
    bomb = {"size": [n, n], "counts": [0, 1, 0, n * n - 1]}
    small = {"size": [100, 100], "counts": [0, 1, 0, 100 * 100 - 1]}
    assert api.post("/streams", json=_stream(small)).status_code == 201  # warm: imports, first answers
    gc.collect()
    before = psutil.Process().memory_info().rss
    r = api.post("/streams", json=_stream(bomb))
    grown = psutil.Process().memory_info().rss - before
    assert r.status_code == 422, r.text
    assert "400000000 pixels, more than the 35389440" in r.json()["detail"][0]["msg"]
    assert grown < 10 * 2**20, f"RSS grew {grown / 2**20:.1f} MB"


def test_the_limit_is_the_services_max_frame_pixels(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend
) -> None:
    small = ApiSettings(token=TOKEN, prefix=settings.prefix, max_frame_pixels=640 * 480)
    with TestClient(
        create_app(small, redis_client, backend), headers={"Authorization": f"Bearer {TOKEN}"}
    ) as api:
        fits = {"size": [480, 640], "counts": [0, 640 * 480]}
        over = {"size": [481, 640], "counts": [0, 640 * 481]}
        assert api.post("/streams", json=_stream(fits)).status_code == 201
        r = api.post("/streams", json=_stream(over))
        assert r.status_code == 422 and "more than the 307200" in r.text
        api.post("/streams", json=_stream(fits, "cam"))
        r = api.post("/streams/cam/tracks", json={"id": 2, "mask": over})
        assert r.status_code == 422 and "more than the 307200" in r.text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.tuples(st.integers(0, 8), st.integers(0, 8)).map(list),
        st.sampled_from([[1, 2], [20_000, 20_000], [2**32, 2**32], [2**63, 1], [-1, 4], [10**30, 10**30]]),
    ),
    st.one_of(
        st.lists(
            st.one_of(st.integers(0, 12), st.sampled_from([2**63 - 1, 2**64, -(2**63), 10**30])), max_size=8
        ),
        st.text(alphabet=[chr(c) for c in range(48, 112)], max_size=16),
    ),
)
def test_any_mask_prompt_is_a_422_or_the_right_mask(api: TestClient, size: list[int], counts: Any) -> None:
    rle = {"size": size, "counts": counts}
    r = api.post("/jobs", json={"source": "https://videos.example/a.mp4", "tracks": [{"id": 1, "mask": rle}]})
    assert r.status_code in (201, 422), r.text
    want = oracle(rle)
    if r.status_code == 422:
        return
    assert want is not None
    stored = r.json()["tracks"][0]["mask"]
    assert stored == encode_rle(oracle_mask(*want))
    api.delete(f"/jobs/{r.json()['id']}")


# --- sign-in -------------------------------------------------------------------------------------


@pytest.fixture
def browser(settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend) -> TestClient:
    return TestClient(create_app(settings, redis_client, backend))


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, 400, id="nested-brackets"),
        pytest.param(b'{"token": "\\ud800"}', 422, id="lone-surrogate"),
        pytest.param(b"not json", 400, id="not-json"),
        pytest.param(b"\xff\xfe\x00", 400, id="not-utf8"),
        pytest.param(b'["token"]', 422, id="a-list"),
        pytest.param(b'{"token": 5}', 422, id="token-a-number"),
        pytest.param(b"{}", 422, id="no-token"),
    ],
)
def test_a_malformed_sign_in_is_a_4xx_without_a_traceback(
    browser: TestClient, caplog: pytest.LogCaptureFixture, body: bytes, status: int
) -> None:
    with caplog.at_level(logging.DEBUG):
        r = browser.post("/view/login", content=body, headers={**CSRF, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert "detail" in r.json()
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR or rec.exc_info]


def test_signing_out_ends_the_session_for_every_copy_of_its_cookie(
    browser: TestClient, settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend
) -> None:
    assert browser.post("/view/login", json={"token": TOKEN}, headers=CSRF).status_code == 204
    stolen = browser.cookies[COOKIE]
    assert browser.get("/view/api/jobs").status_code == 200
    assert browser.post("/view/logout", headers=CSRF).status_code == 204
    # Another client (another API process too: the record is in Redis) replays the old cookie.
    other = TestClient(create_app(settings, redis_client, backend))
    other.cookies.set(COOKIE, stolen)
    assert other.get("/view/api/jobs").status_code == 401
    assert other.get("/view").status_code == 401  # the login page
    assert other.post("/streams", json=_stream(WRAP), headers=CSRF).status_code == 401
    # A new sign-in works again.
    assert browser.post("/view/login", json={"token": TOKEN}, headers=CSRF).status_code == 204
    assert browser.get("/view/api/jobs").status_code == 200


def test_failed_sign_ins_are_limited_per_address(
    browser: TestClient, redis_client: redis.Redis, prefix: str
) -> None:
    for _ in range(LOGIN_FAILURES):
        assert browser.post("/view/login", json={"token": "guess"}, headers=CSRF).status_code == 401
    r = browser.post("/view/login", json={"token": "guess"}, headers=CSRF)
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    # Refused whatever the token, until the window ends.
    r = browser.post("/view/login", json={"token": TOKEN}, headers=CSRF)
    assert r.status_code == 429 and COOKIE not in browser.cookies
    # The window ends (expired here at once): the right token works, and clears the count.
    redis_client.delete(Keys(prefix).login_failures("testclient"))
    assert browser.post("/view/login", json={"token": "guess"}, headers=CSRF).status_code == 401
    assert browser.post("/view/login", json={"token": TOKEN}, headers=CSRF).status_code == 204
    assert not redis_client.exists(Keys(prefix).login_failures("testclient"))


def test_a_session_lookup_without_redis_is_a_503(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend
) -> None:
    browser = TestClient(create_app(settings, redis_client, backend))
    assert browser.post("/view/login", json={"token": TOKEN}, headers=CSRF).status_code == 204
    cookie = browser.cookies[COOKIE]
    dead = redis.Redis(port=1, socket_connect_timeout=0.2)
    down = TestClient(create_app(settings, dead, backend))
    down.cookies.set(COOKIE, cookie)
    r = down.get("/view/api/jobs")
    assert r.status_code == 503 and "error id" in r.json()["detail"]


# --- ids and headers -----------------------------------------------------------------------------


@pytest.mark.parametrize("job_id", [".", ".."])
def test_ids_a_url_would_rewrite_are_refused(api: TestClient, job_id: str) -> None:
    ok = encode_rle(np.eye(4, 6, dtype=bool))
    r = api.post("/streams", json=_stream(ok, job_id))
    assert r.status_code == 422 and "job_id" in str(r.json()["detail"])


def test_ids_with_dots_that_stay_put_are_accepted(
    api: TestClient, redis_client: redis.Redis, prefix: str
) -> None:
    ok = encode_rle(np.eye(4, 6, dtype=bool))
    for job_id in ("...", ".a", "a.", "cam.1"):
        assert api.post("/streams", json=_stream(ok, job_id)).status_code == 201, job_id
        assert api.get(f"/streams/{job_id}").json()["id"] == job_id
    assert JobStore(redis_client, Keys(prefix)).get("...").job_id == "..."


def test_every_answer_forbids_framing_and_sniffing(browser: TestClient, api: TestClient) -> None:
    answers = [
        browser.get("/view"),  # the login page, 401
        browser.get("/view/login"),
        browser.get("/view/static/job.js"),
        browser.get("/jobs"),  # 401 JSON
        api.get("/jobs"),
        api.get("/healthz"),
    ]
    for r in answers:
        assert r.headers["x-frame-options"] == "DENY", r.url
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], r.url
    page = browser.get("/view/login").headers["content-security-policy"]
    assert "default-src 'self'" in page and "img-src 'self' data:" in page
