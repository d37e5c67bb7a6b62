"""``samstream serve`` on one machine, driven by the client commands as a user would.

The real service (local Ray started by it, the encoder pool on Ray Serve, job runners), a real
Redis server, real video; ``submit``, ``status``, ``watch``, ``track`` and ``cancel`` with ``--api``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.bench.samples import object_centres, write_clip
from tests.workers.conftest import EXE

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

TOKEN = "serve-cli-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return {**os.environ, "SAMSTREAM_API_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    data = tmp_path_factory.mktemp("serve")
    port, metrics = _free_port(), _free_port()
    log = open(data / "serve.log", "wb")  # noqa: SIM115 (the process writes to it)
    args = [
        EXE, "serve", "--port", str(port), "--metrics-port", str(metrics), "--data-dir", str(data),
        "--weights", "random", "--image-size", "256", "--compile", "eager", "--allow-local-files",
        "--encoder-gpus", "0", "--min-encoders", "1", "--max-encoders", "1",
    ]  # fmt: skip
    proc = subprocess.Popen(
        args,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, (data / "serve.log").read_text()
        assert time.monotonic() < deadline, (data / "serve.log").read_text()
        try:
            if httpx.get(f"{url}/healthz", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    try:
        yield url, metrics, data
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def sam(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout, env=_env())


def test_submit_wait_status_watch(service: tuple[str, int, Path], tmp_path: Path) -> None:
    url, metrics, _ = service
    clip = write_clip(tmp_path / "clip.mp4", frames=20, width=160, height=120)
    x, y = object_centres(0, 160, 120)[0]
    r = sam(
        "submit",
        str(clip),
        "--point",
        f"{x},{y}",
        "--box",
        "4,4,60,50",
        "--job-id",
        "j-wait",
        "--wait",
        "--api",
        url,
    )
    assert r.returncode == 0, r.stderr
    assert "job j-wait succeeded" in r.stdout

    r = sam("status", "j-wait", "--api", url, "--json")
    job = json.loads(r.stdout)
    assert job["status"] == "succeeded" and job["frames_done"] == 20 and job["frames_total"] == 20

    r = sam("watch", "j-wait", "--api", url, "--no-follow")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[1] for ln in lines] == [str(i) for i in range(20)]
    assert all("track 1" in ln and "track 2" in ln for ln in lines)

    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
    assert 'samstream_jobs{status="succeeded"}' in body


def test_track_then_cancel_a_running_job(service: tuple[str, int, Path], tmp_path: Path) -> None:
    url, _, _ = service
    clip = write_clip(tmp_path / "long.mp4", frames=900, width=160, height=120)
    x, y = object_centres(0, 160, 120)[0]
    r = sam("submit", str(clip), "--point", f"{x},{y}", "--job-id", "j-long", "--api", url)
    assert r.returncode == 0, r.stderr
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"})
    deadline = time.monotonic() + 120
    while api.get("/jobs/j-long").json()["frames_done"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.3)

    r = sam("track", "add", "j-long", "2", "--box", "4,4,60,50", "--api", url)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 60
    while not any(e["type"] == "track_added" for e in api.get("/jobs/j-long/events").json()["events"]):
        assert time.monotonic() < deadline, api.get("/jobs/j-long/events").json()
        time.sleep(0.3)

    r = sam("cancel", "j-long", "--api", url)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 60
    while (job := api.get("/jobs/j-long").json())["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert job["status"] == "cancelled" and job["error"] == "cancelled on request"
    assert 3 <= job["frames_done"] < 900
    last = api.get("/jobs/j-long/masks", params={"after": f"{job['frames_done'] - 2}-1"}).json()["entries"]
    assert [t["track_id"] for t in last[-1]["tracks"]] == [1, 2]  # the added track is followed
    r = sam("cancel", "j-long", "--api", url)
    assert r.returncode == 1 and "cancelled already" in r.stderr


def test_client_errors_are_one_line(service: tuple[str, int, Path]) -> None:
    url, _, _ = service
    r = subprocess.run(
        [EXE, "status", "j-wait", "--api", url, "--token", "wrong"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "SAMSTREAM_API_TOKEN"},
    )
    assert r.returncode == 1 and "refused the token" in r.stderr and "Traceback" not in r.stderr
    r = sam("submit", "/etc/hostname", "--point", "1,1", "--job-id", "j-text", "--wait", "--api", url)
    assert r.returncode == 1 and "job j-text failed: cannot" in r.stdout, (r.stdout, r.stderr)
    r = sam("submit", "ftp://h/x.mp4", "--point", "1,1", "--api", url)
    assert r.returncode == 1 and "'ftp' is not allowed" in r.stderr
    r = sam("status", "nope", "--api", url)
    assert r.returncode == 1 and "no job or stream 'nope'" in r.stderr
    r = sam("status", "x", "--api", "http://127.0.0.1:1")
    assert r.returncode == 1 and "cannot reach the samstream API" in r.stderr
