"""The service's limits through the API: active jobs (429), tracks per job (409), image sizes (422),
request body size (413); concurrent requests over real sockets cannot race past them."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from pipeline.api import ApiSettings, create_app
from pipeline.errors import InvalidInputError
from pipeline.ledger import JobStatus, JobStore
from pipeline.streams import Keys
from pipeline.streams.control import ControlReader
from tests.pipeline.api.conftest import AUTH, RecordingBackend, served

JOB = {"source": "https://videos.example/clip.mp4", "tracks": [{"id": 1, "points": [[10, 20]]}]}
STREAM = {"source": "rtsp://cam.example:8554/live", "tracks": [{"id": 1, "box": [0, 0, 50, 40]}]}


def _api(settings: ApiSettings, client: redis.Redis, backend: RecordingBackend, **limits: Any) -> TestClient:
    app = create_app(dataclasses.replace(settings, **limits), client, backend)
    return TestClient(app, headers=AUTH)


def _commands(client: redis.Redis, prefix: str, job_id: str) -> list[tuple[str, int | None]]:
    reader = ControlReader(client, Keys(prefix), job_id, everything=True)
    return [(c.cmd, c.track) for c in reader.poll() if not isinstance(c, Exception)]


# -- active jobs: 429 -------------------------------------------------------------------------------


def test_jobs_and_streams_over_the_limit_are_429_with_retry_after(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend
) -> None:
    api = _api(settings, redis_client, backend, max_jobs=2)
    job = api.post("/jobs", json=JOB).json()
    assert api.post("/streams", json=STREAM).status_code == 201
    for kind, body in (("jobs", JOB), ("streams", STREAM)):
        r = api.post(f"/{kind}", json=body)
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "30"
        assert "runs 2 jobs and streams" in r.json()["detail"] and "--max-jobs 2" in r.json()["detail"]
    assert len(backend.submitted) == 2  # the refused ones were not created, nor started
    assert len(api.get("/jobs").json()["items"]) == 1

    api.delete(f"/jobs/{job['id']}")  # a queued job: cancelled at once, its slot is free
    assert api.post("/jobs", json=JOB).status_code == 201


def test_admission_by_capacity_refuses_a_stream_that_would_starve_the_others(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend, prefix: str
) -> None:
    api = _api(settings, redis_client, backend, admission="capacity", min_stream_fps=2.0)
    store = JobStore(redis_client, Keys(prefix))
    assert api.post("/streams", json=STREAM).status_code == 201  # nothing measured yet: admitted
    store.record_capacity({512: 6.0}, can_grow=False)  # as the driver writes it
    assert 0 < redis_client.ttl(Keys(prefix).encoder_capacity()) <= 30  # gone if the driver stops
    assert api.post("/streams", json=STREAM).status_code == 201
    assert api.post("/streams", json=STREAM).status_code == 201  # three streams: 2 fps each
    r = api.post("/streams", json={**STREAM, "job_id": "fourth"})
    assert r.status_code == 429, r.text
    detail = r.json()["detail"]
    assert "6.00 frames a second at 512 px" in detail and "1.50 fps" in detail, detail
    assert "--min-stream-fps" in detail and r.headers["retry-after"] == "30"
    assert api.get("/streams/fourth").status_code == 404  # not created, not started
    assert len(backend.submitted) == 3
    # even a stream that asks little would take from the three at the floor
    assert api.post("/streams", json={**STREAM, "max_fps": 0.5}).status_code == 429
    oldest = api.get("/streams").json()["items"][0]["id"]
    store.set_status(oldest, JobStatus.RUNNING)
    store.set_status(oldest, JobStatus.SUCCEEDED)
    assert api.post("/streams", json={**STREAM, "max_fps": 0.5}).status_code == 201  # room again
    # file jobs are not live streams: admission does not apply to them
    assert api.post("/jobs", json=JOB).status_code == 201
    # a pool that can grow admits: the demand is the autoscaler's
    store.record_capacity({512: 6.0}, can_grow=True)
    assert api.post("/streams", json=STREAM).status_code == 201
    # the tracker hosts bind a stream of many tracks: its refusal names them
    store.record_capacity({512: 60.0}, can_grow=False, track_frames=30.0)
    many = {**STREAM, "job_id": "many", "tracks": [{"id": i, "box": [0, 0, 50, 40]} for i in range(1, 41)]}
    r = api.post("/streams", json=many)
    assert r.status_code == 429, r.text
    assert "tracker hosts take about 30.0 track-frames a second" in r.json()["detail"], r.text
    assert api.post("/streams", json={**STREAM, "job_id": "few"}).status_code == 201
    # a service without admission never asks
    store.record_capacity({512: 0.1}, can_grow=False)
    plain = _api(settings, redis_client, backend)
    assert plain.post("/streams", json=STREAM).status_code == 201


def test_finished_jobs_do_not_count_and_a_job_that_runs_again_does(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend, prefix: str
) -> None:
    api = _api(settings, redis_client, backend, max_jobs=1)
    store = JobStore(redis_client, Keys(prefix))
    first = api.post("/jobs", json=JOB).json()["id"]
    store.set_status(first, JobStatus.RUNNING)
    assert api.post("/jobs", json=JOB).status_code == 429
    store.set_status(first, JobStatus.FAILED, "a host died")
    second = api.post("/jobs", json=JOB).json()["id"]
    store.set_status(second, JobStatus.RUNNING)
    store.set_status(second, JobStatus.SUCCEEDED)
    store.set_status(first, JobStatus.RUNNING)  # resumed: it takes a place again
    refused = api.post("/jobs", json=JOB)
    assert refused.status_code == 429 and "runs 1 jobs" in refused.json()["detail"]
    store.set_status(first, JobStatus.SUCCEEDED)
    assert api.post("/jobs", json=JOB).status_code == 201


@pytest.mark.integration
def test_concurrent_creates_cannot_pass_the_job_limit(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend
) -> None:
    app = create_app(dataclasses.replace(settings, max_jobs=3), redis_client, backend)
    with (
        served(app) as url,
        httpx.Client(base_url=url, headers=AUTH, timeout=30) as http,
        ThreadPoolExecutor(12) as pool,
    ):
        codes = list(pool.map(lambda _: http.post("/jobs", json=JOB).status_code, range(12)))
    assert sorted(codes) == [201] * 3 + [429] * 9
    assert len(backend.submitted) == 3


def _serve_api(redis_url: str, prefix: str, max_jobs: int, ports: Any) -> None:
    """One API process of a service (run in a child process): the API on a free loopback port, told
    to the parent through ``ports``, until the parent ends it."""
    import uvicorn

    from pipeline.sources.policy import SourcePolicy
    from pipeline.streams import connect

    settings = ApiSettings(
        token=AUTH["Authorization"].split()[1],
        policy=SourcePolicy(),
        prefix=prefix,
        image_size=512,
        weights="random",
        max_jobs=max_jobs,
    )
    app = create_app(settings, connect(redis_url), RecordingBackend())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    ports.put(sock.getsockname()[1])
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


@pytest.mark.integration
def test_two_api_processes_together_cannot_pass_the_job_limit(
    api_redis: Any, redis_client: redis.Redis, prefix: str
) -> None:
    """Two API processes of one service share its Redis, not their memory: the count and the create
    are one script in Redis. Both processes are sent creates at once, many more than the limit."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    ports = spawn.Queue()
    apis = [spawn.Process(target=_serve_api, args=(api_redis.url, prefix, 3, ports)) for _ in range(2)]
    for process in apis:
        process.start()
    try:
        urls = [f"http://127.0.0.1:{ports.get(timeout=60)}" for _ in apis]
        clients = [httpx.Client(base_url=url, headers=AUTH, timeout=30) for url in urls]
        for client in clients:  # both serving before the race starts
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.get("/jobs")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "an API process did not start"
                    time.sleep(0.1)
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda i: clients[i % 2].post("/jobs", json=JOB).status_code, range(16)))
        for client in clients:
            client.close()
    finally:
        for process in apis:
            process.terminate()
            process.join(10)
    assert sorted(codes) == [201] * 3 + [429] * 13
    store = JobStore(redis_client, Keys(prefix))
    assert len([j for j in store.list() if j.status is JobStatus.QUEUED]) == 3


