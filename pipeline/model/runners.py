"""The encoder and mask decoder as they run: in the chosen precision, compiled when that is ready.

On a CPU each is a :class:`Part` (eager prepared module ⇄ compiled package, see
:mod:`pipeline.model.accelerate`). On a GPU they run under autocast in the chosen half precision,
and ``Compile.COMPILED`` hands them to ``torch.compile`` (Inductor's disk caches make restarts fast).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config import Compile, ModelConfig
from pipeline.model.accelerate import (
    PackageMismatch,
    Recipe,
    decoder_recipe,
    encoder_recipe,
    load_package,
    pick_masks,
    use_compile_cache,
)
from pipeline.model.background import BackgroundBuild, policy
from pipeline.model.precision import name

log = logging.getLogger(__name__)


class Part:
    """One part of the model on a CPU: its package when there is one, else its eager module.

    With ``Compile.COMPILED`` the package is built now when the cache lacks it (the caller waits);
    with ``Compile.AUTO`` a cached package is loaded at once, and without one the eager module
    answers while ``build`` (when given) decides whether to build it in the background; the part
    checks for the package at most once a second and switches to it when it appears.
    """

    def __init__(self, recipe: Recipe, compile: Compile, build: BackgroundBuild | None = None) -> None:
        self.recipe = recipe
        self.build = build if compile is Compile.AUTO else None
        self.package: Any = None
        self.calls = 0
        self.eager_s = 0.0  # mean time of an eager call
        self._checked = 0.0
        if compile is Compile.COMPILED and not recipe.path.is_file() and not recipe.rejected.is_file():
            log.warning("compiling the %s for this machine (once; cached at %s)", recipe.kind, recipe.path)
            try:
                recipe.build()
            except PackageMismatch as exc:
                log.warning("%s: the %s runs eagerly", exc, recipe.kind.replace("_", " "))
        if compile is not Compile.EAGER and recipe.path.is_file():
            self.package = load_package(recipe.path)

    @property
    def compiled(self) -> bool:
        return self.package is not None

    def __call__(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        if self.package is not None:
            return self.package(*xs)
        start = time.perf_counter()
        out = self.recipe.module(*xs)
        self.calls += 1
        self.eager_s += (time.perf_counter() - start - self.eager_s) / self.calls
        if self.build is not None and start - self._checked > 1.0:
            self._checked = start
            if self.recipe.path.is_file():
                self.package = load_package(self.recipe.path)
                self.build = None
                log.info("switched to the compiled %s (%s)", self.recipe.kind, self.recipe.path)
            else:
                self.build.consider(self.calls, self.eager_s)
        return list(out) if isinstance(out, (tuple, list)) else [out]


def _background(
    recipe: Recipe, config: ModelConfig | None, dtype: torch.dtype, expected_calls: int | None
) -> BackgroundBuild | None:
    if config is None:  # built from modules, not a config: no other process can rebuild it
        return None
    return BackgroundBuild(
        recipe.kind, config, name(dtype), recipe.path, policy(recipe.kind, name(dtype), expected_calls)
    )


class _Runner(nn.Module):
    """What both runners share: the module, where it runs and in what precision, and the CPU
    part, made at first use (or :meth:`ready`). With ``Compile.EAGER`` on a CPU the module is
    kornia's own (float32: exactly the official predictor's), in ``dtype``."""

    def __init__(self, module: nn.Module, device: torch.device, dtype: torch.dtype, compile: Compile) -> None:
        super().__init__()
        self.device = device
        self.dtype = dtype
        self.module: Any = module
        if device.type != "cuda" and compile is Compile.EAGER and dtype != torch.float32:
            self.module = _copy_to(module, dtype)
        self.part: Part | None = None
        self._make: Callable[[], Part] | None = None

    def ready(self) -> Part | None:
        """Prepare (or load) the CPU part now rather than at the first call; None where there is none."""
        if self.part is None and self._make is not None:
            self.part, self._make = self._make(), None
        return self.part

    @property
    def compiled(self) -> bool:
        return self.part is not None and self.part.compiled


class EncoderRunner(_Runner):
    """The image encoder: (B, 3, S, S) float32 in, (B, 256, S/16, S/16) float32 out.

    Args:
        encoder: kornia's TinyViT image encoder, in eval mode, on ``device``.
        device: where it runs.
        image_size: the encoder's input side S.
        dtype: the precision it computes in.
        compile: see :class:`~pipeline.config.Compile`.
        cache_dir: the samstream cache (packages live under it).
        config: the model's config, for background builds (None: none).
    """

    def __init__(
        self,
        encoder: nn.Module,
        device: torch.device,
        image_size: int,
        dtype: torch.dtype,
        compile: Compile,
        cache_dir: Path | None = None,
        config: ModelConfig | None = None,
    ) -> None:
        super().__init__(encoder, device, dtype, compile)
        if device.type == "cuda":
            if compile is Compile.COMPILED:
                from pipeline.model.accelerate import prepare_encoder

                use_compile_cache(cache_dir)
                self.module = torch.compile(
                    prepare_encoder(encoder, tile=False), dynamic=False, mode="max-autotune-no-cudagraphs"
                )
        elif compile is not Compile.EAGER:

            def make() -> Part:
                recipe = encoder_recipe(encoder, image_size, dtype, cache_dir)
                workload = None if config is None else config.workload_frames
                return Part(recipe, compile, _background(recipe, config, dtype, workload))

            self._make = make

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            with _autocast(self.dtype):
                return self.module(x).float()
        part = self.ready()
        if part is None:
            return self.module(x.to(self.dtype)).float()
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        # One frame per call: measured fastest on a CPU, and the package's shape.
        out = torch.cat([part(x[i : i + 1])[0] for i in range(x.shape[0])])
        return out.float().contiguous()  # plain NCHW, whatever layout the prepared encoder gives


class MaskDecoderRunner(_Runner):
    """SAM's mask decoder with kornia's call signature, in the chosen precision, float32 out.

    On a CPU one prompt per call (each prompt's result does not depend on the others, so this
    changes nothing but speed); on a GPU the whole batch at once. On a CPU (unless eager) the
    prompt encoder's mask path is part of the call: :meth:`with_masks` takes mask inputs as they
    are (:attr:`takes_masks`).

    Args:
        decoder: kornia's ``MaskDecoder``, on ``device``.
        prompt_encoder: kornia's ``PromptEncoder`` (its mask path is folded into the CPU part).
        device: where it runs.
        image_size: the encoder's input side S.
        dtype: the precision it computes in.
        compile: see :class:`~pipeline.config.Compile`.
        cache_dir: the samstream cache.
        config: the model's config, for background builds (None: none).
        tracks: prompts per frame, if known (with ``config.workload_frames``, the calls to come).
    """

    def __init__(
        self,
        decoder: nn.Module,
        prompt_encoder: nn.Module,
        device: torch.device,
        image_size: int,
        dtype: torch.dtype,
        compile: Compile,
        cache_dir: Path | None = None,
        config: ModelConfig | None = None,
        tracks: int | None = None,
    ) -> None:
        super().__init__(decoder, device, dtype, compile)
        if device.type == "cuda":
            if compile is Compile.COMPILED:
                use_compile_cache(cache_dir)
                self.module = torch.compile(decoder, dynamic=True)
        elif compile is not Compile.EAGER:

            def make() -> Part:
                recipe = decoder_recipe(decoder, prompt_encoder, image_size, dtype, cache_dir)
                frames = None if config is None else config.workload_frames
                calls = None if frames is None or tracks is None else frames * max(1, tracks)
                return Part(recipe, compile, _background(recipe, config, dtype, calls))

            self._make = make

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.device.type == "cuda":
            with _autocast(self.dtype):
                masks, iou = self.module(
                    image_embeddings,
                    image_pe,
                    sparse_prompt_embeddings,
                    dense_prompt_embeddings,
                    multimask_output,
                )
            return masks.float(), iou.float()
        dt = self.dtype
        image, pe = image_embeddings.to(dt), image_pe.to(dt)
        sparse, dense = sparse_prompt_embeddings.to(dt), dense_prompt_embeddings.to(dt)
        part = self.ready()
        outs = []
        for i in range(sparse.shape[0]):
            if part is not None:
                # Any dense embedding (not a mask's): the prepared decoder, eagerly.
                call: Any = part.recipe.module
                masks, iou = call.decoder.predict_masks(image, pe, sparse[i : i + 1], dense[i : i + 1])
                outs.append(pick_masks(masks, iou, multimask_output))
            else:
                outs.append(self.module(image, pe, sparse[i : i + 1], dense[i : i + 1], multimask_output))
        return torch.cat([o[0] for o in outs]).float(), torch.cat([o[1] for o in outs]).float()

    @property
    def takes_masks(self) -> bool:
        """Whether :meth:`with_masks` is this runner's fast path (a CPU part: prepared or compiled)."""
        return self.part is not None or self._make is not None

    def with_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        masks: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder on one frame's (1, C, h, w) embedding for K prompts, each with its mask input
        (K, 1, 4h, 4w) or none (``masks`` None), on the CPU part: (K, M, 4h, 4w) logits, (K, M) IoU."""
        part = self.ready()
        if part is None:
            raise RuntimeError("with_masks needs a CPU part (see takes_masks)")
        dt = self.dtype
        # A package reads its inputs with the strides it was exported at: the embedding and its
        # positional encoding channels-last (see decoder_recipe). The eager module takes them plain
        # (given channels-last, it took 3 to 25 times as long).
        fmt = torch.channels_last if part.compiled else torch.contiguous_format
        image, pe = (
            image_embeddings.to(dt).contiguous(memory_format=fmt),
            image_pe.to(dt).contiguous(memory_format=fmt),
        )
        sparse = sparse_prompt_embeddings.to(dt)
        side = 4 * image.shape[-1]
        no_mask = (torch.zeros(1, 1, side, side), torch.zeros(1, 1, 1, 1))
        one = torch.ones(1, 1, 1, 1)
        outs = []
        for i in range(sparse.shape[0]):
            mask, has = no_mask if masks is None else (masks[i : i + 1].float().contiguous(), one)
            logits, iou = part(image, pe, sparse[i : i + 1].contiguous(), mask, has)
            outs.append(pick_masks(logits, iou, multimask_output))
        return torch.cat([o[0] for o in outs]).float(), torch.cat([o[1] for o in outs]).float()


def _copy_to(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    import copy

    return copy.deepcopy(module).to(dtype)


def _autocast(dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)
