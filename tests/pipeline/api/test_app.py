"""Every endpoint of the REST API: auth, validation (422 naming the field), jobs, streams, tracks."""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from pipeline.api import ApiSettings, create_app
from pipeline.api.reconcile import Reconciler
from pipeline.frames import FrameResult, TrackMask
from pipeline.ledger import JobStatus, JobStore
from pipeline.ledger.sink import RedisSink
from pipeline.streams import Keys
from pipeline.streams.control import ControlReader
from tests.pipeline.api.conftest import AUTH, TOKEN, RecordingBackend

JOB = {"source": "https://videos.example/clip.mp4", "tracks": [{"id": 1, "points": [[10, 20]]}]}
STREAM = {"source": "rtsp://cam.example:8554/live", "tracks": [{"id": 1, "box": [0, 0, 50, 40]}]}


def _paths(api: TestClient) -> list[tuple[str, str]]:
    spec = api.get("/openapi.json").json()
    return [(m.upper(), p) for p, item in spec["paths"].items() for m in item]


# -- auth -------------------------------------------------------------------------------------------


def test_every_endpoint_refuses_requests_without_the_token(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend, api: TestClient
) -> None:
    paths = _paths(api)
    assert len(paths) >= 17
    bare = TestClient(create_app(settings, redis_client, backend))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"X-Token": TOKEN}):
        for method, path in [*paths, ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/nowhere")]:
            url = path.replace("{job_id}", "j1").replace("{track_id}", "1")
            r = bare.request(method, url, headers=headers, json=JOB)
            assert r.status_code == 401, (method, url, headers, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
    assert backend.submitted == []


def test_openapi_spec_needs_and_declares_the_token(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for item in spec["paths"].values():
        for op in item.values():
            assert op["security"] == [{"HTTPBearer": []}]
            assert "401" in op["responses"] and "422" in op["responses"]


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a token"):
        ApiSettings(token="")


# -- jobs -------------------------------------------------------------------------------------------


def test_create_get_list_a_job(api: TestClient, backend: RecordingBackend, prefix: str) -> None:
    r = api.post("/jobs", json=JOB)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["kind"] == "job" and job["status"] == "queued"
    assert job["source"] == JOB["source"]
    assert job["tracks"][0]["points"] == [[10.0, 20.0]]
    assert job["masks_stream"] == f"{prefix}job:{job['id']}:masks"
    assert backend.submitted == [job["id"]]

    assert api.get(f"/jobs/{job['id']}").json() == job
    assert [j["id"] for j in api.get("/jobs").json()["items"]] == [job["id"]]
    assert api.get("/jobs", params={"status": "running"}).json()["items"] == []
    assert api.get("/streams").json()["items"] == []


def test_job_spec_carries_the_services_defaults(
    api: TestClient, redis_client: redis.Redis, prefix: str
) -> None:
    body = {**JOB, "job_id": "mine", "stride": 3, "tracking": {"lost_after": 7, "use_mask_input": False}}
    job = api.post("/jobs", json=body).json()
    spec = JobStore(redis_client, Keys(prefix)).get(job["id"]).spec
    assert job["id"] == "mine"
    assert spec["image_size"] == 512 and spec["weights"] == "random" and spec["stride"] == 3
    assert spec["live"] is False
    assert spec["tracking"] == {"lost_after": 7, "use_mask_input": False}


def test_a_streams_share_and_rate_are_asked_and_shown(
    api: TestClient, redis_client: redis.Redis, prefix: str
) -> None:
    body = {**STREAM, "job_id": "cam", "weight": 2.5, "max_fps": 4}
    stream = api.post("/streams", json=body).json()
    spec = JobStore(redis_client, Keys(prefix)).get("cam").spec
    assert spec["weight"] == 2.5 and spec["max_fps"] == 4
    assert stream["rate"] == {
        "requested_fps": None,
        "delivered_fps": None,
        "capacity_bound": False,
        "dropped": 0,
        "image_size": 512,  # the spec's, until the driver writes the size it reads at
    }
    # what the driver measures, as it writes it
    JobStore(redis_client, Keys(prefix)).record_fields_many(
        {
            "cam": {
                "requested_fps": "4",
                "delivered_fps": "1.5",
                "capacity_bound": "1",
                "image_size_now": "256",
            }
        }
    )
    rate = api.get("/streams/cam").json()["rate"]
    assert rate == {
        "requested_fps": 4.0,
        "delivered_fps": 1.5,
        "capacity_bound": True,
        "dropped": 0,
        "image_size": 256,
    }
    # a file job has no rate; its weight is the service's, not its own
    assert api.post("/jobs", json=JOB).json()["rate"] is None


def test_a_stream_may_ask_for_an_adaptive_size(
    api: TestClient, redis_client: redis.Redis, prefix: str
) -> None:
    stream = api.post(
        "/streams", json={**STREAM, "job_id": "auto", "image_size": "auto", "target_fps": 2}
    ).json()
    spec = JobStore(redis_client, Keys(prefix)).get("auto").spec
    # it starts at the service's size and may move over the service's sizes
    assert spec["image_size"] == 512 and spec["auto_size"] == {"sizes": [256, 512, 1024], "target_fps": 2.0}
    assert stream["rate"]["image_size"] == 512
    plain = api.post("/streams", json={**STREAM, "job_id": "plain"}).json()
    assert "auto_size" not in JobStore(redis_client, Keys(prefix)).get(plain["id"]).spec
    # without a target it keeps up with its feed
    api.post("/streams", json={**STREAM, "job_id": "feed", "image_size": "auto"})
    assert JobStore(redis_client, Keys(prefix)).get("feed").spec["auto_size"]["target_fps"] is None


@pytest.mark.parametrize(
    ("kind", "body", "where", "words"),
    [
        ("jobs", {**JOB, "image_size": "auto"}, "image_size", "is for streams"),
        ("streams", {**STREAM, "target_fps": 2}, "target_fps", 'goes with image_size "auto"'),
        ("streams", {**STREAM, "image_size": "big"}, "image_size", ""),
        ("streams", {**STREAM, "image_size": "auto", "target_fps": 0}, "target_fps", ""),
    ],
)
def test_a_bad_adaptive_size_is_422(
    api: TestClient, kind: str, body: dict[str, Any], where: str, words: str
) -> None:
    r = api.post(f"/{kind}", json=body)
    assert r.status_code == 422, r.text
    assert where in _loc(r) and words in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("weight", 0), ("weight", -1), ("weight", 1001), ("max_fps", 0), ("max_fps", 1e9), ("weight", "x")],
)
def test_a_streams_share_out_of_bounds_is_422(api: TestClient, field: str, value: Any) -> None:
    assert _loc(api.post("/streams", json={**STREAM, field: value})) == ["body", field]


def test_a_taken_job_id_is_a_conflict(api: TestClient) -> None:
    assert api.post("/jobs", json={**JOB, "job_id": "same"}).status_code == 201
    r = api.post("/jobs", json={**JOB, "job_id": "same"})
    assert r.status_code == 409 and "exists already" in r.json()["detail"]


def test_a_job_the_cluster_cannot_start_fails_with_503(
    api: TestClient,
    backend: RecordingBackend,
    redis_client: redis.Redis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend.fail_next = True
    r = api.post("/jobs", json={**JOB, "job_id": "nope"})
    assert r.status_code == 503 and "could not be started" in r.json()["detail"]
    error_id = re.search(r"error id ([0-9a-f]{12})", r.json()["detail"]).group(1)  # type: ignore[union-attr]
    info = JobStore(redis_client, Keys(prefix)).get("nope")
    assert info.status is JobStatus.FAILED and f"error id {error_id}" in (info.error or "")
    # The cause is in the service's log under that id, and nowhere a client can read it.
    logged = [rec for rec in caplog.records if error_id in rec.getMessage()]
    assert logged and "cluster unreachable" in str(logged[0].exc_info[1])  # type: ignore[index]
    assert (
        "cluster unreachable" not in r.text + api.get("/jobs/nope").text + api.get("/jobs/nope/events").text
    )


def test_unknown_jobs_are_404_and_kinds_do_not_mix(api: TestClient) -> None:
    assert api.get("/jobs/ghost").status_code == 404
    assert api.delete("/jobs/ghost").status_code == 404
    assert api.get("/jobs/ghost/masks").status_code == 404
    assert api.post("/jobs/ghost/tracks", json={"id": 2, "points": [[1, 1]]}).status_code == 404
    stream = api.post("/streams", json=STREAM).json()
    r = api.get(f"/jobs/{stream['id']}")
    assert r.status_code == 404 and "/streams" in r.json()["detail"]
    assert api.get(f"/streams/{stream['id']}").status_code == 200


# -- validation: 422 naming the field ---------------------------------------------------------------


def _loc(r: Any) -> list[Any]:
    assert r.status_code == 422, r.text
    return r.json()["detail"][0]["loc"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"tracks": JOB["tracks"]}, ["body", "source"]),
        ({**JOB, "source": ""}, ["body", "source"]),
        ({**JOB, "tracks": []}, ["body", "tracks"]),
        ({"source": JOB["source"]}, ["body", "tracks"]),
        ({**JOB, "stride": 0}, ["body", "stride"]),
        ({**JOB, "stride": "two"}, ["body", "stride"]),
        ({**JOB, "image_size": 1000}, ["body", "image_size"]),
        ({**JOB, "maxlen": 0}, ["body", "maxlen"]),
        ({**JOB, "job_id": "a:b"}, ["body", "job_id"]),
        ({**JOB, "colour": "red"}, ["body", "colour"]),
        ({**JOB, "tracking": {"min_score": "high"}}, ["body", "tracking", "min_score", "bool"]),
        ({**JOB, "tracking": {"min_score": 2}}, ["body", "tracking"]),
        ({**JOB, "tracking": {"lost_after": 0.5}}, ["body", "tracking"]),
        ({**JOB, "tracking": {"colour": 1}}, ["body", "tracking"]),
        ({**JOB, "tracks": [{"points": [[1, 2]]}]}, ["body", "tracks", 0, "id"]),
        ({**JOB, "tracks": [{"id": 0, "points": [[1, 2]]}]}, ["body", "tracks", 0, "id"]),
        ({**JOB, "tracks": [{"id": 1, "points": [[1, 2, 3]]}]}, ["body", "tracks", 0, "points"]),
        ({**JOB, "tracks": [{"id": 1, "box": [1, 2, 3]}]}, ["body", "tracks", 0, "box"]),
        (
            {**JOB, "tracks": [{"id": 1, "points": [[1, 2]], "labels": [2]}]},
            ["body", "tracks", 0, "labels", 0],
        ),
        # the library's own checks, reported at the same place
        ({**JOB, "tracks": [{"id": 1}]}, ["body", "tracks", 0]),
        ({**JOB, "tracks": [{"id": 1, "box": [50, 50, 10, 10]}]}, ["body", "tracks", 0]),
        ({**JOB, "tracks": [{"id": 1, "points": [[1, 2]], "labels": [1, 0]}]}, ["body", "tracks", 0]),
        (
            {**JOB, "tracks": [{"id": 1, "points": [[1, 2]]}, {"id": 1, "points": [[3, 4]]}]},
            ["body", "tracks"],
        ),
    ],
)
def test_invalid_specs_are_422_naming_the_field(
    api: TestClient, backend: RecordingBackend, body: dict[str, Any], loc: list[Any]
) -> None:
    assert _loc(api.post("/jobs", json=body)) == loc
    assert backend.submitted == []


