"""What Ray's workers find in their environment, and what the driver of a run does not import."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.apps import run as local
from workers.actors import (
    MALLOC_OPTIONS,
    RUN_ENV,
    START_ENV,
    WORKER_ENV,
    ray_start_env,
    worker_env,
)


def _unset(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Unset ``names`` for this test; whatever the test sets them to is undone after it."""
    for name in names:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_worker_env_sets_what_the_user_has_not(monkeypatch: pytest.MonkeyPatch) -> None:
    _unset(monkeypatch, "OMP_WAIT_POLICY")
    worker_env()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" == WORKER_ENV["OMP_WAIT_POLICY"]
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    worker_env()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_ray_start_env_adds_the_socket_retries_and_keeps_the_users(monkeypatch: pytest.MonkeyPatch) -> None:
    timeout, attempts = (
        f"RAY_raylet_client_{n}" for n in ("connect_timeout_milliseconds", "num_connect_attempts")
    )
    _unset(monkeypatch, *WORKER_ENV, *START_ENV, *RUN_ENV)
    monkeypatch.setenv(attempts, "7")
    ray_start_env()
    assert not set(RUN_ENV) & set(os.environ)  # a service's Ray neither prestarts nor frees one by one
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert os.environ[timeout] == "50"
    assert os.environ[attempts] == "7"
    # the same 10 s of tries as Ray's default (10 a second apart), at 50 ms
    assert int(START_ENV[attempts]) * int(START_ENV[timeout]) == 10_000


def test_a_local_run_starts_ray_with_the_start_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    seen: dict[str, str | None] = {}

    def fake_init(**kwargs: object) -> None:
        seen.update({name: os.environ.get(name) for name in (*WORKER_ENV, *START_ENV, *RUN_ENV)})

    _unset(monkeypatch, *WORKER_ENV, *START_ENV, *RUN_ENV)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    local._ray_init()
    # in the environment Ray's processes inherit; a run's raylet prestarts its workers and frees
    # each object at once
    assert seen == {**WORKER_ENV, **START_ENV, **RUN_ENV}


