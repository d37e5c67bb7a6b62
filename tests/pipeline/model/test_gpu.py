"""The CUDA path (float16 encoder, compiled, batched decoder) agrees with the CPU's eager path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ModelConfig
from pipeline.model import DecodeRequest, MobileSam
from pipeline.prompts import Prompt
from tests.conftest import sample_rgb

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("compile_mode", ["eager", "compiled"])
def test_cuda_half_precision_agrees_with_cpu(checkpoint: Path, compile_mode: str) -> None:
    cpu = MobileSam.from_config(
        ModelConfig(checkpoint=checkpoint, image_size=1024, device="cpu", compile="eager")
    )
    gpu = MobileSam.from_config(
        ModelConfig(
            checkpoint=checkpoint, image_size=1024, device="cuda", compile=compile_mode, precision="auto"
        )
    )
    assert gpu.precision == "fp16"
    frames = [sample_rgb(480, 640, s) for s in range(4)]
    requests = [DecodeRequest(Prompt(box=(40.0 + 30 * i, 60.0, 300.0 + 30 * i, 400.0))) for i in range(8)]
    for ref, got in zip(cpu.encode(frames), gpu.encode(frames), strict=True):
        scale = float(ref.features.abs().max())
        assert float((ref.features - got.features).abs().max()) <= 2e-2 * scale  # float16
        a, b = cpu.decode(ref, requests), gpu.decode(got, requests)
        for m1, m2 in zip(a.masks, b.masks, strict=True):
            union = np.logical_or(m1, m2).sum()
            assert union == 0 or np.logical_and(m1, m2).sum() / union >= 0.99
