"""What Ray's workers find in their environment, and what the driver of a run does not import."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from workers import local
from workers.actors import PRESTART_ENV, START_ENV, WORKER_ENV, ray_start_env, worker_env


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
    _unset(monkeypatch, *WORKER_ENV, *START_ENV, *PRESTART_ENV)
    monkeypatch.setenv(attempts, "7")
    ray_start_env()
    assert not set(PRESTART_ENV) & set(os.environ)  # a service's Ray does not prestart
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert os.environ[timeout] == "50"
    assert os.environ[attempts] == "7"
    # the same 10 s of tries as Ray's default (10 a second apart), at 50 ms
    assert int(START_ENV[attempts]) * int(START_ENV[timeout]) == 10_000


def test_a_local_run_starts_ray_with_the_start_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    seen: dict[str, str | None] = {}

    def fake_init(**kwargs: object) -> None:
        seen.update({name: os.environ.get(name) for name in (*WORKER_ENV, *START_ENV, *PRESTART_ENV)})

    _unset(monkeypatch, *WORKER_ENV, *START_ENV, *PRESTART_ENV)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    local._ray_init()
    # in the environment Ray's processes inherit; a run's raylet prestarts its workers
    assert seen == {**WORKER_ENV, **START_ENV, **PRESTART_ENV}


def test_the_driver_of_a_run_does_not_import_torch() -> None:
    # Its workers import torch; the driver importing it too cost a second before the first frame.
    code = (
        "import sys\n"
        "from pipeline.config import ModelConfig\n"
        "from workers import local\n"
        "assert not local._first_compile(ModelConfig())\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
