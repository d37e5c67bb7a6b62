"""The fast paths agree with plain kornia: tiling exactly, compiled within a stated tolerance."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import UnsafeCacheError
from pipeline.model import DecodeRequest, MobileSam
from pipeline.model.accelerate import (
    DecoderCall,
    ExplicitAttention,
    _load_package,
    build_package,
    decoder_recipe,
    load_package,
    prepare_decoder,
    prepare_encoder,
    tile_conv_stage,
)
from pipeline.model.architecture import build_mobile_sam
from pipeline.model.build import recipes
from pipeline.prompts import Prompt
from tests.conftest import CompiledCache, sample_rgb

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


def test_the_prepared_decoder_is_kornias_in_float32_and_near_it_in_bfloat16(checkpoint: Path) -> None:
    model = build_mobile_sam(256)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    decoder, prompts = model.eval().mask_decoder, model.prompt_encoder
    g = torch.Generator().manual_seed(0)
    image, pe = (torch.randn(1, 256, 16, 16, generator=g) for _ in range(2))
    box = torch.tensor([[40.0, 60.0, 170.0, 190.0]])
    mask = torch.randn(1, 1, 64, 64, generator=g)
    with torch.inference_mode():
        for given, has in ((mask, torch.ones(1, 1, 1, 1)), (None, torch.zeros(1, 1, 1, 1))):
            # kornia's prompt encoder and decoder, as the official predictor runs them
            sparse, dense = prompts(points=None, boxes=box, masks=given)
            expected = decoder.predict_masks(image, pe, sparse, dense)
            call = DecoderCall(prepare_decoder(decoder), prompts)
            got = call(image, pe, sparse, torch.zeros_like(mask) if given is None else given, has)
            for a, b in zip(got, expected, strict=True):
                assert (a - b).abs().max().item() <= 1e-5
            half = DecoderCall(prepare_decoder(decoder, torch.bfloat16), prompts)
            mask_in = torch.zeros_like(mask) if given is None else given
            masks, _ = half(image.bfloat16(), pe.bfloat16(), sparse.bfloat16(), mask_in, has)
            err = (masks.float() - expected[0]).norm() / expected[0].norm()
            assert err.item() <= 0.05
    # Every attention of the copy is replaced; the original keeps kornia's, and the official keys.
    prepared = call.decoder
    kinds = [type(m).__name__ for m in prepared.modules()]
    assert kinds.count("ExplicitAttention") == 7 and "Attention" not in kinds
    assert not any(isinstance(m, ExplicitAttention) for m in decoder.modules())
    assert prepared.state_dict().keys() == decoder.state_dict().keys()


@pytest.mark.slow
def test_compiled_model_agrees_with_eager(compiled_cache: CompiledCache) -> None:
    # The packages `samstream warmup` made for the session (random weights, 256 px, fp32).
    config = ModelConfig(weights="random", image_size=256, precision="fp32", device="cpu")
    eager = MobileSam.from_config(replace(config, compile="eager"))
    fast = MobileSam.from_config(replace(config, compile="compiled", cache_dir=compiled_cache.path))
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
@pytest.mark.timeout(300)
def test_the_compiled_bf16_decoder_agrees_with_its_eager_module(checkpoint: Path, tmp_path: Path) -> None:
    # Built as `auto` builds it on a CPU with bf16 units. Frozen, with the embedding read through a
    # transpose, this package gave NaN masks on AVX-512 (the IoU row of `bench --suite encoder`
    # read 0 on AMX): a kernel that GCC 12 compiled wrong.
    model = build_mobile_sam(256)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    model.eval()
    recipe = decoder_recipe(model.mask_decoder, model.prompt_encoder, 256, torch.bfloat16, tmp_path)
    recipe.build()
    package = load_package(recipe.path)
    g = torch.Generator().manual_seed(0)
    image, pe = (
        torch.randn(1, 256, 16, 16, generator=g).bfloat16().contiguous(memory_format=torch.channels_last)
        for _ in range(2)
    )
    mask = torch.randn(1, 1, 64, 64, generator=g)
    with torch.inference_mode():
        for box in ([[40.0, 60.0, 170.0, 190.0]], [[10.0, 10.0, 250.0, 120.0]]):
            for given, has in (
                (mask, torch.ones(1, 1, 1, 1)),
                (torch.zeros_like(mask), torch.zeros(1, 1, 1, 1)),
            ):
                sparse, _ = model.prompt_encoder(points=None, boxes=torch.tensor(box), masks=None)
                inputs = (image, pe, sparse.bfloat16(), given, has)
                (want, want_iou), (got, got_iou) = recipe.module(*inputs), package(*inputs)
                assert torch.isfinite(got.float()).all() and torch.isfinite(got_iou.float()).all()
                err = (got.float() - want.float()).norm() / want.float().norm()
                assert err.item() <= 0.05
                assert (got_iou.float() - want_iou.float()).abs().max().item() <= 0.05
                agree = ((got > 0) == (want > 0)).float().mean().item()
                assert agree >= 0.98


class _Small(nn.Module):
    """A few of the encoder's kinds of layer: compiles in seconds, not the encoder's minute."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.proj = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = nn.functional.gelu(self.conv(x))
        return self.proj(y.permute(0, 2, 3, 1)), y.mean(dim=(2, 3))