def test_jobs_written_before_the_active_set_count(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend, prefix: str
) -> None:
    """A store whose active jobs were created before the set existed has the set made from its index
    the first time a job is created."""
    store = JobStore(redis_client, Keys(prefix))
    store.create("old-1", {"source": "x"})
    store.create("old-2", {"source": "x"})
    store.set_status("old-2", JobStatus.RUNNING)
    store.set_status("old-2", JobStatus.CANCELLED)
    redis_client.delete(Keys(prefix).active_jobs())  # as an older version left it
    api = _api(settings, redis_client, backend, max_jobs=2)
    assert api.post("/jobs", json=JOB).status_code == 201
    assert api.post("/jobs", json=JOB).status_code == 429
    assert redis_client.smembers(Keys(prefix).active_jobs()) - {""} == {
        "old-1",
        *(j.job_id for j in store.list() if not j.job_id.startswith("old")),
    }


# -- tracks per job: 409 ----------------------------------------------------------------------------


def test_tracks_added_later_count_against_the_limit(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend, prefix: str
) -> None:
    api = _api(settings, redis_client, backend, max_tracks=3)
    two = [{"id": 1, "points": [[1, 1]]}, {"id": 2, "points": [[2, 2]]}]
    job = api.post("/streams", json={**STREAM, "tracks": two}).json()["id"]
    url = f"/streams/{job}/tracks"
    assert api.post(url, json={"id": 3, "points": [[3, 3]]}).status_code == 202
    r = api.post(url, json={"id": 4, "points": [[4, 4]]})
    assert r.status_code == 409
    assert "has 3 tracks" in r.json()["detail"] and "--max-tracks 3" in r.json()["detail"]
    # neither a re-prompt nor an id the job has takes a second slot
    assert api.post(url, json={"id": 1, "box": [0, 0, 9, 9], "action": "reprompt"}).status_code == 202
    assert api.post(url, json={"id": 3, "points": [[5, 5]]}).status_code == 202
    # a removed track frees its slot, a spec track as well as an added one
    assert api.delete(f"{url}/2").status_code == 202
    assert api.post(url, json={"id": 4, "points": [[4, 4]]}).status_code == 202
    assert api.post(url, json={"id": 5, "points": [[5, 5]]}).status_code == 409
    for track in (1, 3, 4):
        assert api.delete(f"{url}/{track}").status_code == 202
    assert api.post(url, json={"id": 6, "points": [[6, 6]]}).status_code == 202  # none left: room again
    assert _commands(redis_client, prefix, job) == [
        ("add", 3),
        ("reprompt", 1),
        ("add", 3),
        ("remove", 2),
        ("add", 4),
        ("remove", 1),
        ("remove", 3),
        ("remove", 4),
        ("add", 6),
    ]  # the refused adds never reached the job


