"""The API's retention rules over a real Redis: how long a job's data stays, deleting it at once,
and how many masks entries a job or stream keeps."""

from __future__ import annotations

import time

import pytest
import redis
from fastapi.testclient import TestClient

from pipeline.api import ApiSettings, create_app
from pipeline.errors import InvalidInputError
from pipeline.ledger import JobStatus, JobStore
from pipeline.streams import Keys, Publisher
from pipeline.streams.control import Command, send
from pipeline.streams.retention import DEFAULT_KEEP_S
from tests.pipeline.api.conftest import AUTH, TOKEN, RecordingBackend
from tests.pipeline.api.test_app import JOB, STREAM

pytestmark = pytest.mark.integration


def _store(redis_client: redis.Redis, prefix: str) -> JobStore:
    return JobStore(redis_client, Keys(prefix))


# -- maxlen -----------------------------------------------------------------------------------------


def test_a_stream_keeps_the_clis_default_entries_and_a_job_keeps_all(
    api: TestClient, redis_client: redis.Redis, prefix: str
) -> None:
    stream = api.post("/streams", json=STREAM).json()
    job = api.post("/jobs", json=JOB).json()
    store = _store(redis_client, prefix)
    assert store.get(stream["id"]).spec["maxlen"] == 10_000
    assert store.get(job["id"]).spec["maxlen"] is None
    asked = api.post("/streams", json={**STREAM, "maxlen": 500}).json()
    assert store.get(asked["id"]).spec["maxlen"] == 500


def test_a_maxlen_above_the_services_maximum_is_422(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend
) -> None:
    api = TestClient(create_app(settings, redis_client, backend), headers=AUTH)
    for kind, body in (("/streams", STREAM), ("/jobs", JOB)):
        assert api.post(kind, json={**body, "maxlen": 1_000_000}).status_code == 201
        r = api.post(kind, json={**body, "maxlen": 1_000_001})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "maxlen"]
        assert "at most 1000000" in r.json()["detail"][0]["msg"]
    small = ApiSettings(token=TOKEN, prefix=settings.prefix, max_maxlen=100)
    api = TestClient(create_app(small, redis_client, backend), headers=AUTH)
    assert api.post("/streams", json={**STREAM, "maxlen": 101}).status_code == 422
    assert backend.submitted and len(backend.submitted) == 2  # the refused ones never reached it


# -- keep -------------------------------------------------------------------------------------------


def test_a_job_is_kept_the_services_time_or_less_once_it_ends(
    api: TestClient, redis_client: redis.Redis, prefix: str
) -> None:
    job = api.post("/jobs", json=JOB).json()
    assert job["keep_s"] == DEFAULT_KEEP_S and job["expires"] is None
    assert int(redis_client.ttl(Keys(prefix).job(job["id"]))) == -1  # type: ignore[arg-type]
    ended = api.delete(f"/jobs/{job['id']}").json()  # queued: cancelled at once
    assert ended["status"] == "cancelled"
    assert ended["expires"] == pytest.approx(ended["finished"] + DEFAULT_KEEP_S)
    for key in Keys(prefix).of_job(job["id"]):
        if redis_client.exists(key):
            assert DEFAULT_KEEP_S - 10 < int(redis_client.ttl(key)) <= DEFAULT_KEEP_S  # type: ignore[arg-type]
    short = api.post("/streams", json={**STREAM, "keep_s": 60}).json()
    assert short["keep_s"] == 60 and _store(redis_client, prefix).get(short["id"]).keep_s == 60


