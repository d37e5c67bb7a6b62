"""Making MobileSAM fast: memory layout, compilation, chunking, half precision — chosen per device.

Measured with ``samstream bench`` (the numbers live in its output, not here):

* Encoder (78 GFLOP per 1024² frame). The plain eager encoder spends much of its time outside its
  matrix products: exact GELU, unfused BatchNorm, layout copies. ``torch.compile`` with freezing
  folds the BatchNorms into the convolutions, pre-packs the weights for oneDNN and fuses the
  element-wise work; channels-last keeps the convolutions in oneDNN's native layout. On CUDA the
  encoder runs under float16 autocast.
* Mask decoder. Batching K prompts naively is *slower* per prompt than K single calls on a CPU:
  the decoder copies the 64×64×256 image embedding once per prompt and every intermediate grows
  K-fold out of cache. Compiled (dynamic batch) and fed in small chunks, it stays in cache; on a
  GPU the whole batch goes at once.

Compiled artefacts are cached on disk (Inductor's caches under the samstream cache folder), so a
restarted worker is warm in seconds rather than compiling again.
"""

from __future__ import annotations

import copy
import os
import stat
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import UnsafeCacheError
from pipeline.model.weights import default_cache_dir

# Rows of the 256×256 feature map one tile of the convolutional stage covers (measured best of 4-64).
TILE_ROWS = 8
# Part of a compiled package's cache key: bump whenever prepare_encoder's graph changes.
PACKAGE_FORMAT = 2


def compile_cache_dir(cache_dir: Path | None) -> Path:
    return (cache_dir or default_cache_dir()) / "inductor"


