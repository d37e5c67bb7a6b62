"""The API over a real Redis server, with a backend that records what it is asked (no Ray here)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pipeline.api import ApiSettings, create_app
from pipeline.sources.policy import SourcePolicy
from pipeline.streams import EmbeddedRedis, connect

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class RecordingBackend:
    """Stands in for the Ray backend: remembers submitted jobs; "runs" them until stopped."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.alive: set[str] = set()
        self.fail_next = False

    def submit(self, job_id: str) -> None:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("cluster unreachable")
        self.submitted.append(job_id)
        self.alive.add(job_id)

    def running(self, job_id: str) -> bool:
        return job_id in self.alive

    def held(self) -> set[str]:
        return set(self.alive)


@pytest.fixture(scope="session")
def api_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("api-redis")) as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"api-{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def redis_client(api_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = connect(api_redis.url)
    yield client
    client.close()


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend()


@pytest.fixture
def settings(prefix: str) -> ApiSettings:
    return ApiSettings(token=TOKEN, policy=SourcePolicy(), prefix=prefix, image_size=512, weights="random")


@pytest.fixture
def api(settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend) -> Iterator[TestClient]:
    with TestClient(create_app(settings, redis_client, backend), headers=AUTH) as client:
        yield client


@contextlib.contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """``app`` served by uvicorn on a loopback port, in a thread (real sockets, real concurrency):
    its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
