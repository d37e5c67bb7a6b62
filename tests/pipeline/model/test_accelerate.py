"""The fast paths agree with plain kornia: tiling exactly, compiled within a stated tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.model import DecodeRequest, MobileSam
from pipeline.model.accelerate import _load_package, prepare_encoder, tile_conv_stage
from pipeline.model.architecture import build_mobile_sam
from pipeline.prompts import Prompt
from tests.conftest import sample_rgb

# Compiled kernels reorder float sums: the stated tolerance of the compiled encoder and decoder.
ENCODER_TOL = 1e-4
DECODER_LOGIT_TOL = 1e-3


@pytest.mark.parametrize("rows", [3, 8, 64])
def test_tiled_conv_stage_equals_the_plain_encoder(rows: int, checkpoint: Path) -> None:
    model = build_mobile_sam(256)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    encoder = model.eval().image_encoder
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        expected = encoder(x)
        assert (tile_conv_stage(encoder, rows)(x) - expected).abs().max().item() <= 1e-5
        # As compiled: tiled, BatchNorm folded into the convolutions, channels-last.
        prepared = prepare_encoder(encoder, tile=True)
        got = prepared(x.contiguous(memory_format=torch.channels_last))
        assert (got - expected).abs().max().item() <= 1e-4
    # The original is untouched, and the state dict keeps the official keys' values.
    assert type(encoder.layers[0].blocks[0]).__name__ == "MBConv"


@pytest.mark.slow
def test_compiled_model_agrees_with_eager(checkpoint: Path) -> None:
    eager = MobileSam.from_config(
        ModelConfig(checkpoint=checkpoint, image_size=256, device="cpu", compile="eager")
    )
    fast = MobileSam.from_config(
        ModelConfig(checkpoint=checkpoint, image_size=256, device="cpu", compile="compiled")
    )
    frames = [sample_rgb(240, 320, s) for s in range(2)]
    for frame in frames:
        a, b = eager.encode([frame])[0], fast.encode([frame])[0]
        assert (a.features - b.features).abs().max().item() <= ENCODER_TOL
        rng = np.random.default_rng(0)
        requests = [
            DecodeRequest(Prompt(points=((100.0, 120.0),), labels=(1,))),
            DecodeRequest(Prompt(box=(40.0, 60.0, 170.0, 190.0))),
            *[
                DecodeRequest(
                    Prompt(box=(10.0 + 20 * i, 10.0, 150.0 + 20 * i, 200.0)),
                    mask_input=rng.normal(size=(64, 64)).astype(np.float32),
                    multimask=True,
                )
                for i in range(5)
            ],
        ]
        x, y = eager.decode(a, requests), fast.decode(a, requests)
        assert np.abs(x.logits - y.logits).max() <= DECODER_LOGIT_TOL
        assert np.abs(x.scores - y.scores).max() <= DECODER_LOGIT_TOL
        for m1, m2 in zip(x.masks, y.masks, strict=True):
            union = np.logical_or(m1, m2).sum()
            assert union == 0 or np.logical_and(m1, m2).sum() / union >= 0.99


@pytest.mark.slow
def test_package_loader_equals_torchs_public_loader(checkpoint: Path, tmp_path: Path) -> None:
    fast = MobileSam.from_config(
        ModelConfig(
            checkpoint=checkpoint, image_size=256, device="cpu", compile="compiled", cache_dir=tmp_path
        )
    )
    fast.encode([sample_rgb(240, 320, 0)])
    (package,) = (tmp_path / "compiled").glob("encoder-256-*.pt2")
    x = torch.randn(1, 3, 256, 256).contiguous(memory_format=torch.channels_last)
    expected = torch._inductor.aoti_load_package(str(package))(x)
    assert torch.equal(_load_package(package)(x), expected)
