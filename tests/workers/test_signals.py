"""SIGINT or SIGTERM sent to the `samstream run` or `serve` process alone, as `docker stop` and systemd do.

Real processes: the CLI, the local Ray it starts, its embedded Redis server, a generated video.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from pipeline.bench.samples import write_clip
from pipeline.processes import descendants, pid_alive
from pipeline.streams import EmbeddedRedis, Keys, connect
from pipeline.streams.server import CONFIG_FILE, STATE_FILE
from tests.fixtures.serve import ServeProcess
from tests.workers.conftest import cli, popen, wait_for_entries

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]

FRAMES = 150


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if pid_alive(pid)}


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_the_run_process_leaves_the_job_resumable(
    tmp_path: Path, results, sig: signal.Signals, code: int
) -> None:
    clip = write_clip(tmp_path / "clip.mp4", frames=FRAMES, width=160, height=120)
    data = tmp_path / "out"
    args = [
        "run", str(clip), "--point", "40,60", "--weights", "random", "--image-size", "256",
        "--compile", "eager", "--job-id", "sig", "--data-dir", str(data), "--no-progress",
    ]  # fmt: skip
    proc = popen(*args)  # a session of its own: the signal below reaches this process only
    r = wait_for_entries(results, data, "sig", 5, proc)
    r.close()  # not a user of the run's Redis any more: the run alone decides when it stops
    redis_pid = int(json.loads((data / "redis" / STATE_FILE).read_text())["pid"])
    started = descendants(proc.pid) | {redis_pid}
    assert len(started) > 3  # Redis, Ray's GCS and raylet, workers

    proc.send_signal(sig)  # os.kill(pid): the process alone, not its group
    sent = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    name = "" if sig == signal.SIGINT else " (SIGTERM)"
    assert lines[-1] == f"samstream: interrupted{name}; resume with --job-id sig", err
    # nothing from Ray after our last line (nor anywhere): no retried tasks, no signal dumps
    assert out == "" and "(raylet)" not in err and "Traceback" not in err and "received" not in err
    while _alive(started) and time.monotonic() - sent < 10:
        time.sleep(0.1)
    assert not _alive(started), f"left running 10 s after the signal: {sorted(_alive(started))}"

    r = results(data)
    stopped_at = len(r.raw_ids("sig"))
    assert 5 <= stopped_at < FRAMES
    job = r.job("sig")
    assert job["status"] == "cancelled" and job["error"].startswith("interrupted; run again"), job
    r.close()

    again = cli(*args)
    assert again.returncode == 0, again.stderr
    password = (data / "redis" / CONFIG_FILE).read_text().split()[-1]
    assert password not in out + err + again.stdout + again.stderr  # the embedded Redis's, never shown
    assert f"resuming after frame {stopped_at - 1}" in again.stderr
    assert f"job sig succeeded: {FRAMES} frames" in again.stdout
    r = results(data)
    assert r.raw_ids("sig") == [f"{i}-1" for i in range(FRAMES)]  # every frame once, in order
    assert [result.frame_index for _, result in r.entries("sig")] == list(range(FRAMES))


def _wait_gone(pids: set[int], since: float, within: float = 10.0) -> None:
    while _alive(pids) and time.monotonic() - since < within:
        time.sleep(0.1)
    assert not _alive(pids), f"left running {within:.0f} s after the signal: {sorted(_alive(pids))}"


def test_sigterm_to_serve_stops_it_and_a_restart_resumes_its_job(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.mp4", frames=FRAMES, width=160, height=120)
    data = tmp_path / "data"
    args = [
        "--data-dir", str(data), "--weights", "random", "--image-size", "256", "--compile", "eager",
        "--allow-local-files", "--encoder-gpus", "0", "--min-encoders", "1", "--max-encoders", "1",
        "--source-hosts", "1", "--metrics-port", "0",
    ]  # fmt: skip
    service = ServeProcess(args, tmp_path, "signal-test-token")
    server = None
    try:
        service.start()
        with service.api() as api:
            body = {"source": str(clip), "tracks": [{"id": 1, "points": [[40, 60]]}], "job_id": "sj"}
            assert api.post("/jobs", json=body).status_code == 201
            deadline = time.monotonic() + 120
            while api.get("/jobs/sj").json()["frames_done"] < 3:
                assert time.monotonic() < deadline, service.log()
                time.sleep(0.2)
        assert service.proc is not None
        redis_pid = int(json.loads((data / "redis" / STATE_FILE).read_text())["pid"])
        started = descendants(service.proc.pid) | {redis_pid}

        service.proc.send_signal(signal.SIGTERM)  # the process alone, not its group
        sent = time.monotonic()
        assert service.proc.wait(30) == 143, service.log()
        log = (tmp_path / "serve-1.log").read_text()
        assert log.strip().splitlines()[-1] == "samstream serve: stopped (SIGTERM)", log
        assert "Traceback" not in log and "(raylet)" not in log, log
        _wait_gone(started, sent)

        service.start()  # the same data: the unfinished job is taken up again where it stopped
        with service.api() as api:
            deadline = time.monotonic() + 240
            while (job := api.get("/jobs/sj").json())["status"] != "succeeded":
                assert job["status"] in ("queued", "running") and time.monotonic() < deadline, (
                    job,
                    service.log(),
                )
                time.sleep(0.5)
        server = EmbeddedRedis(data / "redis")
        client = connect(server.start())
        ids = [eid for eid, _ in client.xrange(Keys().masks("sj"))]
        assert ids == [f"{i}-1" for i in range(FRAMES)]  # every frame once, in order
    finally:
        service.stop()
        if server is not None:
            server.stop()
