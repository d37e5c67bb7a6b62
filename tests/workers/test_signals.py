"""SIGINT or SIGTERM sent to the `samstream run` process alone, as `docker stop` and systemd do.

Real processes: the CLI, the local Ray it starts, its embedded Redis server, a generated video.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from pipeline.samples import write_clip
from pipeline.streams.server import STATE_FILE
from tests.workers.conftest import cli, popen, wait_for_entries

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]

FRAMES = 150


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (Ray's GCS, raylet, workers, …), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            alive.add(pid)
    return alive


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
    started = _descendants(proc.pid) | {redis_pid}
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
    assert f"resuming after frame {stopped_at - 1}" in again.stderr
    assert f"job sig succeeded: {FRAMES} frames" in again.stdout
    r = results(data)
    assert r.raw_ids("sig") == [f"{i}-1" for i in range(FRAMES)]  # every frame once, in order
    assert [result.frame_index for _, result in r.entries("sig")] == list(range(FRAMES))