def test_a_keep_above_the_services_maximum_is_422(
    api: TestClient, settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend
) -> None:
    r = api.post("/jobs", json={**JOB, "keep_s": DEFAULT_KEEP_S + 1})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "keep_s"]
    assert "at most 604800 (7d" in r.json()["detail"][0]["msg"]
    assert api.post("/jobs", json={**JOB, "keep_s": 0}).status_code == 422
    longer = ApiSettings(token=TOKEN, prefix=settings.prefix, keep_s=3600, max_keep_s=30 * 86_400)
    api = TestClient(create_app(longer, redis_client, backend), headers=AUTH)
    assert api.post("/jobs", json=JOB).json()["keep_s"] == 3600
    assert api.post("/jobs", json={**JOB, "keep_s": 30 * 86_400}).json()["keep_s"] == 30 * 86_400
    with pytest.raises(InvalidInputError, match=r"--keep \(14d\) is longer than --max-keep \(7d\)"):
        ApiSettings(token=TOKEN, keep_s=14 * 86_400, max_keep_s=DEFAULT_KEEP_S)
    with pytest.raises(InvalidInputError, match=r"--keep \(never\) is longer"):
        ApiSettings(token=TOKEN, keep_s=None)
    assert ApiSettings(token=TOKEN, keep_s=None, max_keep_s=None).keep_of(None) is None


@pytest.mark.slow
def test_an_expired_job_is_gone_from_the_listing_and_its_routes(
    api: TestClient, redis_client: redis.Redis, prefix: str
) -> None:
    old = api.post("/jobs", json={**JOB, "keep_s": 1}).json()
    kept = api.post("/jobs", json={**JOB, "keep_s": 1}).json()
    api.delete(f"/jobs/{old['id']}")  # queued: cancelled at once, expires in 1 s
    time.sleep(2.2)
    assert [j["id"] for j in api.get("/jobs").json()["items"]] == [kept["id"]]
    assert api.get(f"/jobs/{old['id']}").status_code == 404
    assert api.get(f"/jobs/{old['id']}/events").status_code == 404
    assert redis_client.exists(*Keys(prefix).of_job(old["id"])) == 0
    assert redis_client.zrange(Keys(prefix).jobs_index(), 0, -1) == [kept["id"]]


# -- delete -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "body"), [("jobs", JOB), ("streams", STREAM)])
def test_delete_data_removes_every_key_of_an_ended_job_at_once(
    api: TestClient, redis_client: redis.Redis, prefix: str, kind: str, body: dict[str, object]
) -> None:
    keys = Keys(prefix)
    job_id = api.post(f"/{kind}", json=body).json()["id"]
    store = _store(redis_client, prefix)
    store.set_status(job_id, JobStatus.RUNNING)
    Publisher(redis_client, keys, job_id).event("track_lost", track=1)
    send(redis_client, keys, job_id, Command("remove", 1))

    r = api.delete(f"/{kind}/{job_id}/data")
    assert r.status_code == 409 and "cancel it first" in r.json()["detail"]
    assert redis_client.exists(keys.job(job_id), keys.events(job_id), keys.control(job_id)) == 3

    store.set_status(job_id, JobStatus.RUNNING)
    store.set_status(job_id, JobStatus.SUCCEEDED)
    r = api.delete(f"/{kind}/{job_id}/data")
    assert r.status_code == 204 and r.content == b""
    assert redis_client.exists(*keys.of_job(job_id)) == 0
    assert job_id not in redis_client.zrange(keys.jobs_index(), 0, -1)
    assert api.get(f"/{kind}/{job_id}").status_code == 404
    assert api.delete(f"/{kind}/{job_id}/data").status_code == 404


def test_delete_data_of_no_such_job_or_the_other_kind_is_404(api: TestClient) -> None:
    assert api.delete("/jobs/ghost/data").status_code == 404
    stream = api.post("/streams", json=STREAM).json()
    api.delete(f"/streams/{stream['id']}")  # cancelled
    r = api.delete(f"/jobs/{stream['id']}/data")
    assert r.status_code == 404 and "under /streams" in r.json()["detail"]
    queued = api.post("/jobs", json=JOB).json()
    r = api.delete(f"/jobs/{queued['id']}/data")
    assert r.status_code == 409 and r.json()["detail"] == (
        f"job {queued['id']} is queued: cancel it first (DELETE /jobs/{queued['id']})"
    )


def test_the_delete_route_is_in_the_openapi_spec(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    for kind in ("jobs", "streams"):
        op = spec["paths"][f"/{kind}/{{job_id}}/data"]["delete"]
        assert {"204", "404", "409"} <= set(op["responses"])
        assert "content" not in op["responses"]["204"]