def test_a_body_that_is_not_json_is_422(api: TestClient) -> None:
    r = api.post("/jobs", content=b"source=x", headers={"Content-Type": "application/json"})
    assert r.status_code == 422


@pytest.mark.parametrize(
    ("kind", "source", "says"),
    [
        ("jobs", "/etc/passwd", "local files are not accepted"),
        ("jobs", "file:///data/clip.mp4", "local files are not accepted"),
        ("jobs", "concat:/a.mp4|/b.mp4", "local files are not accepted"),
        ("jobs", "ftp://h/clip.mp4", "'ftp' is not allowed"),
        ("jobs", "rtsp://cam/live", "POST it to /streams"),
        ("streams", "/dev/video0", "local files are not accepted"),
        ("streams", "udp://0.0.0.0:5000", "'udp' is not allowed"),
    ],
)
def test_sources_outside_the_allowlist_are_422(
    api: TestClient, backend: RecordingBackend, kind: str, source: str, says: str
) -> None:
    r = api.post(f"/{kind}", json={**JOB, "source": source})
    assert _loc(r) == ["body", "source"]
    assert says in r.json()["detail"][0]["msg"]
    assert backend.submitted == []


def test_local_files_when_the_service_allows_them(
    redis_client: redis.Redis, backend: RecordingBackend, prefix: str
) -> None:
    from pipeline.sources.policy import SourcePolicy

    settings = ApiSettings(token=TOKEN, policy=SourcePolicy.parse("https", True), prefix=prefix)
    api = TestClient(create_app(settings, redis_client, backend), headers=AUTH)
    assert api.post("/jobs", json={**JOB, "source": "/data/clip.mp4"}).status_code == 201
    assert api.post("/jobs", json={**JOB, "source": "http://h/a.mp4"}).status_code == 422  # not allowed


