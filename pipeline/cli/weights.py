"""``samstream weights fetch|path``: the cached release of MobileSAM's weights."""

from __future__ import annotations

import argparse

from pipeline.model.weights import CHECKPOINT_NAME, RELEASE_URLS, default_cache_dir, resolve_checkpoint


def run(args: argparse.Namespace) -> int:
    cache = default_cache_dir()
    if args.action == "path":
        print(cache / CHECKPOINT_NAME)
        return 0
    path = resolve_checkpoint(None, cache, urls=args.url or RELEASE_URLS)
    print(f"MobileSAM weights: {path}")
    return 0
