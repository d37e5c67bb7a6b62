"""EmbeddedRedis: a real server process, reused after a driver dies, stopped without leftovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import RedisUnavailableError
from pipeline.streams import EmbeddedRedis, connect
from pipeline.streams.server import STATE_FILE
from tests.pipeline.streams.conftest import pid_alive

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_reused_after_the_owner_is_dropped_then_stopped(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    first = EmbeddedRedis(data)
    url = first.start()
    pid, port = first.pid, first.port
    assert pid is not None and port is not None
    assert os.getsid(pid) == pid != os.getsid(0)  # own session: Ctrl-C on the driver does not reach it
    assert json.loads((data / STATE_FILE).read_text())["port"] == port
    connect(url).set("kept", "yes")
    del first  # never stopped, as when the driver is killed with SIGKILL

    second = EmbeddedRedis(data)
    assert second.start() == url
    assert (second.reused, second.pid, second.port) == (True, pid, port)
    assert connect(url).get("kept") == "yes"
    second.stop()
    assert not pid_alive(pid)
    assert not (data / STATE_FILE).exists()
    with pytest.raises(RedisUnavailableError):
        connect(url, timeout_s=1)
    assert (data / "appendonly.aof").exists()


def test_data_survives_a_killed_server(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        connect(server.url).rpush("frames", "0", "1", "2")
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        old_pid = server.pid
        deadline = time.monotonic() + 5
        while pid_alive(old_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
    # stop() of the dead server above must not hang or raise; a new one reloads the data
    with EmbeddedRedis(tmp_path) as again:
        assert not again.reused and again.pid != old_pid
        assert connect(again.url).lrange("frames", 0, -1) == ["0", "1", "2"]
        pid = again.pid
    assert pid is not None and not pid_alive(pid)


def test_stop_without_start_and_twice(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    server.stop()
    with pytest.raises(RedisUnavailableError, match="not started"):
        _ = server.url
    server.start()
    server.stop()
    server.stop()


def test_bad_executable(tmp_path: Path) -> None:
    with pytest.raises(RedisUnavailableError, match="exited with code"):
        EmbeddedRedis(tmp_path, executable="/bin/false").start()


def test_rerun_after_the_driver_is_killed(tmp_path: Path) -> None:
    driver = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from pipeline.streams import EmbeddedRedis, connect\n"
        "server = EmbeddedRedis(Path(sys.argv[1]))\n"
        "connect(server.start()).set('frame', '41')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", driver, str(tmp_path)], timeout=30, check=False)
    assert proc.returncode == -signal.SIGKILL
    with EmbeddedRedis(tmp_path) as rerun:
        assert rerun.reused
        assert connect(rerun.url).get("frame") == "41"
        pid = rerun.pid
    assert pid is not None and not pid_alive(pid)
