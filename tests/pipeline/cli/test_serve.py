"""`samstream serve` refuses what cannot work in one line, before it starts Ray or Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).with_name("samstream"))


def serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("SAMSTREAM_REDIS_URL", "RAY_ADDRESS")}
    return subprocess.run(
        [EXE, "serve", "--weights", "random", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
    )


def one_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    return res.stderr.strip()


@pytest.fixture()
def taken() -> Iterator[int]:
    """A port some other process listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_a_cluster_without_a_shared_redis_is_refused(tmp_path: Path) -> None:
    line = one_line(serve("--address", "auto", "--data-dir", str(tmp_path)))
    assert "--address auto" in line and "127.0.0.1" in line and "--redis-url URL" in line
    line = one_line(serve("--data-dir", str(tmp_path), RAY_ADDRESS="auto"))  # the default from $RAY_ADDRESS
    assert "--redis-url URL (or SAMSTREAM_REDIS_URL)" in line
    assert not (tmp_path / "redis").exists()  # no embedded Redis was started


@pytest.mark.parametrize("option", ["--port", "--metrics-port"])
def test_a_busy_port_is_one_line(taken: int, option: str, tmp_path: Path) -> None:
    line = one_line(serve(option, str(taken), "--data-dir", str(tmp_path)))
    assert line.startswith(f"samstream: error: {option} {taken} on 127.0.0.1 is not free"), line
    assert f"pick another {option}" in line
    assert not (tmp_path / "redis").exists()


def test_run_refuses_a_busy_metrics_port_before_ray_or_redis(taken: int, tmp_path: Path) -> None:
    """``run`` binds its metrics port first: Ray's processes, started next, take free ports, and a
    port checked late could be theirs by then."""
    clean = {k: v for k, v in os.environ.items() if k not in ("SAMSTREAM_REDIS_URL", "RAY_ADDRESS")}
    res = subprocess.run(
        [EXE, "run", "--weights", "null", "--metrics-port", str(taken), "--data-dir", str(tmp_path),
         "--point", "1,1", str(tmp_path / "clip.mp4")],
        capture_output=True, text=True, timeout=60, env=clean,
    )  # fmt: skip
    line = one_line(res)
    assert line.startswith(f"samstream: error: --metrics-port {taken} is not free"), line
    assert not (tmp_path / "redis").exists()