def test_more_tracks_than_the_limit_at_creation_is_422(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend
) -> None:
    api = _api(settings, redis_client, backend, max_tracks=2)
    tracks = [{"id": i, "points": [[i, i]]} for i in (1, 2, 3)]
    r = api.post("/jobs", json={**JOB, "tracks": tracks})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "tracks"]
    assert "at most 2 tracks" in r.json()["detail"][0]["msg"]
    assert backend.submitted == []


@pytest.mark.integration
def test_concurrent_track_adds_cannot_pass_the_limit(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend, prefix: str
) -> None:
    app = create_app(dataclasses.replace(settings, max_tracks=5), redis_client, backend)
    with served(app) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as http:
        job = http.post("/streams", json=STREAM).json()["id"]

        def add(track: int) -> int:
            return http.post(f"/streams/{job}/tracks", json={"id": track, "points": [[1, 1]]}).status_code

        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(add, range(2, 34)))
    assert sorted(codes) == [202] * 4 + [409] * 28
    added = [t for cmd, t in _commands(redis_client, prefix, job) if cmd == "add"]
    assert len(added) == 4 and [c == 202 for c in codes] == [t in added for t in range(2, 34)]


# -- image sizes: 422 -------------------------------------------------------------------------------


def test_image_sizes_outside_the_services_list_are_422_naming_them(
    api: TestClient, backend: RecordingBackend, redis_client: redis.Redis, prefix: str
) -> None:
    r = api.post("/jobs", json={**JOB, "image_size": 768})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "image_size"]
    assert "one of 256, 512, 1024" in r.json()["detail"][0]["msg"] and "768" in r.json()["detail"][0]["msg"]
    assert backend.submitted == []
    job = api.post("/jobs", json={**JOB, "image_size": 256}).json()["id"]
    assert JobStore(redis_client, Keys(prefix)).get(job).spec["image_size"] == 256


