"""``samstream eval DATASET``: tracking quality on the DAVIS 2017 semi-supervised layout.

Every object of every sequence is tracked from its first-frame mask by the same tracker a job
uses, in this process (no Ray, no Redis), and scored as DAVIS scores it: J (region IoU), F
(boundary F-measure) and J&F per object, per sequence and overall, as a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.cli.options import model_config, tracking_overrides
from pipeline.errors import InvalidInputError

RANDOM_WARNING = (
    "samstream: WARNING: random weights (--weights random): these masks, and so these J&F numbers, "
    "say nothing about MobileSAM; give --checkpoint or the released weights"
)


def run(args: argparse.Namespace) -> int:
    from pipeline.evaluation.davis import evaluate, load_dataset
    from pipeline.tracking import TrackingConfig

    only = [s.strip() for s in args.sequences.split(",") if s.strip()] if args.sequences else []
    sequences = load_dataset(Path(args.dataset), args.split, args.resolution, only)
    config = TrackingConfig(**tracking_overrides(args))
    segmenter, model = _segmenter(args)
    notice = getattr(segmenter, "notice", None)
    if notice and getattr(segmenter, "random_weights", False):
        print(RANDOM_WARNING, file=sys.stderr)
    elif notice:
        print(f"samstream: NOTE: {notice}", file=sys.stderr)
    total = sum(len(s.frames) for s in sequences)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="frame", desc="eval", file=sys.stderr)
    try:
        scores, overall = evaluate(
            sequences, segmenter, config, Path(args.out) if args.out else None, bar.update if bar else None
        )
    finally:
        if bar is not None:
            bar.close()
    report = {
        "dataset": str(args.dataset),
        "split": args.split,
        "resolution": args.resolution,
        "model": model,
        "notice": notice,
        "global": {
            "J&F": overall.jf * 100,
            "J": overall.j * 100,
            "F": overall.f * 100,
            "objects": overall.objects,
        },
        "sequences": [
            {
                "name": s.name,
                "objects": {
                    str(o): {"J&F": (s.j[o] + s.f[o]) * 50, "J": s.j[o] * 100, "F": s.f[o] * 100} for o in s.j
                },
            }
            for s in scores
        ],
    }
    _table(report)
    text = json.dumps(report, indent=None if not args.json else 2)
    if args.json:
        Path(args.json).write_text(text + "\n")
        print(f"wrote {args.json}")
    else:
        print(text)
    if args.out:
        print(f"wrote the masks as DAVIS palette PNGs under {args.out}")
    return 0


def _segmenter(args: argparse.Namespace) -> tuple[Any, str]:
    """The segmenter to track with, and its name for the report."""
    if args.reference:
        if args.checkpoint or args.weights != "official":
            raise InvalidInputError("--reference runs no weights: give it without --checkpoint or --weights")
        from pipeline.evaluation.reference import ReferenceSegmenter

        return ReferenceSegmenter(args.image_size), "reference segmenter"
    from pipeline.model import MobileSam

    config = model_config(args)
    model = MobileSam.from_config(config)
    name = (
        "MobileSAM, random weights"
        if model.notice
        else f"MobileSAM ({config.checkpoint or 'released weights'})"
    )
    return model, name


def _table(report: dict[str, Any]) -> None:
    """The per-object rows and the global row, in percent."""
    rows = [(s["name"], o, v) for s in report["sequences"] for o, v in s["objects"].items()]
    width = max([len("Global"), *(len(r[0]) for r in rows)])
    print(f"{'sequence':<{width}}  {'obj':>3}  {'J&F':>5}  {'J':>5}  {'F':>5}")
    g = report["global"]
    print(f"{'Global':<{width}}  {'':>3}  {g['J&F']:5.1f}  {g['J']:5.1f}  {g['F']:5.1f}")
    for name, obj, v in rows:
        print(f"{name:<{width}}  {obj:>3}  {v['J&F']:5.1f}  {v['J']:5.1f}  {v['F']:5.1f}")
    if report["notice"]:
        print(f"({report['notice']})")
