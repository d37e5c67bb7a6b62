"""Compiling a part of the model in another process, only when it pays off, without stalling anyone.

A :class:`~pipeline.model.runners.Part` asks :meth:`BackgroundBuild.consider` after its eager calls.
When :class:`BuildPolicy` finds that the calls still to come save more than the build costs, the
build starts: ``python -m pipeline.model.build`` at a lower CPU priority, writing the package
atomically into the cache, its output in a ``.log`` beside it. One build per package at a time on a
machine (a lock file holding the builder's pid); the builder stops when the process that started it
ends, so nothing outlives the run that asked for it. ``samstream warmup`` builds ahead of time.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.config import ModelConfig
from pipeline.processes import pid_alive

log = logging.getLogger(__name__)

# Seconds a build costs on a small machine (2 cores, competing with the job at lower priority),
# and the share of an eager call's time the package saves, by part and dtype (samstream bench).
BUILD_S = {"encoder": 90.0, "mask_decoder": 30.0}
SAVES = {
    ("encoder", "fp32"): 0.45,
    ("encoder", "bf16"): 0.2,
    ("mask_decoder", "fp32"): 0.3,
    ("mask_decoder", "bf16"): 0.45,
}
# A part called fewer times than this never builds: one image, or a short answer, is not worth it.
MIN_CALLS = 8
NICE = 10


@dataclass(frozen=True)
class BuildPolicy:
    """When a build pays off.

    Attributes:
        expected_calls: calls the part will get in all (None: unknown, as for a live feed, a
            service or the Python API: then it pays off after ``min_calls``).
        build_s: what a build costs, in seconds of the job's time.
        saves: the share of an eager call's time the package saves.
        min_calls: calls before any build.
    """

    expected_calls: int | None
    build_s: float
    saves: float
    min_calls: int = MIN_CALLS

    def due(self, calls: int, eager_s: float) -> bool:
        if calls < self.min_calls:
            return False
        if self.expected_calls is None:
            return True
        return (self.expected_calls - calls) * eager_s * self.saves > self.build_s


def policy(kind: str, dtype_name: str, expected_calls: int | None) -> BuildPolicy:
    return BuildPolicy(expected_calls, BUILD_S[kind], SAVES.get((kind, dtype_name), 0.3))


def config_json(config: ModelConfig, dtype_name: str) -> str:
    """``config`` as the builder reads it back (paths as text, enums as values)."""
    fields: dict[str, Any] = {
        k: (v.value if hasattr(v, "value") else str(v) if isinstance(v, Path) else v)
        for k, v in asdict(config).items()
    }
    fields.update(precision=dtype_name, device="cpu", compile="compiled", workload_frames=None)
    return json.dumps(fields)


class BackgroundBuild:
    """Builds one package in another process once :class:`BuildPolicy` says it pays off.

    Args:
        kind: ``encoder`` or ``mask_decoder``.
        config: the model's config (the builder loads the same weights from it).
        dtype_name: the dtype the package computes in (``fp32``, ``bf16``).
        path: the package to build.
        policy: when to build.
    """

    def __init__(
        self, kind: str, config: ModelConfig, dtype_name: str, path: Path, policy: BuildPolicy
    ) -> None:
        self.kind = kind
        self.config = config
        self.dtype_name = dtype_name
        self.path = path
        self.policy = policy
        self.process: subprocess.Popen[bytes] | None = None
        self.started = False

    @property
    def lock(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def consider(self, calls: int, eager_s: float) -> bool:
        """Start the build if it is due and nobody builds this package yet. True when started."""
        if self.started or not self.policy.due(calls, eager_s):
            return False
        self.started = True  # once: a build that failed is not retried by this process
        if building(self.lock):
            return False
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_path = self.path.with_name(self.path.name + ".log")
        cmd = [
            sys.executable, "-m", "pipeline.model.build", "--background", "--part", self.kind,
            "--config", config_json(self.config, self.dtype_name), "--parent", str(os.getpid()),
        ]  # fmt: skip
        with open(log_path, "ab") as out:
            self.process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        log.info(
            "building the compiled %s in the background (pid %d, log %s)",
            self.kind,
            self.process.pid,
            log_path,
        )
        return True


def building(lock: Path) -> bool:
    """Whether a live process holds ``lock`` (a stale lock, its process gone, is removed)."""
    try:
        pid = int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid > 0 and pid_alive(pid):
        return True
    lock.unlink(missing_ok=True)
    return False


def take_lock(lock: Path) -> bool:
    """Make ``lock`` this process's (False: another live process holds it)."""
    lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            if building(lock):
                return False
            continue  # stale: removed by building(); try again
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False
