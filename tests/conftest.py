"""Shared fixtures: generated checkpoints in the official layout, sample images."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


def make_random_checkpoint(path: Path, seed: int = 0) -> Path:
    """A MobileSAM checkpoint in the official layout with seeded random weights.

    BatchNorm running statistics are randomised too, so that no layer is an identity.
    """
    import torch

    from pipeline.model.architecture import build_mobile_sam

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_mobile_sam(1024)
        state = model.state_dict()
        for key, value in state.items():
            if key.endswith("running_mean"):
                value.copy_(torch.randn_like(value) * 0.1)
            elif key.endswith("running_var"):
                value.copy_(torch.rand_like(value) + 0.5)
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a random-weights checkpoint in the official layout (same for the whole session)."""
    return make_random_checkpoint(tmp_path_factory.mktemp("weights") / "mobile_sam.pt")


WARMUP_ARGS = ("--weights", "random", "--image-size", "256", "--precision", "fp32")


def warmup(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``samstream warmup *args`` with its cache in the folder ``cache``."""
    exe = str(Path(sys.executable).with_name("samstream"))
    env = {**os.environ, "SAMSTREAM_CACHE_DIR": str(cache)}
    return subprocess.run([exe, "warmup", *args], capture_output=True, text=True, timeout=600, env=env)


@dataclass(frozen=True)
class CompiledCache:
    """A cache folder where ``samstream warmup`` compiled the model (:data:`WARMUP_ARGS`: random
    weights, 256 px, fp32), and what that first warmup printed."""

    path: Path
    first: subprocess.CompletedProcess[str]


@pytest.fixture(scope="session")
def compiled_cache(tmp_path_factory: pytest.TempPathFactory) -> CompiledCache:
    """The model compiled once for the session (a minute or two): the warmup test checks how it
    was made, the compiled-model tests run on it (compiling is the slowest step of the suite)."""
    path = tmp_path_factory.mktemp("compiled-cache")
    return CompiledCache(path, warmup(path, *WARMUP_ARGS))


@pytest.fixture(scope="session")
def blob_detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference detector (coloured blobs, :mod:`pipeline.evaluation.blobs`) as an ONNX file."""
    from pipeline.evaluation.blobs import export_blob_detector

    return export_blob_detector(tmp_path_factory.mktemp("detector") / "blobs.onnx")


def sample_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An HxWx3 uint8 RGB image: smooth gradient background, noise and two solid shapes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], -1)
    img = img + rng.integers(-20, 20, img.shape)
    cy, cx, r = height // 2, width // 3, min(height, width) // 5
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (220, 30, 40)
    img[height // 5 : height // 5 + r, 2 * width // 3 : 2 * width // 3 + r] = (30, 40, 220)
    return np.clip(img, 0, 255).astype(np.uint8)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run where torch sees a CUDA device and are skipped elsewhere."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
