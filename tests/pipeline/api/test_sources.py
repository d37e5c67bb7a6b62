"""The API refuses sources on addresses inside the service's network, in every spelling (SSRF)."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from pipeline.api import ApiSettings, create_app
from pipeline.sources.policy import SourcePolicy
from tests.pipeline.api.conftest import AUTH, TOKEN, RecordingBackend

TRACKS = [{"id": 1, "points": [[10, 20]]}]
REFUSED = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata.google.internal./computeMetadata/v1/",
    "http://127.0.0.1:6379/",
    "http://localhost:8265/",
    "http://LOCALHOST./",
    "http://[::1]:8265/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0x7f.1/",
    "http://127.1/",
    "http://0177.0.0.1/",
    "http://127.0.0.1./",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:a9fe:a9fe::]/",
    "http://0.0.0.0:8000/",
    "http://10.0.0.5/clip.mp4",
    "http://192.168.1.1/clip.mp4",
    "http://100.64.1.1/clip.mp4",
    "https://user:pw@172.16.0.1/clip.mp4",
]


@pytest.mark.parametrize("source", REFUSED)
def test_metadata_loopback_and_private_sources_are_422(
    api: TestClient, backend: RecordingBackend, source: str
) -> None:
    r = api.post("/jobs", json={"source": source, "tracks": TRACKS})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "source"]
    assert "source blocked" in detail["msg"] and "pw" not in detail["msg"]
    assert backend.submitted == []


@pytest.mark.parametrize("source", ["rtsp://127.0.0.1:8554/live", "rtsp://[::1]/s", "rtsps://10.0.0.1/s"])
def test_streams_are_held_to_the_same_rule(api: TestClient, backend: RecordingBackend, source: str) -> None:
    r = api.post("/streams", json={"source": source, "tracks": TRACKS})
    assert r.status_code == 422 and "source blocked" in r.json()["detail"][0]["msg"]
    assert backend.submitted == []


def test_an_unknown_name_is_taken_and_left_to_fail_in_the_job(
    api: TestClient, backend: RecordingBackend
) -> None:
    """Answering 422 for it would tell callers which names exist inside the network."""
    r = api.post("/jobs", json={"source": "http://no-such-host.invalid/a.mp4", "tracks": TRACKS})
    assert r.status_code == 201
    assert backend.submitted == [r.json()["id"]]


def test_allow_hosts_opens_named_addresses_only(
    redis_client: redis.Redis, backend: RecordingBackend, prefix: str
) -> None:
    policy = SourcePolicy.parse("http,https,rtsp,udp", allow_hosts="127.0.0.1,cams.lan")
    settings = ApiSettings(token=TOKEN, policy=policy, prefix=prefix)
    api = TestClient(create_app(settings, redis_client, backend), headers=AUTH)
    for source in ("http://127.0.0.1:8080/a.mp4", "http://2130706433/a.mp4", "http://cams.lan/a.mp4"):
        assert api.post("/jobs", json={"source": source, "tracks": TRACKS}).status_code == 201, source
    assert api.post("/streams", json={"source": "udp://127.0.0.1:5000", "tracks": TRACKS}).status_code == 201
    for source in ("http://127.0.0.2/a.mp4", "http://[::1]/a.mp4", "http://169.254.169.254/"):
        r = api.post("/jobs", json={"source": source, "tracks": TRACKS})
        assert r.status_code == 422 and "source blocked" in r.json()["detail"][0]["msg"], source
    r = api.post("/streams", json={"source": "udp://127.0.0.1:5000?localport=6379", "tracks": TRACKS})
    assert r.status_code == 422 and "not accepted" in r.json()["detail"][0]["msg"]
    assert len(backend.submitted) == 4
