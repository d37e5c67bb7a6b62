"""``samstream warmup``: build the compiled encoder and mask decoder now, so that no run waits for them."""

from __future__ import annotations

import argparse
import sys
import time

from pipeline.cli.options import model_config
from pipeline.errors import InvalidInputError


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from pipeline.config import Compile, Weights

    config = model_config(args)
    if config.weights in (Weights.NULL, Weights.REFERENCE):
        raise InvalidInputError(f"--weights {config.weights.value} has nothing to compile")
    if config.compile is Compile.EAGER:
        raise InvalidInputError("--compile eager compiles nothing; leave --compile out")
    if args.device == "cuda":
        raise InvalidInputError(
            "warmup builds CPU packages; on a GPU torch.compile's own cache is filled by a first run"
        )
    from pipeline.model.build import build
    from pipeline.model.weights import resolve_checkpoint

    if config.weights is Weights.OFFICIAL:
        config = replace(config, checkpoint=resolve_checkpoint(config.checkpoint, config.cache_dir))
    start = time.perf_counter()

    def say(line: str) -> None:
        print(f"samstream: {line} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

    for part, path, took in build(config, say=say):
        how = "already compiled" if took is None else f"compiled in {took:.0f} s"
        print(f"{part.replace('_', ' ')} ({config.image_size}): {how}: {path}")
    return 0