# -- cancel -----------------------------------------------------------------------------------------


def test_cancel_a_running_job_sends_stop(
    api: TestClient, backend: RecordingBackend, redis_client: redis.Redis, prefix: str
) -> None:
    job = api.post("/jobs", json=JOB).json()
    store = JobStore(redis_client, Keys(prefix))
    store.set_status(job["id"], JobStatus.RUNNING)
    control = ControlReader(redis_client, Keys(prefix), job["id"], everything=True)
    r = api.delete(f"/jobs/{job['id']}")
    assert r.status_code == 202 and r.json()["status"] == "running"  # the runner ends it
    assert [c.cmd for c in control.poll()] == ["stop"]  # type: ignore[union-attr]


def test_cancel_a_queued_or_orphaned_job_ends_it_at_once(
    api: TestClient, backend: RecordingBackend, redis_client: redis.Redis, prefix: str
) -> None:
    queued = api.post("/jobs", json=JOB).json()
    assert api.delete(f"/jobs/{queued['id']}").json()["status"] == "cancelled"
    orphan = api.post("/jobs", json=JOB).json()
    JobStore(redis_client, Keys(prefix)).set_status(orphan["id"], JobStatus.RUNNING)
    backend.alive.discard(orphan["id"])
    r = api.delete(f"/jobs/{orphan['id']}")
    assert r.json()["status"] == "cancelled" and r.json()["error"] == "cancelled on request"
    r = api.delete(f"/jobs/{orphan['id']}")
    assert r.status_code == 409 and "cancelled already" in r.json()["detail"]


