"""Making MobileSAM fast without making anyone wait: memory layout, precision, compiled packages.

Measured with ``samstream bench`` (the numbers live in its output, not here):

* Encoder (78 GFLOP per 1024² frame). The plain eager encoder spends much of its time outside its
  matrix products: exact GELU, unfused BatchNorm, layout copies. Prepared — BatchNorm folded into
  the convolutions, channels-last, the first stage in strips that stay in cache — it is faster at
  once, eagerly; compiled ahead of time (AOTInductor, weights frozen and pre-packed for oneDNN,
  element-wise work fused) faster again. In bfloat16 on a CPU with bfloat16 matrix units it is
  several times faster than either in float32.
* Mask decoder. Batching K prompts naively is *slower* per prompt than K single calls on a CPU:
  the decoder copies the 64×64×256 image embedding once per prompt and every intermediate grows
  K-fold out of cache. One prompt per call stays in cache; compiled, its element-wise work is
  fused. On a GPU the whole batch goes at once.

Nothing waits for a compiler unless asked to (``Compile.COMPILED``): a :class:`Part` runs its
prepared module eagerly, loads the compiled package when the cache has one, and otherwise lets
:class:`~pipeline.model.background.BackgroundBuild` build it in another process when that pays
off, switching to it once it is there. Packages live under the samstream cache folder, keyed by
versions, shapes, dtype and the weights they embed.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import UnsafeCacheError
from pipeline.model.weights import default_cache_dir

log = logging.getLogger(__name__)

# Rows of the 256×256 feature map one tile of the convolutional stage covers (measured best of 4-64).
TILE_ROWS = 8
# Part of a compiled package's cache key: bump whenever prepare_encoder's graph changes.
PACKAGE_FORMAT = 3
# The same for the mask decoder's graph (prepare_decoder, DecoderCall), apart: encoders stay valid.
DECODER_FORMAT = 5
# Inductor's options for every package: weights frozen into it (constants folded, weights packed).
INDUCTOR = {"freezing": True}
# What a build tries, in turn, until a package agrees with its eager module (:func:`build_package`).
# Inductor's C++ code, as this machine's compiler builds it, can be wrong: with torch 2.13 and GCC
# 12 at -O2 and above, a bf16 kernel that transposes the same 32×32 tile twice (the mask decoder's
# key + positional encoding) gave garbage on AVX-512, and NaN masks; which kernels Inductor makes
# depends on the options, the shapes and the weights.
ATTEMPTS: tuple[Mapping[str, Any], ...] = (INDUCTOR, {**INDUCTOR, "freezing": False})
# How far a package's outputs may be from its eager module's, relative to their norm, on a probe.
AGREEMENT = {torch.float32: 1e-3, torch.bfloat16: 0.05, torch.float16: 0.05}


class PackageMismatch(RuntimeError):
    """A compiled package's outputs disagree with its eager module's: it is not used."""


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


def prepare_encoder(encoder: nn.Module, tile: bool, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A copy of the encoder, fast eagerly and ready to compile: tiled first stage, BatchNorm
    folded, channels-last, weights in ``dtype``."""
    prepared = tile_conv_stage(encoder) if tile else copy.deepcopy(encoder)
    fold_batchnorm(prepared)
    return prepared.to(dtype=dtype, memory_format=torch.channels_last)  # type: ignore[call-overload]


def target_isa() -> str:
    """The vector instructions a package compiled here is built for: the CPU's kind, and torch's
    ``ATEN_CPU_CAPABILITY`` where it is set (inductor generates its code for it). A package built on
    an AMX machine holds AVX-512 and AMX code, which another CPU cannot run (a cache shared between
    machines, an image built on another) and which an AVX2-bound run must not take."""
    import os

    from pipeline.model.precision import cpu_kind

    capability = os.environ.get("ATEN_CPU_CAPABILITY", "")
    return cpu_kind() + (f"-{capability}" if capability else "")