def test_a_run_starts_ray_without_an_api_server_or_monitors(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    import ray._private.node as node
    import ray._private.services as services

    calls: list[bool | None] = []
    started: list[str] = []

    def start_api_server(include_dashboard: bool | None, *args: object) -> tuple[str, str]:
        calls.append(include_dashboard)
        return "url", "process"

    def starts(kind: str) -> object:
        return lambda self: started.append(kind)

    answers = []

    class Head:  # what Ray's head node does while it starts
        def start(self, include_dashboard: bool | None) -> None:
            answers.append(services.start_api_server(include_dashboard, "host"))
            answers.append(services.start_api_server(True, "host"))
            node.Node.start_monitor(self)  # type: ignore[arg-type]
            node.Node.start_log_monitor(self)  # type: ignore[arg-type]

    def fake_init(**kwargs: object) -> None:
        Head().start(kwargs["include_dashboard"])  # type: ignore[arg-type]

    _unset(monkeypatch, *WORKER_ENV, *START_ENV, *RUN_ENV)
    monkeypatch.setattr(services, "start_api_server", start_api_server)
    monkeypatch.setattr(node.Node, "start_monitor", starts("monitor"))
    monkeypatch.setattr(node.Node, "start_log_monitor", starts("log monitor"))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    local._ray_init()
    # off: no process and no URL, nothing started; asked for, started as Ray would
    assert answers == [(None, None), ("url", "process")]
    assert calls == [True]
    assert started == []  # no autoscaler monitor, no log monitor
    # as they were, once Ray has started
    assert services.start_api_server is start_api_server
    node.Node.start_monitor(Head())  # type: ignore[arg-type]
    node.Node.start_log_monitor(Head())  # type: ignore[arg-type]
    assert started == ["monitor", "log monitor"]


_FAULTS_OF_A_FORWARD = """
import resource, sys
import numpy as np
from workers.actors import worker_env

if sys.argv[1] == "worker":
    worker_env()  # as a model's worker starts


def forward():  # a model's forward pass: activations of a few MB each, all freed at its end
    blocks = [np.ones(8 << 20, np.uint8) for _ in range(12)]
    return sum(int(b[-1]) for b in blocks)


forward()
forward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
forward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults_of_a_forward(mode: str, env: dict[str, str]) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_OF_A_FORWARD, mode], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout)


def test_a_workers_forward_passes_reuse_the_memory_the_last_one_freed() -> None:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_OPTIONS}
    pages = 12 * (8 << 20) // 4096
    # glibc's defaults gave the freed 96 MB back and faulted it in again (6,000 faults here)
    assert _faults_of_a_forward("worker", env) < pages // 100
    # a user's own malloc settings are theirs: none is changed
    mine = {**env, "MALLOC_TRIM_THRESHOLD_": str(1 << 20)}
    assert _faults_of_a_forward("worker", mine) > _faults_of_a_forward("worker", env)


def test_the_image_sets_the_start_env() -> None:
    # A cluster's Ray is started by the image's `ray start`, not by samstream: its ENV lines hold
    # the same settings (the run-only ones excepted).
    text = (Path(__file__).parents[2] / "deploy" / "Dockerfile").read_text()
    env = dict(re.findall(r"\b(RAY_\w+|OMP_\w+)=(\S+)", text))
    assert {**WORKER_ENV, **START_ENV}.items() <= env.items()
    assert not set(RUN_ENV) & set(env)


_FAULTS_PER_PUT = """
import resource, sys, time
import numpy as np, ray
from pipeline.apps import run as local

local._ray_init()  # as `samstream run` starts Ray


@ray.remote
def puts(n):
    data = np.ones(16 << 20, np.uint8)
    faults = []
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ref = ray.put(data)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del ref  # nobody holds it: the raylet frees it
        time.sleep(0.03)
    return faults


print(*ray.get(puts.remote(6)))
node = ray._private.worker.global_worker.node
print(sorted(node.all_processes))  # Ray's processes started here, by kind
ray.shutdown()
"""


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_runs_ray_has_no_api_server_nor_monitors_and_reuses_freed_memory() -> None:
    # Objects are freed within milliseconds of their last holder letting go, so the next ones are
    # stored on memory already written: no page fault per 4 KiB page. With Ray's defaults (freed
    # once a second, or a hundred at a time) every put here faulted each of its 4096 pages in.
    env = {k: v for k, v in os.environ.items() if k not in {*START_ENV, *RUN_ENV}}
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_PER_PUT], capture_output=True, text=True, env=env, timeout=110
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    faults = [int(f) for f in lines[0].split()]
    started = lines[1]
    assert "gcs_server" in started and "raylet" in started, started
    assert "dashboard" not in started, started  # no API server: the run does not wait for one
    assert "monitor" not in started and "log_monitor" not in started, started  # nor the monitors
    pages = (16 << 20) // 4096
    assert len(faults) == 6
    # The first put lands on fresh memory, and one more may while Ray is still starting.
    assert sum(f < pages // 10 for f in faults[1:]) >= 4, faults


def test_an_actor_module_import_leaves_each_worker_its_own_imports() -> None:
    # Every worker imports the module of the actor classes before it starts: an encoder has no
    # use for a Redis client or the tracker host (about 0.1 s of its start, before the first frame).
    code = "import sys\nimport workers.actors\nprint(sorted({'redis', 'pipeline.tracking.host', 'torch'} & set(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_driver_of_a_run_does_not_import_torch() -> None:
    # Its workers import torch; the driver importing it too cost a second before the first frame.
    code = (
        "import sys\n"
        "from pipeline.config import ModelConfig\n"
        "from pipeline.apps import run as local\n"
        "assert not local._first_compile(ModelConfig())\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