# -- tracks -----------------------------------------------------------------------------------------


def test_add_reprompt_and_remove_tracks(api: TestClient, redis_client: redis.Redis, prefix: str) -> None:
    stream = api.post("/streams", json=STREAM).json()
    control = ControlReader(redis_client, Keys(prefix), stream["id"], everything=True)
    r = api.post(f"/streams/{stream['id']}/tracks", json={"id": 2, "points": [[5, 5]], "labels": [1]})
    assert r.status_code == 202 and r.json() == {"id": stream["id"], "command": "add", "track": 2}
    r = api.post(f"/streams/{stream['id']}/tracks", json={"id": 2, "box": [1, 1, 9, 9], "action": "reprompt"})
    assert r.status_code == 202
    assert api.delete(f"/streams/{stream['id']}/tracks/2").status_code == 202
    commands = [c for c in control.poll() if not isinstance(c, Exception)]
    assert [(c.cmd, c.track) for c in commands] == [("add", 2), ("reprompt", 2), ("remove", 2)]
    assert commands[1].prompt is not None and commands[1].prompt.box == (1, 1, 9, 9)


def test_track_commands_are_validated_and_refused_on_finished_jobs(
    api: TestClient, redis_client: redis.Redis, prefix: str
) -> None:
    job = api.post("/jobs", json=JOB).json()
    url = f"/jobs/{job['id']}/tracks"
    assert _loc(api.post(url, json={"id": 2})) == ["body"]  # no prompt at all
    assert _loc(api.post(url, json={"id": 2, "points": [[1, 2]], "action": "swap"})) == ["body", "action"]
    assert api.delete(f"{url}/0").status_code == 422
    store = JobStore(redis_client, Keys(prefix))
    store.set_status(job["id"], JobStatus.RUNNING)
    store.set_status(job["id"], JobStatus.SUCCEEDED)
    assert api.post(url, json={"id": 2, "points": [[1, 2]]}).status_code == 409
    assert api.delete(f"{url}/1").status_code == 409


