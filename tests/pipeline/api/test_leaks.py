"""What the API must not tell: a source's credentials and query, the text of its own errors (a
generic message with an id instead, the log holds the rest), Redis's address."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from pipeline.api import ApiSettings, create_app
from pipeline.ledger import JobStatus, JobStore
from pipeline.streams import EmbeddedRedis, Keys, Publisher, connect
from tests.pipeline.api.conftest import AUTH, RecordingBackend

SECRET_SOURCE = "https://alice:pa55word@videos.example/clip.mp4?X-Amz-Signature=f00dfeed#t=10"
SHOWN = "https://alice:***@videos.example/clip.mp4?…"
SECRETS = ("pa55word", "X-Amz-Signature", "f00dfeed", "t=10")
ERROR_ID = re.compile(r"id ([0-9a-f]{12})")


def _clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked: {text}"


# -- sources ----------------------------------------------------------------------------------------


def test_job_views_carry_the_source_redacted(api: TestClient, redis_client: redis.Redis, prefix: str) -> None:
    created = api.post("/jobs", json={"source": SECRET_SOURCE, "tracks": [{"id": 1, "points": [[1, 2]]}]})
    assert created.status_code == 201 and created.json()["source"] == SHOWN
    job = created.json()["id"]
    for path in (f"/jobs/{job}", "/jobs", f"/jobs/{job}/events"):
        r = api.get(path)
        assert r.status_code == 200
        _clean(r.text)
    assert api.get(f"/jobs/{job}").json()["source"] == SHOWN
    # the runner still reads the source as given
    assert JobStore(redis_client, Keys(prefix)).get(job).spec["source"] == SECRET_SOURCE


def test_a_stream_with_a_token_in_its_user_name_is_redacted(api: TestClient) -> None:
    body = {
        "source": "rtsp://ghp_T0k3nT0k3n@cam.example:8554/live",
        "tracks": [{"id": 1, "box": [0, 0, 5, 5]}],
    }
    created = api.post("/streams", json=body).json()
    assert created["source"] == "rtsp://***@cam.example:8554/live"
    assert "ghp_T0k3nT0k3n" not in api.get("/streams").text


def test_errors_and_events_that_name_the_source_are_redacted(
    api: TestClient, redis_client: redis.Redis, prefix: str
) -> None:
    job = api.post("/jobs", json={"source": SECRET_SOURCE, "tracks": [{"id": 1, "points": [[1, 2]]}]})
    job_id = job.json()["id"]
    keys = Keys(prefix)
    # what the runner writes, with the source as FFmpeg quotes it (and its password decoded)
    publisher = Publisher(redis_client, keys, job_id)
    publisher.event("reconnect", detail=f"lost {SECRET_SOURCE}, opening it again")
    publisher.event(
        "error", detail="auth failed for alice:pa55word", data={"url": SECRET_SOURCE, "n": [SECRET_SOURCE, 3]}
    )
    JobStore(redis_client, keys).set_status(
        job_id, JobStatus.FAILED, f"cannot open {SECRET_SOURCE}: 403 Forbidden"
    )

    view = api.get(f"/jobs/{job_id}").json()
    assert view["error"] == f"cannot open {SHOWN}: 403 Forbidden"
    events = api.get(f"/jobs/{job_id}/events").json()["events"]
    _clean(str(events))
    by_type = {e["type"]: e for e in events}
    assert by_type["reconnect"]["detail"] == f"lost {SHOWN}, opening it again"
    assert by_type["error"]["detail"] == "auth failed for alice:***"
    assert by_type["error"]["data"] == {"url": SHOWN, "n": [SHOWN, 3]}
    assert events[-1]["data"]["error"] == f"cannot open {SHOWN}: 403 Forbidden"  # the status event


# -- internal errors --------------------------------------------------------------------------------


class BrokenBackend(RecordingBackend):
    """A backend whose cluster answers with an error naming its insides."""

    def running(self, job_id: str) -> bool:
        raise RuntimeError("Ray GCS at 10.4.2.7:6380 (head-0.cluster.local) is gone")


def test_an_unexpected_error_is_a_500_with_an_id_the_log_holds(
    settings: ApiSettings, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    api = TestClient(create_app(settings, redis_client, BrokenBackend()), headers=AUTH)
    job = api.post(
        "/jobs", json={"source": "https://h.example/a.mp4", "tracks": [{"id": 1, "points": [[1, 1]]}]}
    )
    JobStore(redis_client, Keys(settings.prefix)).set_status(job.json()["id"], JobStatus.RUNNING)
    r = api.delete(f"/jobs/{job.json()['id']}")
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    detail = r.json()["detail"]
    assert detail.startswith("internal error (id ") and "10.4.2.7" not in r.text and "cluster" not in r.text
    error_id = ERROR_ID.search(detail).group(1)  # type: ignore[union-attr]
    [record] = [rec for rec in caplog.records if error_id in rec.getMessage()]
    assert record.levelname == "ERROR" and record.exc_info is not None
    assert (
        "10.4.2.7:6380" in str(record.exc_info[1])
        and f"DELETE /jobs/{job.json()['id']}" in record.getMessage()
    )
    # the next request is served as usual
    assert api.get("/healthz").status_code == 200


@pytest.fixture
def doomed_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis server of the test's own, to stop or starve."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server


def test_redis_down_is_a_503_that_names_no_address(
    settings: ApiSettings, doomed_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect(doomed_redis.url)
    api = TestClient(create_app(settings, client, RecordingBackend()), headers=AUTH)
    assert api.get("/jobs").status_code == 200
    port = str(doomed_redis.port)
    doomed_redis.stop()
    for method, path in (("GET", "/jobs"), ("GET", "/healthz"), ("GET", "/streams/x/events")):
        r = api.request(method, path)
        assert r.status_code == 503, (path, r.text)
        assert "127.0.0.1" not in r.text and port not in r.text and "Error" not in r.text
        error_id = ERROR_ID.search(r.json()["detail"]).group(1)  # type: ignore[union-attr]
        assert any(error_id in rec.getMessage() for rec in caplog.records)
        if path != "/healthz":
            assert r.headers["retry-after"] == "5"


def test_redis_refusing_writes_is_a_503_not_a_500(
    settings: ApiSettings, doomed_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect(doomed_redis.url)
    api = TestClient(create_app(settings, client, RecordingBackend()), headers=AUTH)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)  # every write is now refused with OOM, as a full Redis does
    r = api.post(
        "/jobs", json={"source": "https://h.example/a.mp4", "tracks": [{"id": 1, "points": [[1, 1]]}]}
    )
    assert r.status_code == 503 and "OOM" not in r.text
    error_id = ERROR_ID.search(r.json()["detail"]).group(1)  # type: ignore[union-attr]
    [record] = [rec for rec in caplog.records if error_id in rec.getMessage()]
    assert "OOM" in str(record.exc_info[1])  # type: ignore[index]
    client.config_set("maxmemory", 0)
