"""Discovery through the API: a job or stream may ask for it (and then needs no track); its settings
are checked (422 naming them), and its discovered tracks count within ``--max-tracks``."""

from __future__ import annotations

import dataclasses

import redis
from fastapi.testclient import TestClient

from pipeline.api import ApiSettings, create_app
from pipeline.ledger import JobStore
from pipeline.streams import Keys
from tests.pipeline.api.conftest import AUTH, RecordingBackend

SOURCE = "https://videos.example/clip.mp4"


def _api(settings: ApiSettings, client: redis.Redis, backend: RecordingBackend, **limits: int) -> TestClient:
    return TestClient(create_app(dataclasses.replace(settings, **limits), client, backend), headers=AUTH)


def test_a_job_with_discovery_needs_no_track_and_keeps_its_settings(
    api: TestClient, redis_client: redis.Redis, prefix: str
) -> None:
    made = api.post("/jobs", json={"source": SOURCE, "discover": {"every_s": 2, "grid": 12, "max_tracks": 4}})
    assert made.status_code == 201, made.text
    spec = JobStore(redis_client, Keys(prefix)).get(made.json()["id"]).spec
    assert spec["tracks"] == [] and spec["discover"]["grid"] == 12 and spec["discover"]["every_s"] == 2.0
    assert (
        api.post("/streams", json={"source": "rtsp://cam.example/live", "discover": True}).status_code == 201
    )


def test_bad_discovery_settings_and_no_tracks_are_422_naming_them(api: TestClient) -> None:
    for discover, says in (
        ({"grid": 0}, "grid must be an integer"),
        ({"roi": [5, 5, 1, 1]}, "0 <= x0 < x1"),
        ({"colour": 1}, "unknown discovery setting(s) colour"),
    ):
        got = api.post("/jobs", json={"source": SOURCE, "discover": discover})
        assert got.status_code == 422, got.text
        [problem] = got.json()["detail"]
        assert problem["loc"][-1] == "discover" and says in problem["msg"], problem
    none = api.post("/jobs", json={"source": SOURCE})
    assert none.status_code == 422 and "at least one track, or discovery" in none.text
    assert api.post("/jobs", json={"source": SOURCE, "discover": False}).status_code == 422


def test_discovered_tracks_count_within_the_track_limit(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend
) -> None:
    api = _api(settings, redis_client, backend, max_tracks=5)
    track = {"id": 1, "points": [[10, 20]]}
    over = api.post(
        "/jobs", json={"source": SOURCE, "tracks": [track, {**track, "id": 2}], "discover": {"max_tracks": 4}}
    )
    assert over.status_code == 422 and "up to 4 discovered" in over.text
    job = api.post("/jobs", json={"source": SOURCE, "tracks": [track], "discover": {"max_tracks": 3}}).json()[
        "id"
    ]
    # 1 given + 3 held for discovery: one more fits, the next does not.
    assert api.post(f"/jobs/{job}/tracks", json={"id": 2, "points": [[30, 40]]}).status_code == 202
    assert api.post(f"/jobs/{job}/tracks", json={"id": 3, "points": [[50, 60]]}).status_code == 409


def test_a_detector_is_named_from_the_services_folder_only(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend, prefix: str, blob_detector
) -> None:
    none = _api(settings, redis_client, backend).post(
        "/jobs", json={"source": SOURCE, "discover": {"detector": "blobs.onnx"}}
    )
    assert none.status_code == 422 and "offers no detectors" in none.text
    api = TestClient(
        create_app(
            dataclasses.replace(settings, detector_dir=str(blob_detector.parent)), redis_client, backend
        ),
        headers=AUTH,
    )
    folder = str(blob_detector.parent)
    for detector, says in (
        ("../blobs.onnx", "the file name of one of this service's detectors"),
        ("/etc/passwd", "the file name of one of this service's detectors"),
        ("missing.onnx", "detector missing.onnx: no such file"),
    ):
        got = api.post("/jobs", json={"source": SOURCE, "discover": {"detector": detector}})
        assert got.status_code == 422 and says in got.text, got.text
        assert folder not in got.text  # the service's folders are its own
    unknown = api.post(
        "/jobs", json={"source": SOURCE, "discover": {"detector": "blobs.onnx", "classes": ["dog"]}}
    )
    assert (
        unknown.status_code == 422 and "no class named 'dog'" in unknown.text and folder not in unknown.text
    )
    made = api.post(
        "/jobs",
        json={"source": SOURCE, "discover": {"detector": "blobs.onnx", "classes": ["red"], "every_s": 2}},
    )
    assert made.status_code == 201, made.text
    spec = JobStore(redis_client, Keys(prefix)).get(made.json()["id"]).spec
    assert spec["discover"]["detector"] == str(blob_detector) and spec["discover"]["classes"] == ["red"]
    shown = api.get(f"/jobs/{made.json()['id']}")
    assert shown.json()["discover"]["detector"] == "blobs.onnx" and folder not in shown.text
