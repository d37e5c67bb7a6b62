"""connect(): URL schemes, passwords and ACL users on a real server, clear one-line failures."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipeline.errors import InvalidInputError, RedisUnavailableError
from pipeline.streams import EmbeddedRedis, connect, describe, redact_redis_url, redis_server_executable
from tests.pipeline.streams.conftest import free_port

pytestmark = pytest.mark.integration

PASSWORD = "s3cr3t-Pa55"


@pytest.fixture(scope="module")
def protected_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A second redis-server with ``requirepass`` and an ACL user ``alice``."""
    port = free_port()
    cmd = [
        redis_server_executable(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(tmp_path_factory.mktemp("protected")),
        "--save", "",
        "--appendonly", "no",
        "--requirepass", PASSWORD,
        "--user", "alice", "on", f">{PASSWORD}-alice", "~*", "+@all",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, password=PASSWORD, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.02)
    client.close()
    yield port
    proc.terminate()
    proc.wait(10)


def test_password_and_acl_user(protected_port: int) -> None:
    for url in (
        f"redis://:{PASSWORD}@127.0.0.1:{protected_port}/0",
        f"redis://default:{PASSWORD}@127.0.0.1:{protected_port}/1",
        f"redis://alice:{PASSWORD}-alice@127.0.0.1:{protected_port}",
    ):
        client = connect(url)
        assert client.set("k", "v") and client.get("k") == "v"  # decode_responses=True
        client.close()


@pytest.mark.parametrize("userinfo", [":wrong-pw", "alice:wrong-pw", ""])
def test_bad_credentials(protected_port: int, userinfo: str) -> None:
    at = f"{userinfo}@" if userinfo else ""
    with pytest.raises(RedisUnavailableError) as err:
        connect(f"redis://{at}127.0.0.1:{protected_port}/0")
    message = str(err.value)
    assert f"127.0.0.1:{protected_port}" in message
    assert "wrong-pw" not in message and PASSWORD not in message
    assert "\n" not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_unreachable_port_fails_fast() -> None:
    port = free_port()
    start = time.monotonic()
    with pytest.raises(RedisUnavailableError, match=f"127.0.0.1:{port}"):
        connect(f"redis://:pw@127.0.0.1:{port}/0", timeout_s=2)
    assert time.monotonic() - start < 2.5


@pytest.mark.parametrize("url", ["http://localhost:6379", "localhost:6379", "redis+sentinel://h", ""])
def test_bad_scheme(url: str) -> None:
    with pytest.raises(InvalidInputError, match="redis://, rediss:// or unix://"):
        connect(url)


def test_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "r.sock"
    proc = subprocess.Popen(
        [
            redis_server_executable(),
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert connect(f"unix://{sock}?db=2").ping()
    finally:
        proc.terminate()
        proc.wait(10)
    with pytest.raises(RedisUnavailableError, match=str(sock)):
        connect(f"unix://{sock}", timeout_s=1)


def test_describe_and_redact() -> None:
    url = "redis://bob:p%40ss@cache.local:6380/3"
    assert describe(url) == "cache.local:6380/3"
    assert redact_redis_url(url) == "redis://bob:***@cache.local:6380/3"
    assert describe("rediss://h") == "h:6379/0 (TLS)"
    assert redact_redis_url("redis://h:1/0") == "redis://h:1/0"


def test_embedded_server_url_connects(redis_server: EmbeddedRedis) -> None:
    assert connect(redis_server.url).ping()


def test_refusals_are_told_from_other_errors_whatever_class_redis_py_gives_them() -> None:
    import redis

    from pipeline.streams.connection import refusal

    oom = redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    assert refusal(oom) == "OOM command not allowed when used memory > 'maxmemory'."
    wrapped = redis.ResponseError(
        "Error running script (call to f_1): @user_script:1: -OOM command not allowed"
    )
    assert refusal(wrapped) == "OOM command not allowed"
    assert refusal(redis.exceptions.ReadOnlyError("You can't write against a read only replica.")) is not None
    assert refusal(redis.ResponseError("MISCONF Redis is configured to save RDB snapshots")) is not None
    assert refusal(redis.ResponseError("ERR wrong number of arguments")) is None
    assert refusal(ValueError("OOM command not allowed")) is None


def test_a_client_with_a_retry_time_gives_up_after_it_once_per_outage(tmp_path: Path) -> None:
    from pipeline.streams.connection import redis_errors

    port = free_port()
    server = subprocess.Popen(
        [
            redis_server_executable(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client = connect(f"redis://127.0.0.1:{port}/0", retry_s=1.0)
                break
            except RedisUnavailableError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        server.kill()
        server.wait()
    start = time.monotonic()
    with pytest.raises(RedisUnavailableError, match="ConnectionError"), redis_errors("reading"):
        client.get("x")
    assert 0.9 < time.monotonic() - start < 3.0  # retried for its budget, then the error
    start = time.monotonic()
    with pytest.raises(RedisUnavailableError), redis_errors("reading"):
        client.get("x")
    assert time.monotonic() - start < 0.5  # the same outage: its budget is spent
