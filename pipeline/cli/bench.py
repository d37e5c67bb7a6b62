"""``samstream bench``: every speed claim as a ratio against a baseline measured in the same run."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.errors import InvalidInputError

SUITES = ("encoder", "decoder", "pipeline", "machinery")


def run(args: argparse.Namespace) -> int:
    suites = SUITES if args.suite == "all" else (args.suite,)
    if args.runs < 1:
        raise InvalidInputError(f"--runs must be >= 1, got {args.runs}")
    import torch

    from pipeline.bench.model import run_decoder, run_encoder
    from pipeline.bench.report import Result, print_table
    from pipeline.bench.system import describe_machine, run_machinery, run_pipeline

    if args.device == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("--device cuda was asked for, but torch sees no CUDA device")
    device = torch.device(args.device)
    print(json.dumps({"machine": describe_machine()}), flush=True)
    results: list[Result] = []
    for suite in suites:
        print(f"bench: {suite} …", file=sys.stderr, flush=True)
        if suite == "encoder":
            new = run_encoder(device, args.image_size, args.runs, args.batch)
        elif suite == "decoder":
            new = run_decoder(device, args.image_size, args.runs)
        elif suite == "pipeline":
            new = run_pipeline(args.frames, args.image_size, ["--weights", "random"], args.device)
        else:
            new = run_machinery(args.machinery_frames, args.image_size)
        for r in new:
            print(r.to_json(), flush=True)
        results += new
    print()
    print_table(results)
    return 0