def use_compile_cache(cache_dir: Path | None) -> None:
    """Point Inductor's on-disk caches at the samstream cache (unless the user chose a folder)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache_dir(cache_dir)))


class TiledMBConv(nn.Module):
    """An MBConv block (1×1 expand, GELU, 3×3 depth-wise, GELU, 1×1 project, residual, GELU)
    computed in horizontal strips of ``rows`` rows.

    At the encoder's first stage the expanded activations (256 channels on a 256×256 map) are
    64 MB per tensor: computed whole, every step streams them through memory. A strip's
    intermediates (plus one halo row above and below for the 3×3 convolution) stay in cache.
    The result is the block's own, to float rounding.
    """

    def __init__(self, block: nn.Module, rows: int = TILE_ROWS) -> None:
        super().__init__()
        self.block = block
        self.rows = rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b: Any = self.block
        dw: Any = b.conv2
        height = x.shape[2]
        strips = []
        for r0 in range(0, height, self.rows):
            r1 = min(height, r0 + self.rows)
            h = b.conv1(x[:, :, max(0, r0 - 1) : min(height, r1 + 1)])
            # The zero padding of the depth-wise convolution, where the strip meets the map's edge.
            h = F.pad(h, (0, 0, 1 if r0 == 0 else 0, 1 if r1 == height else 0))
            h = dw.act(dw.bn(F.conv2d(h, dw.c.weight, dw.c.bias, 1, (0, 1), 1, dw.c.groups)))
            strips.append(b.act(x[:, :, r0:r1] + b.conv3(h)))
        return torch.cat(strips, dim=2)


def tile_conv_stage(encoder: nn.Module, rows: int = TILE_ROWS) -> nn.Module:
    """A copy of the TinyViT encoder whose first (convolutional) stage runs in strips."""
    tiled: Any = copy.deepcopy(encoder)
    blocks = tiled.layers[0].blocks
    for i, block in enumerate(blocks):
        blocks[i] = TiledMBConv(block, rows)
    return tiled


def fold_batchnorm(encoder: nn.Module) -> nn.Module:
    """Fold every Conv+BatchNorm pair (eval statistics) into the convolution, in place."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in encoder.modules():
        conv, bn = getattr(module, "c", None), getattr(module, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module.c = fuse_conv_bn_eval(conv, bn)
            module.bn = nn.Identity()
    return encoder


def prepare_encoder(encoder: nn.Module, tile: bool) -> nn.Module:
    """A copy of the encoder ready to compile: tiled first stage, BatchNorm folded, channels-last."""
    prepared = tile_conv_stage(encoder) if tile else copy.deepcopy(encoder)
    fold_batchnorm(prepared)
    return prepared.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _artifact_key(encoder: nn.Module, image_size: int, batch: int) -> str:
    """Identifies a compiled encoder: versions, shapes and a digest of the weights it embeds."""
    import hashlib

    import kornia

    from pipeline import __version__

    h = hashlib.sha256()
    h.update(
        f"{__version__}|{torch.__version__}|{kornia.__version__}|{image_size}|{batch}|{TILE_ROWS}".encode()
    )
    for name, value in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def check_private(path: Path, what: str) -> None:
    """Raise :class:`UnsafeCacheError` unless ``path`` is this user's and nobody else may write it.

    A compiled package is machine code that this process runs: a package (or a folder) that another
    user can write is one they can swap for theirs.
    """
    st = path.stat()
    problem = None
    if st.st_uid != os.getuid():
        problem = f"belongs to user id {st.st_uid}, not to you ({os.getuid()})"
    elif writers := [
        who for bit, who in ((stat.S_IWGRP, "its group"), (stat.S_IWOTH, "others")) if st.st_mode & bit
    ]:
        problem = f"is writable by {' and '.join(writers)} (mode {stat.S_IMODE(st.st_mode):04o})"
    if problem:
        raise UnsafeCacheError(
            f"not loading compiled encoders: the {what} {path} {problem}, so another user could put "
            f"code there that samstream would run. Make it yours and private (chown, chmod go-w), "
            "point SAMSTREAM_CACHE_DIR at a private folder, or run with --compile eager"
        )


def load_or_build_package(prepared: nn.Module, example: torch.Tensor, path: Path) -> Any:
    """The AOTInductor package at ``path``, exported and compiled (frozen weights) if not there yet.

    Its folder is made mode 0700 when created here; a folder or package that is not the user's
    own, or that group or others may write, is refused (:func:`check_private`).

    Raises:
        UnsafeCacheError: the folder or the package is not private to this user.
    """
    import logging
    import tempfile

    log = logging.getLogger(__name__)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(path.parent, "cache folder")
    if not path.is_file():
        log.warning("compiling the image encoder for this machine (once; cached at %s)", path)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part.pt2", dir=path.parent)
        os.close(fd)
        try:
            with torch.inference_mode():
                exported = torch.export.export(prepared, (example,))
                torch._inductor.aoti_compile_and_package(
                    exported, package_path=tmp, inductor_configs={"freezing": True}
                )
            os.replace(tmp, path)  # atomic: a concurrent worker sees the whole file or none
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    check_private(path, "package")
    return _load_package(path)


def _load_package(path: Path) -> Any:
    """A tensor → tensor AOTInductor package as a callable, loaded in milliseconds.

    ``torch._inductor.aoti_load_package`` imports Inductor and Dynamo (1.2 s) and compiles a test
    program per CPU ISA (1.5 s) only to warn when the package was built for another CPU: 3 s at
    every worker start. The package's own loader, called directly, does neither (should that
    private entry point change in a later torch, the public loader is used).
    """
    try:
        loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
    except (AttributeError, TypeError):
        return torch._inductor.aoti_load_package(str(path))

    def run(x: torch.Tensor) -> torch.Tensor:
        (out,) = loader.boxed_run([x])
        return out

    return run


class FastEncoder(nn.Module):
    """The TinyViT encoder, prepared (:func:`prepare_encoder`) and compiled.

    On a CPU: an AOTInductor package with frozen weights (BatchNorm folded, weights pre-packed for
    oneDNN), built once per machine, weights and image size and kept under the samstream cache: a
    restarted worker loads it in milliseconds. It runs one frame per call (measured fastest on a
    CPU). On CUDA: ``torch.compile`` (Inductor's own disk caches make restarts fast).

    Args:
        encoder: kornia's TinyViT image encoder, in eval mode.
        device: where it runs.
        image_size: the encoder's input side.
        cache_dir: the samstream cache folder (default ``~/.cache/samstream``).
    """

    def __init__(
        self, encoder: nn.Module, device: torch.device, image_size: int, cache_dir: Path | None
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.device = device
        self.image_size = image_size
        self.cache_dir = cache_dir
        self._fn: Any = None  # prepared and compiled on first use: a decoder-only worker never pays

    def _build(self, example: torch.Tensor) -> Any:
        prepared = prepare_encoder(self.encoder, tile=self.device.type == "cpu")
        if self.device.type != "cpu":
            return torch.compile(prepared, dynamic=False, mode="max-autotune-no-cudagraphs")
        key = _artifact_key(self.encoder, self.image_size, 1)
        path = (self.cache_dir or default_cache_dir()) / "compiled" / f"encoder-{self.image_size}-{key}.pt2"
        package = load_or_build_package(prepared, example[:1], path)
        return lambda x: torch.cat([package(x[i : i + 1]) for i in range(x.shape[0])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        if self._fn is None:
            self._fn = self._build(x)
        return self._fn(x)


class FastMaskDecoder(nn.Module):
    """SAM's mask decoder compiled for any number of prompts, run in chunks of ``chunk`` prompts.

    Args:
        decoder: kornia's ``MaskDecoder``.
        chunk: prompts per call (None: all at once). Each prompt's result does not depend on the
            others, so chunking changes nothing but speed.
    """

    def __init__(self, decoder: nn.Module, chunk: int | None) -> None:
        super().__init__()
        self.decoder = decoder
        self.chunk = chunk
        self._fn: Any = None  # compiled on first use: an encoder-only worker never pays

    def _compiled(self) -> Any:
        if self._fn is None:
            self._fn = torch.compile(self.decoder, dynamic=True)
        return self._fn

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k = sparse_prompt_embeddings.shape[0]
        step = self.chunk or k
        fn = self._compiled()
        outs = [
            fn(
                image_embeddings,
                image_pe,
                sparse_prompt_embeddings[i : i + step],
                dense_prompt_embeddings[i : i + step],
                multimask_output,
            )
            for i in range(0, k, step)
        ]
        if len(outs) == 1:
            return outs[0]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
