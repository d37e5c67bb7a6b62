"""Encoder and decoder suites: samstream's model layer against plain eager kornia."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipeline.bench.report import Result, median, rate_result, timed


def sgemm_gflops(device: Any, runs: int = 5, n: int = 2048) -> float:
    """This machine's fp32 matrix-multiply speed (the compute-bound limit of the encoder)."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)

    def mm() -> None:
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()

    return 2 * n**3 / median(timed(mm, runs, warmup=2)) / 1e9


def encoder_flops(encoder: Any, image_size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, image_size, image_size, device=next(encoder.parameters()).device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        encoder(x)
    return float(counter.get_total_flops())


def _models(device: Any, image_size: int) -> tuple[Any, Any]:
    """(plain kornia Sam, samstream MobileSam) with the same random weights."""
    import torch
    from kornia.models.sam import Sam, SamConfig

    from pipeline.model import MobileSam
    from pipeline.model.architecture import build_mobile_sam

    torch.manual_seed(0)
    plain = Sam.from_config(SamConfig("mobile_sam")).eval().to(device) if image_size == 1024 else None
    ours_sam = build_mobile_sam(image_size)
    if plain is None:
        plain = build_mobile_sam(image_size).to(device)
    ours_sam.load_state_dict(plain.state_dict())
    ours = MobileSam(ours_sam, image_size, device, half=device.type == "cuda", compiled=True)
    return plain, ours


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_encoder(device: Any, image_size: int, runs: int, batch: int) -> list[Result]:
    import torch

    plain, ours = _models(device, image_size)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) for _ in range(batch)]
    x = torch.randn(batch, 3, image_size, image_size, device=device)

    def eager() -> None:
        with torch.inference_mode():
            plain.image_encoder(x)
        _sync(device)

    start = time.perf_counter()
    ours.encode(frames[:1])  # compiles (or loads the compiled graph from the disk cache)
    first_call = time.perf_counter() - start

    def fast() -> None:
        ours.encode(frames)
        _sync(device)

    base_s = median(timed(eager, runs)) / batch
    ours_s = median(timed(fast, runs)) / batch
    gflop = encoder_flops(plain.image_encoder, image_size) / 1e9
    peak = sgemm_gflops(device)
    achieved = gflop / ours_s
    return [
        rate_result(
            "encoder",
            f"frames/s @{image_size} batch {batch}",
            ours_s,
            base_s,
            target=2.0,
            goal=2.5,
            detail={"first_call_s": first_call, "device": str(device), "half": ours.half},
        ),
        Result(
            "encoder",
            "GFLOP/s achieved / sgemm GFLOP/s",
            achieved,
            peak,
            "GFLOP/s",
            achieved / peak,
            detail={"gflop_per_frame": gflop, "eager_fraction_of_peak": gflop / base_s / peak},
        ),
    ]


def run_decoder(
    device: Any, image_size: int, runs: int, tracks: tuple[int, ...] = (1, 4, 16)
) -> list[Result]:
    import torch
    import torch.nn.functional as F

    from pipeline.model import DecodeRequest
    from pipeline.model.transforms import input_size
    from pipeline.prompts import Prompt

    plain, ours = _models(device, image_size)
    height, width = 720, 1280
    frame = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    emb = ours.encode([frame])[0]
    low = image_size // 4
    rng = np.random.default_rng(2)
    resized = input_size((height, width), image_size)
    feats = emb.features.to(device)[None]
    sx, sy = resized[1] / width, resized[0] / height
    results = []
    for k in tracks:
        boxes = []
        for _ in range(k):
            x0, y0 = rng.uniform(0, width - 200), rng.uniform(0, height - 200)
            boxes.append((x0, y0, x0 + rng.uniform(50, 200), y0 + rng.uniform(50, 200)))
        masks = [rng.normal(size=(low, low)).astype(np.float32) for _ in range(k)]
        requests = [
            DecodeRequest(Prompt(box=b), mask_input=m, multimask=True)
            for b, m in zip(boxes, masks, strict=True)
        ]

        def fast(requests: list[DecodeRequest] = requests) -> None:
            ours.decode(emb, requests)

        def singles(boxes: list[Any] = boxes, masks: list[Any] = masks) -> None:
            # What a user writes: one prompt at a time, best of three, back to the frame's size.
            with torch.inference_mode():
                pe = plain.prompt_encoder.get_dense_pe()
                for b, m in zip(boxes, masks, strict=True):
                    box = torch.tensor([[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy]], device=device)
                    mask = torch.from_numpy(m)[None, None].to(device)
                    sparse, dense = plain.prompt_encoder(points=None, boxes=box, masks=mask)
                    logits, iou = plain.mask_decoder(feats, pe, sparse, dense, True)
                    best = logits[:, int(iou.argmax())][:, None]
                    up = F.interpolate(best, (image_size, image_size), mode="bilinear", align_corners=False)
                    up = up[..., : resized[0], : resized[1]]
                    (F.interpolate(up, (height, width), mode="bilinear", align_corners=False) > 0).cpu()
            _sync(device)

        ours_s = median(timed(fast, runs, warmup=2))
        base_s = median(timed(singles, runs))
        target = (0.6, 0.4) if k == 16 else (None, None)
        results.append(
            Result(
                "decoder",
                f"s/frame, {k} track{'s' if k > 1 else ''} vs {k} single calls",
                ours_s,
                base_s,
                "s",
                ours_s / base_s,
                "lower",
                target=target[0],
                goal=target[1],
            )
        )
    return results