def test_package_loader_equals_torchs_public_loader(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    package = build_package(_Small().eval(), (x,), tmp_path / "compiled" / "small.pt2")
    assert stat.S_IMODE(package.parent.stat().st_mode) == 0o700  # the folder made for packages is private
    expected = torch._inductor.aoti_load_package(str(package))(x)
    ours = _load_package(package)(x)
    assert len(ours) == 2 and all(torch.equal(a, b) for a, b in zip(ours, expected, strict=True))


def test_a_model_does_not_load_a_package_others_may_write(checkpoint: Path, tmp_path: Path) -> None:
    config = ModelConfig(
        checkpoint=checkpoint, image_size=256, device="cpu", compile="compiled", cache_dir=tmp_path
    )
    (recipe,) = recipes(config, ["encoder"])
    recipe.path.parent.mkdir(mode=0o700, parents=True)
    recipe.path.write_bytes(b"a package")  # never read: the mode is checked first
    recipe.path.chmod(0o666)
    model = MobileSam.from_config(config)
    with pytest.raises(UnsafeCacheError, match="writable by its group and others"):
        model.encode([sample_rgb(240, 320, 0)])


def _refused(path: Path) -> str:
    """The error of building (or, when there, loading) the package at ``path``; nothing is
    compiled on the way."""
    with pytest.raises(UnsafeCacheError) as err:
        if path.is_file():
            load_package(path)
        else:
            build_package(nn.Identity(), (torch.zeros(1, 3, 8, 8),), path)
    return str(err.value)


def test_a_cache_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "compiled"
    folder.mkdir()
    folder.chmod(0o777)
    msg = _refused(folder / "encoder-256-abc.pt2")
    assert f"cache folder {folder} is writable by its group and others (mode 0777)" in msg
    assert "SAMSTREAM_CACHE_DIR" in msg and "--compile eager" in msg
    assert list(folder.iterdir()) == []  # not compiled into it either
    folder.chmod(0o775)
    assert "writable by its group (mode 0775)" in _refused(folder / "encoder-256-abc.pt2")


def test_a_package_others_can_write_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "compiled"
    folder.mkdir(mode=0o700)
    package = folder / "encoder-256-abc.pt2"
    package.write_bytes(b"whatever another user put here")
    package.chmod(0o646)
    assert f"package {package} is writable by others (mode 0646)" in _refused(package)


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user takes root")
def test_another_users_cache_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "compiled"
    folder.mkdir(mode=0o700)
    os.chown(folder, 4321, -1)
    assert "belongs to user id 4321, not to you" in _refused(folder / "encoder-256-abc.pt2")


def test_a_package_is_keyed_by_the_instructions_it_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    """A package built on an AMX machine holds code another CPU cannot run, and one built for an
    AVX2-bound run (``ATEN_CPU_CAPABILITY=avx2``) is slower where AVX-512 is there: neither may be
    taken for the other from a shared cache."""
    from pipeline.model import accelerate, precision

    module = nn.Linear(4, 4)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    keys = {}
    for kind, flags in {"amx": {"avx2", "avx512f", "amx_bf16"}, "avx2": {"avx2"}}.items():
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: frozenset(flags))
        keys[kind] = accelerate.package_key(module, "encoder", 1024)
        assert accelerate.target_isa() == kind
    assert keys["amx"] != keys["avx2"]
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert accelerate.target_isa() == "avx2-avx2"
    assert accelerate.package_key(module, "encoder", 1024) != keys["avx2"]