# -- request body size: 413 -------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend
) -> None:
    api = _api(settings, redis_client, backend, max_body_kb=1)
    big = {**JOB, "source": "https://videos.example/" + "a" * 2000}
    r = api.post("/jobs", json=big)
    assert r.status_code == 413
    assert r.json()["detail"] == "request body over 1 KB, the most this service takes (--max-body-kb)"
    r = api.post("/jobs/any/tracks", json={"id": 2, "points": [[1, 1]] * 300})
    assert r.status_code == 413
    assert api.post("/jobs", json=JOB).status_code == 201  # under it: as before
    assert len(backend.submitted) == 1


@pytest.mark.integration
def test_a_chunked_body_is_counted_as_it_comes(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend
) -> None:
    app = create_app(dataclasses.replace(settings, max_body_kb=1), redis_client, backend)
    sent = []

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server cannot know the size up front
        body = json.dumps({**JOB, "source": "https://v.example/" + "a" * 4000}).encode()
        for i in range(0, len(body), 256):
            sent.append(i)
            yield body[i : i + 256]

    with served(app) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as http:
        r = http.post("/jobs", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "--max-body-kb" in r.json()["detail"]
        small = json.dumps(JOB).encode()
        r = http.post(
            "/jobs", content=iter([small[:20], small[20:]]), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 201
    assert backend.submitted == [r.json()["id"]]


@pytest.mark.integration
def test_a_huge_content_length_is_refused_before_the_body_is_read(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend
) -> None:
    app = create_app(settings, redis_client, backend)
    with served(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            head = (
                "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: {AUTH['Authorization']}\r\nContent-Length: {10**10}\r\n\r\n"
            )
            sock.sendall(head.encode() + b'{"source": "')  # and nothing more: the answer comes anyway
            answer = sock.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "--max-body-kb" in answer
    assert backend.submitted == []


def test_an_unauthenticated_body_is_401_whatever_its_size(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend
) -> None:
    api = TestClient(create_app(dataclasses.replace(settings, max_body_kb=1), redis_client, backend))
    r = api.post("/jobs", json={**JOB, "source": "https://v.example/" + "a" * 4000})
    assert r.status_code == 401  # the limits are not told to whoever has no token


# -- settings and spec ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "says"),
    [
        ({"max_jobs": 0}, "--max-jobs must be >= 1"),
        ({"max_tracks": 0}, "--max-tracks must be 1 to 1024"),
        ({"max_tracks": 5000}, "--max-tracks must be 1 to 1024"),
        ({"max_body_kb": 0}, "--max-body-kb must be >= 1"),
        ({"image_sizes": ()}, "--image-sizes must list sizes, each a multiple of 16 from 64 to 4096"),
        ({"image_sizes": (256, 500)}, "got [256, 500]"),
        ({"image_sizes": (256, 8192)}, "from 64 to 4096"),
        (
            {"image_sizes": (256, 512), "image_size": 1024},
            "--image-size 1024 must be one of --image-sizes 256,512",
        ),
        ({"admission": "first-come"}, "--admission must be one of none, capacity"),
        ({"min_stream_fps": 0}, "--min-stream-fps must be > 0"),
    ],
)
def test_bad_limits_are_refused_naming_the_option(limits: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        ApiSettings(token="t", **limits)
    assert says in str(info.value)


def test_the_spec_documents_each_limit(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for kind in ("jobs", "streams"):
        create = paths[f"/{kind}"]["post"]["responses"]
        assert {"409", "413", "422", "429", "500", "503"} <= set(create)
        assert "Retry-After" in create["429"]["headers"]
        tracks = paths[f"/{kind}/{{job_id}}/tracks"]["post"]["responses"]
        assert "--max-tracks" in tracks["409"]["description"] and "413" in tracks


def test_the_creation_lock_waits_a_bounded_time_and_expires_with_a_dead_holder(
    redis_client: redis.Redis, prefix: str
) -> None:
    from pipeline.errors import RedisUnavailableError
    from pipeline.ledger.slots import CreationLock
    from pipeline.streams import Keys

    keys = Keys(prefix)
    redis_client.set(keys.creating(), "a dead process's token", px=300)  # it died holding the lock
    lock = CreationLock(redis_client, keys, wait_s=0.1)
    with pytest.raises(RedisUnavailableError, match=r"held the job creation lock for 0\.1 s"), lock.held():
        pass
    patient = CreationLock(redis_client, keys, wait_s=2.0)
    start = time.monotonic()
    with patient.held():  # taken once the dead holder's lock expires
        assert redis_client.get(keys.creating()) != "a dead process's token"
    assert time.monotonic() - start < 1.0
    assert not redis_client.exists(keys.creating())