def package_key(module: nn.Module, *parts: object) -> str:
    """Identifies a compiled package: versions, the instructions it targets (:func:`target_isa`),
    ``parts`` (shapes, dtype) and a digest of the weights it embeds."""
    import hashlib

    import kornia

    from pipeline import __version__

    h = hashlib.sha256()
    h.update(
        "|".join(
            map(
                str,
                (__version__, torch.__version__, kornia.__version__, PACKAGE_FORMAT, target_isa(), *parts),
            )
        ).encode()
    )
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def packages_dir(cache_dir: Path | None) -> Path:
    return (cache_dir or default_cache_dir()) / "compiled"


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


def build_package(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    dynamic_shapes: Any = None,
    inductor: Mapping[str, Any] | None = None,
) -> Path:
    """Export ``module`` at ``example`` and compile it (``inductor``'s options, default
    :data:`INDUCTOR`: frozen weights) into the package ``path``.

    Written to a temporary file and renamed into place: a concurrent process sees the whole package
    or none. Its folder is made mode 0700 when created here and must be private to this user.
    The package is run beside ``module`` on a random probe shaped as ``example`` first, and kept
    only if it agrees (:func:`disagreement`).

    Raises:
        UnsafeCacheError: the folder is not private to this user.
        PackageMismatch: the package disagrees with ``module`` (nothing is left at ``path``).
    """
    import tempfile

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(path.parent, "cache folder")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part.pt2", dir=path.parent)
    os.close(fd)
    try:
        if callable(dynamic_shapes):
            dynamic_shapes = dynamic_shapes()
        with torch.inference_mode():
            exported = torch.export.export(module, example, dynamic_shapes=dynamic_shapes)
            torch._inductor.aoti_compile_and_package(
                exported, package_path=tmp, inductor_configs=dict(INDUCTOR if inductor is None else inductor)
            )
        problem = disagreement(module, _load_package(Path(tmp)), example)
        if problem is not None:
            raise PackageMismatch(problem)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def probe_like(example: tuple[torch.Tensor, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Seeded random inputs with the shapes, dtypes and strides of ``example``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for x in example:
        probe = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype)
        probe.copy_(torch.randn(x.shape, generator=g))
        out.append(probe)
    return tuple(out)


def disagreement(
    module: nn.Module, package: Callable[..., Any], example: tuple[torch.Tensor, ...]
) -> str | None:
    """How ``package`` disagrees with ``module`` on a random probe shaped as ``example`` (None: it
    agrees): an output not finite where the module's is, or further from it than
    :data:`AGREEMENT` allows for its dtype."""
    probe = probe_like(example)
    with torch.inference_mode():
        want = module(*probe)
        got = package(*probe)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    if len(got) != len(want):
        return f"{len(got)} outputs where the module gives {len(want)}"
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        w, g = w.float(), g.float()
        if g.shape != w.shape:
            return f"output {i} is {tuple(g.shape)}, not {tuple(w.shape)}"
        if not torch.isfinite(g).all() and torch.isfinite(w).all():
            return f"output {i} has {int((~torch.isfinite(g)).sum())} values that are not finite"
        err = float((g - w).norm() / w.norm().clamp_min(1e-12))
        if not err <= AGREEMENT.get(example[0].dtype, 0.05):
            return f"output {i} is {err:.3g} from the module's (relative)"
    return None


def load_package(path: Path) -> Any:
    """The package at ``path`` as a callable (tensors → list of tensors), after checking that it
    and its folder are private to this user.

    Raises:
        UnsafeCacheError: they are not.
    """
    check_private(path.parent, "cache folder")
    check_private(path, "package")
    return _load_package(path)


def _load_package(path: Path) -> Any:
    """An AOTInductor package as a callable (tensors → flat list of tensors), loaded in milliseconds.

    ``torch._inductor.aoti_load_package`` imports Inductor and Dynamo (1.2 s) and compiles a test
    program per CPU ISA (1.5 s) only to warn when the package was built for another CPU: 3 s at
    every worker start. The package's own loader, called directly, does neither (should that
    private entry point change in a later torch, the public loader is used).
    """
    try:
        loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
    except (AttributeError, TypeError):
        public = torch._inductor.aoti_load_package(str(path))

        def run_public(*xs: torch.Tensor) -> list[torch.Tensor]:
            out = public(*xs)
            return list(out) if isinstance(out, (tuple, list)) else [out]

        return run_public

    def run(*xs: torch.Tensor) -> list[torch.Tensor]:
        return list(loader.boxed_run(list(xs)))

    return run


class ExplicitAttention(nn.Module):
    """SAM's decoder attention (kornia's ``Attention``, same weights), its softmax in float32.

    Kornia's form is matched by Inductor to its flash-attention kernel, which is slow for SAM's
    shapes (16 channels a head; 4096 queries on a handful of keys, or the reverse). Written with
    the scores in float32 it stays two matrix products around a fused softmax: faster on a CPU in
    every precision, and in bfloat16 closer to float32.
    """

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        a: Any = attention
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = a.q_proj, a.k_proj, a.v_proj, a.out_proj
        self.num_heads: int = a.num_heads

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_proj(q), self.k_proj(k), self.v_proj(v)
        b, n, c = q.shape
        heads = self.num_heads
        q = q.reshape(b, n, heads, c // heads).transpose(1, 2)
        k = k.reshape(b, k.shape[1], heads, c // heads).transpose(1, 2)
        v = v.reshape(b, v.shape[1], heads, c // heads).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * (c // heads) ** -0.5
        out = torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


def prepare_decoder(mask_decoder: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A copy of SAM's mask decoder, weights in ``dtype``, its attention :class:`ExplicitAttention`."""
    from kornia.models.sam.architecture.transformer import Attention

    prepared = copy.deepcopy(mask_decoder).to(dtype)
    for name, module in list(prepared.named_modules()):
        if isinstance(module, Attention):
            parent_name, _, child = name.rpartition(".")
            setattr(prepared.get_submodule(parent_name), child, ExplicitAttention(module))
    return prepared.eval()


class DecoderCall(nn.Module):
    """The mask decoder as one traceable call, the prompt encoder's mask path folded in: all four
    masks and their predicted IoU.

    ``mask`` is a prompt's mask input (low-resolution logits, 1×1×4h×4w, float32) and ``has_mask``
    (1×1×1×1) is 1 for it; with ``has_mask`` 0 (and any finite ``mask``) the dense embedding is the
    prompt encoder's "no mask" one. The two are blended by exactly 1 and 0, so either equals what
    the prompt encoder gives. The mask path runs in float32, as the prompt encoder does; its
    result goes to the decoder in the decoder's precision. SAM's ``multimask_output`` only picks
    among the masks (masks 1-3, or mask 0): picked afterwards, one package serves both.
    """

    def __init__(self, decoder: nn.Module, prompt_encoder: nn.Module) -> None:
        super().__init__()
        p: Any = prompt_encoder
        self.decoder = decoder
        self.downscale = copy.deepcopy(p.mask_downscaling).float().eval()
        self.no_mask = copy.deepcopy(p.no_mask_embed).float()

    def forward(
        self,
        image: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        mask: torch.Tensor,
        has_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        none = self.no_mask.weight.reshape(1, -1, 1, 1)
        dense = has_mask * self.downscale(mask) + (1 - has_mask) * none
        decoder: Any = self.decoder
        masks, iou = decoder.predict_masks(image, image_pe, sparse, dense.to(image.dtype))
        return masks, iou


def pick_masks(masks: torch.Tensor, iou: torch.Tensor, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """What SAM's decoder returns for ``multimask_output``: masks 1-3, or mask 0 alone."""
    picked = slice(1, None) if multimask else slice(0, 1)
    return masks[:, picked], iou[:, picked]


@dataclass(frozen=True)
class Recipe:
    """One part of the model as it runs on a CPU: the module, and how its package is made.

    Attributes:
        kind: ``encoder`` or ``mask_decoder``.
        prepare: makes the prepared module (run eagerly until its package is there; what is
            compiled). Called once, at the first use of :attr:`module`: a part whose package is
            cached never prepares it (a copy of its weights, a fifth of a second of a worker's start).
        example: inputs to export it at.
        dynamic_shapes: which input dimensions the package takes at any size (torch.export's form),
            or a function that gives them (torch.export takes a while to import: only a build needs it).
        path: where its package lives (the name holds image size, dtype and a key of the weights).
        attempts: Inductor's options for its build, tried in turn until a package agrees with the
            module (:data:`ATTEMPTS`).
    """

    kind: str
    prepare: Callable[[], nn.Module]
    example: tuple[torch.Tensor, ...]
    dynamic_shapes: Any
    path: Path
    attempts: tuple[Mapping[str, Any], ...] = ATTEMPTS

    @functools.cached_property
    def module(self) -> nn.Module:
        """The prepared module, made at first use."""
        return self.prepare()

    @property
    def rejected(self) -> Path:
        """Written when no attempt gave a package that agrees: this machine runs the part eagerly."""
        return self.path.with_name(self.path.name + ".rejected")

    def build(self) -> Path:
        """Compile the prepared module into its package (:func:`build_package`), with each of
        :attr:`attempts` in turn until one agrees with the module.

        Raises:
            PackageMismatch: none did (said in :attr:`rejected`, so that no later run tries again).
        """
        problems = []
        for options in self.attempts:
            try:
                return build_package(self.module, self.example, self.path, self.dynamic_shapes, options)
            except PackageMismatch as exc:
                problems.append(f"{dict(options)}: {exc}")
                log.warning(
                    "the compiled %s with %s disagrees with its eager module: %s",
                    self.kind,
                    dict(options),
                    exc,
                )
        reason = "; ".join(problems)
        self.rejected.write_text(reason + "\n")
        raise PackageMismatch(
            f"no compiled {self.kind.replace('_', ' ')} agrees with its eager module ({reason})"
        )


def encoder_recipe(encoder: nn.Module, image_size: int, dtype: torch.dtype, cache_dir: Path | None) -> Recipe:
    """The TinyViT encoder prepared (:func:`prepare_encoder`), one frame per call."""
    example = torch.zeros(1, 3, image_size, image_size, dtype=dtype).contiguous(
        memory_format=torch.channels_last
    )
    key = package_key(encoder, "encoder", image_size, 1, TILE_ROWS, dtype)
    path = packages_dir(cache_dir) / f"encoder-{image_size}-{_dtype_name(dtype)}-{key}.pt2"
    return Recipe("encoder", lambda: prepare_encoder(encoder, tile=True, dtype=dtype), (example,), None, path)


def decoder_recipe(
    mask_decoder: nn.Module,
    prompt_encoder: nn.Module,
    image_size: int,
    dtype: torch.dtype,
    cache_dir: Path | None,
) -> Recipe:
    """SAM's mask decoder with the prompt encoder's mask path (:class:`DecoderCall`), one prompt per
    call, any number of prompt tokens."""
    side = image_size // 16
    decoder: Any = mask_decoder
    channels: int = decoder.transformer_dim
    # The embedding and its positional encoding come channels-last (as the encoder gives them): the
    # transformer's tokens are then plain rows, read without a transpose.
    grid = torch.zeros(1, channels, side, side, dtype=dtype).contiguous(memory_format=torch.channels_last)
    mask = torch.zeros(1, 1, 4 * side, 4 * side)
    example = (grid, grid.clone(), torch.zeros(1, 2, channels, dtype=dtype), mask, torch.ones(1, 1, 1, 1))

    def dynamic() -> tuple[dict[int, Any], ...]:
        return ({}, {}, {1: torch.export.Dim("tokens", min=1, max=64)}, {}, {})

    both = nn.ModuleDict({"mask_decoder": mask_decoder, "prompt_encoder": prompt_encoder})
    key = package_key(both, "mask_decoder", DECODER_FORMAT, image_size, dtype)
    path = packages_dir(cache_dir) / f"mask-decoder-{image_size}-{_dtype_name(dtype)}-{key}.pt2"

    def prepare() -> nn.Module:
        return DecoderCall(prepare_decoder(mask_decoder, dtype), prompt_encoder).eval()

    return Recipe("mask_decoder", prepare, example, dynamic, path)


def _dtype_name(dtype: torch.dtype) -> str:
    from pipeline.model.precision import name

    return name(dtype)
