"""``run_local`` from the Python API in a process that has used PyAV already (real Ray, Redis, video).

Ray forks its processes with a ``preexec_fn``: the child drops every other thread's Python state,
and a PyAV frame converter kept in the caller's thread then waits forever for FFmpeg threads the
child does not have. A run that started Ray from a thread of its own hung there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = textwrap.dedent(
    """
    import io, sys
    from pathlib import Path

    import av

    from pipeline.apps.run import LocalRun, run_local
    from pipeline.bench.samples import write_clip
    from pipeline.config import ModelConfig
    from pipeline.prompts import Prompt, TrackSpec
    from pipeline.spec import JobSpec

    folder = Path(sys.argv[1])
    clip = write_clip(folder / "clip.mp4", frames=6, width=320, height=240)
    with av.open(str(clip)) as container:  # this thread now holds PyAV's frame converter
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    spec = JobSpec(str(clip), (TrackSpec(1, Prompt(box=(40, 40, 160, 160))),), image_size=256, weights="null")
    model = ModelConfig(weights="null", image_size=256, compile="eager")
    for job in ("first", "second"):
        code = run_local(spec, model, LocalRun(job_id=job, out_dir=folder / job, progress=False), io.StringIO())
        print(job, code, len(frames), flush=True)
    """
)


def test_a_run_after_pyav_was_used_in_the_callers_thread_starts_ray_and_finishes(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # Ray's processes too go on a timeout
    )
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the runs did not finish in 180 s (Ray's start hung?): {out!r} {err[-2000:]!r}")
    assert proc.returncode == 0, err[-2000:]
    assert out.splitlines() == ["first 0 6", "second 0 6"]
