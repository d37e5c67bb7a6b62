"""``samstream segment``: one image, one object, one PNG mask."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli.options import model_config
from pipeline.errors import PromptError
from pipeline.masks.imageio import read_image, read_mask, write_mask_png
from pipeline.masks.mask_prompt import MaskPrompt
from pipeline.prompts import parse_box, parse_point, single_prompt


def run(args: argparse.Namespace) -> int:
    points = [parse_point(p) for p in args.point]
    negatives = [parse_point(p) for p in args.neg]
    box = parse_box(args.box) if args.box else None
    mask = MaskPrompt.from_array(read_mask(args.mask)) if args.mask else None
    if not points and box is None and mask is None:
        raise PromptError("give at least one --point X,Y, a --box X0,Y0,X1,Y1 or a --mask FILE.png")
    prompt = single_prompt(points, negatives, box, mask)
    config = model_config(args, single_image=True)  # validate every option before the slow work
    image = read_image(args.image)
    height, width = image.shape[:2]
    prompt.check_inside(width, height)
    out = Path(args.out) if args.out else Path(args.image).with_suffix(".mask.png")

    from pipeline.model import DecodeRequest, MobileSam

    model = MobileSam.from_config(config)
    if model.notice:
        print(f"samstream: WARNING: {model.notice}", file=sys.stderr)
    embedding = model.encode([image])[0]
    result = model.decode(embedding, [DecodeRequest.of(prompt, embedding, model.low_res_size)])
    write_mask_png(result.masks[0], out)
    area = int(result.masks[0].sum())
    note = f" [{model.notice}]" if model.notice else ""
    print(f"wrote {out} ({width}x{height}, {area} mask pixels, predicted IoU {result.scores[0]:.3f}){note}")
    return 0
