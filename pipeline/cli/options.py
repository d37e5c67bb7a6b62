"""Turning parsed command-line options into typed config (the only place the CLI builds it)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.config import ModelConfig


def cache_dir() -> Path | None:
    """``$SAMSTREAM_CACHE_DIR``, where the weights are cached (None: the default)."""
    value = os.environ.get("SAMSTREAM_CACHE_DIR")
    return Path(value) if value else None


def model_config(args: argparse.Namespace, single_image: bool = False) -> ModelConfig:
    compile_mode = args.compile
    if compile_mode == "auto" and single_image:
        # Compiling takes a minute once (then it is cached); it pays off over a video, not one image.
        compile_mode = "eager"
    return ModelConfig(
        compile=compile_mode,
        image_size=args.image_size,
        device=args.device,
        weights=args.weights,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        cache_dir=cache_dir(),
    )