# -- masks and events -------------------------------------------------------------------------------


def _publish(redis_client: redis.Redis, prefix: str, job_id: str, frames: int) -> None:
    sink = RedisSink(redis_client, Keys(prefix), job_id)  # as the tracker host publishes
    rle = {"size": [4, 6], "counts": "0O0O0O"}
    track = TrackMask(1, "active", 0.9, (0, 0, 2, 2), rle)
    sink.publish_many([(FrameResult(i, i / 30, 1000.0 + i, 6, 4, (track,)), None) for i in range(frames)])


def test_masks_are_paged_in_frame_order(api: TestClient, redis_client: redis.Redis, prefix: str) -> None:
    job = api.post("/jobs", json=JOB).json()
    _publish(redis_client, prefix, job["id"], 5)
    first = api.get(f"/jobs/{job['id']}/masks", params={"count": 3}).json()
    assert [e["frame"] for e in first["entries"]] == [0, 1, 2]
    assert first["next"] == "2-1" and first["status"] == "queued"
    assert first["entries"][0]["tracks"][0]["rle"]["size"] == [4, 6]
    rest = api.get(f"/jobs/{job['id']}/masks", params={"after": first["next"]}).json()
    assert [e["frame"] for e in rest["entries"]] == [3, 4]
    empty = api.get(f"/jobs/{job['id']}/masks", params={"after": "4-1"}).json()
    assert empty == {"entries": [], "next": "4-1", "status": "queued"}
    assert api.get(f"/jobs/{job['id']}/masks", params={"after": "x"}).status_code == 422
    assert api.get(f"/jobs/{job['id']}/masks", params={"count": 0}).status_code == 422


def test_events_tell_the_story(api: TestClient, redis_client: redis.Redis, prefix: str) -> None:
    job = api.post("/jobs", json=JOB).json()
    api.delete(f"/jobs/{job['id']}")
    page = api.get(f"/jobs/{job['id']}/events").json()
    assert [(e["type"], e["detail"]) for e in page["events"]] == [
        ("status", "queued"),
        ("status", "cancelled"),
    ]
    assert api.get(f"/jobs/{job['id']}/events", params={"after": page["next"]}).json()["events"] == []


def test_health(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok", "redis": True}


# -- restart ------------------------------------------------------------------------------------------


def test_a_new_api_resumes_unfinished_jobs_nothing_runs(
    api: TestClient, backend: RecordingBackend, redis_client: redis.Redis, prefix: str
) -> None:
    running = api.post("/jobs", json=JOB).json()["id"]
    orphan = api.post("/jobs", json=JOB).json()["id"]
    done = api.post("/jobs", json=JOB).json()["id"]
    store = JobStore(redis_client, Keys(prefix))
    store.set_status(done, JobStatus.RUNNING)
    store.set_status(done, JobStatus.SUCCEEDED)
    backend.alive = {running}
    assert Reconciler(store, backend).once() == [orphan]  # what serve does as it starts
    assert backend.submitted[-1] == orphan
