"""``samstream bench``: every speed claim as a ratio against a baseline measured in the same run."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.errors import InvalidInputError

SUITES = ("encoder", "decoder", "pipeline", "machinery", "tracking", "density", "capacity")


def run(args: argparse.Namespace) -> int:
    suites = SUITES if args.suite == "all" else (args.suite,)
    if args.runs < 1:
        raise InvalidInputError(f"--runs must be >= 1, got {args.runs}")
    if args.detector is not None:
        from pipeline.model.detector import open_detector

        open_detector(args.detector)  # a bad file is refused before any suite runs
    capacity_size = _capacity_size(args.capacity_image_size)  # refused before any suite runs
    if args.capacity_encoder_cpus < 1:
        raise InvalidInputError(f"--capacity-encoder-cpus must be >= 1, got {args.capacity_encoder_cpus}")
    if args.capacity_admission is not None and not args.capacity_admission > 0:
        raise InvalidInputError(f"--capacity-admission must be > 0 fps, got {args.capacity_admission:g}")
    import torch

    from pipeline.bench.model import run_decoder, run_detection, run_discovery, run_encoder
    from pipeline.bench.report import Result, print_table
    from pipeline.bench.system import describe_machine, run_machinery, run_pipeline

    if args.device == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("--device cuda was asked for, but torch sees no CUDA device")
    from pipeline.config import Precision

    device = torch.device(args.device)
    precision = Precision(args.precision)
    print(json.dumps({"machine": describe_machine()}), flush=True)
    results: list[Result] = []
    for suite in suites:
        print(f"bench: {suite} …", file=sys.stderr, flush=True)
        if suite == "encoder":
            new = run_encoder(device, args.image_size, args.runs, args.batch, precision)
        elif suite == "decoder":
            new = run_decoder(device, args.image_size, args.runs, precision=precision)
            new += run_discovery(device, args.image_size, args.runs, precision=precision)
            new += run_detection(device, args.image_size, args.runs, args.detector, precision=precision)
        elif suite == "pipeline":
            new = run_pipeline(
                args.frames, args.image_size, ["--weights", "random"], args.device, args.precision
            )
        elif suite == "machinery":
            new = run_machinery(args.machinery_frames, args.image_size)
        elif suite == "tracking":
            from pipeline.bench.tracking import run_tracking

            new = run_tracking(args.image_size, args.runs, device)
        elif suite == "capacity":
            from pipeline.bench.capacity import run_capacity

            new = run_capacity(
                _counts(args.capacity_streams, "--capacity-streams"),
                args.capacity_fps,
                args.capacity_seconds,
                args.capacity_warmup,
                capacity_size,
                args.capacity_target_fps,
                args.capacity_admission,
                args.capacity_encoder_cpus,
            )
        else:
            from pipeline.bench.density import run_density

            new = run_density(
                _counts(args.streams, "--streams"),
                args.fps,
                args.seconds,
                args.warmup,
                args.density_image_size,
                args.overload_from,
            )
        for r in new:
            print(r.to_json(), flush=True)
        results += new
    print()
    print_table(results)
    return 0


def _counts(text: str, option: str) -> list[int]:
    try:
        counts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InvalidInputError(f"{option} must be stream counts like 1,2,4, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise InvalidInputError(f"{option} must be stream counts >= 1, got {text!r}")
    return sorted(set(counts))


def _capacity_size(text: str) -> int | str:
    """``--capacity-image-size``: a size, or ``auto``."""
    if text == "auto":
        return text
    from pipeline.config import IMAGE_SIZE_RULE, is_image_size

    size = int(text) if text.isdigit() else None
    if not is_image_size(size):
        raise InvalidInputError(f"--capacity-image-size must be auto or {IMAGE_SIZE_RULE}, got {text!r}")
    assert size is not None  # is_image_size said so
    return size
