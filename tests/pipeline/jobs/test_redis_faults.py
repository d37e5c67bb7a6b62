"""Jobs and Redis faults, on a redis-server of each test's own: a restart of ~10 s mid-job does not
fail the job (nor lose or repeat an entry); a Redis out of memory fails the job with the reason,
and its final status is written all the same."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipeline.jobs.driver import DriverOptions
from pipeline.streams import Keys, connect
from pipeline.streams.server import _free_port, redis_server_executable
from tests.pipeline.jobs.conftest import Rig
from tests.pipeline.jobs.test_driver import reference


class Server:
    """A redis-server on a fixed port with an append-only file, that can be stopped and started again."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *(redis_server_executable(), "--bind", "127.0.0.1", "--port", str(self.port)),
                *(
                    "--dir",
                    str(self.data),
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                    "--maxmemory-policy",
                    "noeviction",
                ),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """Shut down with its data on disk (SHUTDOWN, as a restarted server's container gets)."""
        assert self.proc is not None
        with contextlib.suppress(redis.ConnectionError):  # it closes the connection as it goes
            redis.Redis(port=self.port).shutdown(save=True)
        self.proc.wait(10)

    def admin(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    s.start()
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait()


def _rig(server: Server, retry_s: float) -> Rig:
    client = connect(server.url, retry_s=retry_s)
    return Rig(client, Keys(f"test-{uuid.uuid4().hex[:8]}:"), DriverOptions(tick_s=0.01, control_poll_s=0.01))


@pytest.mark.slow
def test_a_redis_restart_of_ten_seconds_mid_job_does_not_fail_the_job(server: Server) -> None:
    r = _rig(server, retry_s=30.0)
    try:
        r.create("job", "file:150:0.02")
        r.run(timeout=20, until=lambda: len(r.frames("job")) >= 30)
        down = threading.Event()

        def restart() -> None:
            server.stop()
            down.set()
            time.sleep(10)
            server.start()

        thread = threading.Thread(target=restart)
        thread.start()
        down.wait(15)
        r.run(timeout=60)
        thread.join()
        assert r.recorder.endings["job"] == ("succeeded", None)
        assert r.store.get("job").status.value == "succeeded"
        assert r.frames("job") == list(range(150))  # no gap, no duplicate
        assert r.masks("job") == reference(150)
    finally:
        r.close()


@pytest.mark.slow
def test_redis_out_of_memory_fails_the_job_with_the_reason_and_its_status_is_written(server: Server) -> None:
    r = _rig(server, retry_s=1.0)
    try:
        r.create("job", "file:400:0.01")
        r.run(timeout=20, until=lambda: len(r.frames("job")) >= 30)
        admin = server.admin()
        used = int(admin.info("memory")["used_memory"])
        # Past the limit, so that every write is refused (at the very edge a frame may be refused
        # and the next one taken, as memory comes and goes: publishing's last-entry check is what
        # keeps that from leaving a gap).
        admin.config_set("maxmemory", used - 100_000)
        start = time.monotonic()
        r.run(timeout=30)
        assert time.monotonic() - start < 1.0 + 5.0  # the retry time, then the job ends
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            admin.set("probe", "x" * 10_000)  # Redis still refuses ordinary writes
        status, error = r.recorder.endings["job"]
        assert status == "failed" and "OOM command not allowed" in (error or "")
        info = r.store.get("job")
        assert info.status.value == "failed" and "OOM command not allowed" in (info.error or "")
        done = r.frames("job")
        assert 30 <= len(done) < 400 and done == list(range(len(done)))
        assert info.frames_done == len(done)
    finally:
        r.close()
