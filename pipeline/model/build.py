"""Building the compiled packages: ahead of time (``samstream warmup``) or in the background.

``python -m pipeline.model.build --background --part encoder --config JSON --parent PID`` is what
:class:`~pipeline.model.background.BackgroundBuild` starts: it lowers its own CPU priority, holds
the package's lock while it builds, and stops when process PID has ended.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import ModelConfig
from pipeline.model.background import NICE, take_lock
from pipeline.processes import pid_alive

if TYPE_CHECKING:
    from pipeline.model.accelerate import Recipe

PARTS = ("mask_decoder", "encoder")  # the quicker first: it is ready soonest


def recipes(config: ModelConfig, parts: Sequence[str] = PARTS) -> list[Recipe]:
    """The recipes of ``parts`` of the configured model on this machine's CPU."""
    import torch

    from pipeline.model.accelerate import decoder_recipe, encoder_recipe
    from pipeline.model.precision import resolve
    from pipeline.model.segmenter import load_sam

    dtype = resolve(config.precision, torch.device("cpu"))
    sam = load_sam(config).eval()
    out = []
    for part in parts:
        if part == "encoder":
            out.append(encoder_recipe(sam.image_encoder, config.image_size, dtype, config.cache_dir))
        else:
            out.append(
                decoder_recipe(
                    sam.mask_decoder, sam.prompt_encoder, config.image_size, dtype, config.cache_dir
                )
            )
    return out


def build(
    config: ModelConfig, parts: Sequence[str] = PARTS, say: Callable[[str], None] = lambda _: None
) -> list[tuple[str, Path, float | None]]:
    """Build the packages of ``parts`` that the cache lacks: (part, path, seconds; None: was cached).
    A part whose package disagrees with its eager module on this machine is said, and left out: it
    runs eagerly.

    Raises:
        UnsafeCacheError: the cache folder is not private to this user.
    """
    from pipeline.model.accelerate import PackageMismatch, use_compile_cache

    use_compile_cache(config.cache_dir)
    done: list[tuple[str, Path, float | None]] = []
    for recipe in recipes(config, parts):
        name = recipe.kind.replace("_", " ")
        if recipe.path.is_file():
            done.append((recipe.kind, recipe.path, None))
            continue
        if recipe.rejected.is_file():
            say(f"the {name} runs eagerly on this machine: {recipe.rejected.read_text().strip()}")
            continue
        say(f"compiling the {name} for this machine …")
        start = time.perf_counter()
        try:
            recipe.build()
        except PackageMismatch as exc:
            say(f"{exc}: the {name} runs eagerly")
            continue
        done.append((recipe.kind, recipe.path, time.perf_counter() - start))
    return done


def _watch_parent(pid: int) -> None:
    """End this builder when process ``pid`` has ended: nothing outlives the run that asked."""

    def watch() -> None:
        while pid_alive(pid):
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.model.build")
    p.add_argument("--background", action="store_true")
    p.add_argument("--part", choices=PARTS, required=True)
    p.add_argument("--config", required=True, help="the ModelConfig as JSON")
    p.add_argument("--parent", type=int, help="stop when this process has ended")
    args = p.parse_args(argv)
    fields = json.loads(args.config)
    for key in ("cache_dir", "checkpoint"):
        if fields.get(key) is not None:
            fields[key] = Path(fields[key])
    config = ModelConfig(**fields)
    if args.background:
        os.nice(NICE)
    if args.parent:
        _watch_parent(args.parent)
    (recipe,) = recipes(config, [args.part])
    lock = recipe.path.with_name(recipe.path.name + ".lock")
    if recipe.path.is_file() or recipe.rejected.is_file() or not take_lock(lock):
        return 0
    try:
        for part, path, took in build(config, [args.part], say=lambda s: print(s, flush=True)):
            print(f"{part}: {path} ({'cached' if took is None else f'{took:.0f} s'})", flush=True)
    finally:
        lock.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
