"""Encoder and decoder suites: samstream's model layer against plain eager kornia."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bench.report import Result, median, rate_result, timed, timed_pair


def matmul_gflops(device: Any, dtype: Any = None, runs: int = 5, n: int = 2048) -> float:
    """This machine's matrix-multiply speed in ``dtype`` (the compute-bound limit of the encoder)."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype or torch.float32)
    b = torch.randn(n, n, device=device).to(dtype or torch.float32)

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


def _plain(device: Any, image_size: int) -> Any:
    """Plain kornia MobileSAM with seeded random weights (the official layout)."""
    import torch
    from kornia.models.sam import Sam, SamConfig

    from pipeline.model.architecture import build_mobile_sam

    torch.manual_seed(0)
    if image_size == 1024:
        return Sam.from_config(SamConfig("mobile_sam")).eval().to(device)
    return build_mobile_sam(image_size).eval().to(device)


def _ours(
    plain: Any, device: Any, image_size: int, dtype: Any, compile: Any, cache: Path | None = None
) -> Any:
    """samstream's model over the same weights as ``plain`` (packages in ``cache``, default the user's)."""
    from pipeline.model import MobileSam
    from pipeline.model.architecture import build_mobile_sam

    sam = build_mobile_sam(image_size)
    sam.load_state_dict(plain.state_dict())
    return MobileSam(sam, image_size, device, dtype, compile, cache)


def _box_tracker(model: Any, boxes: Any, discovery: Any) -> Any:
    """A tracker over ``model`` following one box-prompted track per box (ids 1, 2, …)."""
    from pipeline.prompts import Prompt, TrackSpec
    from pipeline.tracking import Tracker

    tracker = Tracker(model, discovery=discovery)
    for i, box in enumerate(boxes):
        tracker.add(TrackSpec(i + 1, Prompt(box=box)))
    return tracker


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def sample_frames(count: int = 4) -> list[np.ndarray]:
    """Frames of the project's sample clips (720p, moving objects on a textured background)."""
    from pipeline.bench.samples import render_frame

    return [render_frame(i * 7, 1280, 720) for i in range(count)]


def agreement(reference: Any, other: Any, frames: list[np.ndarray]) -> dict[str, float]:
    """Feature error and mask IoU of ``other`` against ``reference`` on ``frames``: one box and
    one point prompt per sample object (the prompts the samples put on them)."""
    from pipeline.bench.samples import object_boxes, object_centres
    from pipeline.model import DecodeRequest
    from pipeline.prompts import Prompt

    errs, ious = [], []
    for i, frame in enumerate(frames):
        h, w = frame.shape[:2]
        a, b = reference.encode([frame])[0], other.encode([frame])[0]
        errs.append(float((a.features - b.features).norm() / a.features.norm()))
        requests = [
            DecodeRequest(Prompt(box=(float(box[0]), float(box[1]), float(box[2]), float(box[3]))))
            for box in object_boxes(i * 7, w, h)
        ]
        requests += [
            DecodeRequest(Prompt(points=((float(x), float(y)),), labels=(1,)))
            for x, y in object_centres(i * 7, w, h)
        ]
        ma, mb = reference.decode(a, requests).masks, other.decode(b, requests).masks
        for x, y in zip(ma, mb, strict=True):
            union = np.logical_or(x, y).sum()
            ious.append(float(np.logical_and(x, y).sum() / union) if union else 1.0)
    return {"feature_rel_error": max(errs), "mask_iou_min": min(ious), "mask_iou_mean": float(np.mean(ious))}


def run_encoder(device: Any, image_size: int, runs: int, batch: int, precision: Any = None) -> list[Result]:
    """Eager fp32 kornia against samstream's encoder: fp32 compiled, the chosen precision compiled,
    and what a first run gets before any compile (prepared, eager); GFLOP/s against the matrix
    peak of the same precision; agreement of the chosen precision with fp32 on sample frames."""
    import torch

    from pipeline.config import Compile, Precision
    from pipeline.model.precision import name, resolve

    dtype = resolve(precision or Precision.AUTO, device)
    plain = _plain(device, image_size)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) for _ in range(batch)]
    x = torch.randn(batch, 3, image_size, image_size, device=device)

    def eager() -> None:
        with torch.inference_mode():
            plain.image_encoder(x)
        _sync(device)

    eager()  # kornia's first call (allocations), untimed
    gflop = encoder_flops(plain.image_encoder, image_size) / 1e9
    results = []
    variants: list[tuple[str, Any, Compile, float | None]] = [("fp32", torch.float32, Compile.COMPILED, 2.3)]
    if dtype != torch.float32:
        variants.append((name(dtype), dtype, Compile.COMPILED, 5.0))
    variants.append((f"{name(dtype)} before compiling", dtype, Compile.AUTO, None))
    models = {}
    fresh = tempfile.mkdtemp(prefix="samstream-bench-cache-")  # nothing compiled: a first run's encoder
    for label, dt, mode, target in variants:
        start = time.perf_counter()
        cache = Path(fresh) if mode is Compile.AUTO else None
        ours = models[label] = _ours(plain, device, image_size, dt, mode, cache)
        ours.encode(frames[:1])  # compiles, or loads the compiled package from the disk cache
        first_call = time.perf_counter() - start

        def fast(ours: Any = ours) -> None:
            ours.encode(frames)
            _sync(device)

        ours_runs, base_runs = timed_pair(fast, eager, runs, warmup=0)
        ours_s, base_s = median(ours_runs) / batch, median(base_runs) / batch
        results.append(
            rate_result(
                "encoder",
                f"frames/s @{image_size} {label}",
                ours_s,
                base_s,
                target=target,
                detail={"first_call_s": first_call, "device": str(device), "precision": name(dt)},
            )
        )
        if mode is Compile.COMPILED:
            peak = matmul_gflops(device, dt)
            achieved = gflop / ours_s
            results.append(
                Result(
                    "encoder",
                    f"GFLOP/s {name(dt)} / matmul GFLOP/s {name(dt)}",
                    achieved,
                    peak,
                    "GFLOP/s",
                    achieved / peak,
                    detail={"gflop_per_frame": gflop, "eager_fp32_gflops": gflop / base_s},
                )
            )
    shutil.rmtree(fresh, ignore_errors=True)
    if dtype != torch.float32:
        # Against kornia's own fp32 modules: the official predictor's results.
        official = _ours(plain, device, image_size, torch.float32, Compile.EAGER)
        agree = agreement(official, models[name(dtype)], sample_frames())
        results.append(
            Result(
                "encoder",
                f"mask IoU {name(dtype)} vs fp32 eager, sample frames",
                agree["mask_iou_min"],
                None,
                "IoU",
                None,
                target=0.98,
                detail=agree,
            )
        )
    return results


def run_decoder(
    device: Any, image_size: int, runs: int, tracks: tuple[int, ...] = (1, 4, 16), precision: Any = None
) -> list[Result]:
    """K tracks on one frame through samstream (chosen precision, compiled) against K single calls
    of the plain eager fp32 kornia decoder, as a user writes them."""
    import torch
    import torch.nn.functional as F

    from pipeline.config import Compile, Precision
    from pipeline.model import DecodeRequest
    from pipeline.model.precision import name, resolve
    from pipeline.model.transforms import input_size
    from pipeline.prompts import Prompt

    dtype = resolve(precision or Precision.AUTO, device)
    plain = _plain(device, image_size)
    ours = _ours(plain, device, image_size, dtype, Compile.COMPILED)
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

        ours_runs, base_runs = timed_pair(fast, singles, runs, warmup=2)
        ours_s, base_s = median(ours_runs), median(base_runs)
        target = (0.4, 0.4) if k == 16 else (None, None)
        results.append(
            Result(
                "decoder",
                f"s/frame, {k} track{'s' if k > 1 else ''} {name(dtype)} vs {k} single calls",
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


def run_discovery(
    device: Any, image_size: int, runs: int, grids: tuple[int, ...] = (8, 16), precision: Any = None
) -> list[Result]:
    """What a discovery frame costs: a tracker's step on a 720p frame with 4 tracks and the
    discovery grid (``grid``² point prompts decoded in the same call, then chosen), against the same
    step without it. The encode is the frame's either way (discovery needs none of its own)."""
    from pipeline.config import Compile, Precision
    from pipeline.model.precision import name, resolve
    from pipeline.tracking.discovery import DiscoveryConfig

    dtype = resolve(precision or Precision.AUTO, device)
    ours = _ours(_plain(device, image_size), device, image_size, dtype, Compile.COMPILED)
    frame = np.random.default_rng(1).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    emb = ours.encode([frame])[0]
    boxes = [(100.0, 100.0, 300.0, 300.0), (500.0, 200.0, 650.0, 400.0), (800.0, 50.0, 1000.0, 250.0), (300.0, 450.0, 500.0, 650.0)]  # fmt: skip

    def stepper(discovery: DiscoveryConfig | None) -> Any:
        tracker = _box_tracker(ours, boxes, discovery)
        state = {"frame": 0}

        def step() -> None:
            tracker.discovering = True
            tracker._discovered_at = None  # every call a discovery frame
            state["frame"] += 1
            tracker.step(state["frame"], emb, state["frame"] / 30)
            _sync(device)

        return step

    results = []
    plain_step = stepper(None)
    for grid in grids:
        # Every frame a discovery frame; min_score 0 and no stability floor: random weights then
        # start a track as real ones would.
        config = DiscoveryConfig(every_s=1e-3, grid=grid, min_score=0.0, min_stability=0.0, max_tracks=1)
        ours_runs, base_runs = timed_pair(stepper(config), plain_step, runs, warmup=1)
        ours_s, base_s = median(ours_runs), median(base_runs)
        results.append(
            Result(
                "decoder",
                f"s/discovery frame, grid {grid}x{grid} {name(dtype)}, 4 tracks, 720p, vs the frame without",
                ours_s,
                base_s,
                "s",
                ours_s / base_s,
                "lower",
                detail={"added_s": ours_s - base_s, "prompts": grid * grid},
            )
        )
    return results


def run_detection(
    device: Any,
    image_size: int,
    runs: int,
    detector_path: str | None = None,
    precision: Any = None,
    compile: Any = None,
) -> list[Result]:
    """What a detection frame costs (discovery by a detector): the detector on the frame, as the
    source host runs it (ONNX Runtime, on the CPU), and a tracker's step with its boxes decoded as
    box prompts in the frame's call, on a 720p frame of six coloured discs with 4 tracks, against
    the same step without. ``detector_path``: the user's detector (None: the reference blob detector,
    :mod:`pipeline.evaluation.blobs`, which finds the six discs); ``compile``: the model's (None:
    compiled, as a run uses it)."""
    from pipeline.config import Compile, Precision
    from pipeline.evaluation.blobs import COLOURS, export_blob_detector
    from pipeline.model.detector import open_detector
    from pipeline.model.precision import name, resolve
    from pipeline.model.transforms import resize_longest
    from pipeline.tracking.discovery import DiscoveryConfig

    dtype = resolve(precision or Precision.AUTO, device)
    ours = _ours(_plain(device, image_size), device, image_size, dtype, compile or Compile.COMPILED)
    frame = np.full((720, 1280, 3), 90, dtype=np.uint8)
    ys, xs = np.mgrid[0:720, 0:1280]
    for k, colour in enumerate(COLOURS.values()):
        cx, cy = 160 + 320 * (k % 4), 180 + 360 * (k // 4)
        frame[(xs - cx) ** 2 + (ys - cy) ** 2 <= 80**2] = colour
    emb = ours.encode([frame])[0]
    picture = resize_longest(frame, image_size)  # what the source host gives the detector
    with tempfile.TemporaryDirectory() as folder:
        path = detector_path or str(export_blob_detector(f"{folder}/blobs.onnx"))
        detector = open_detector(path)
    found = tuple(detector.detect(picture, frame.shape[:2]))
    boxes = [(20.0, 20.0, 60.0, 60.0), (1200.0, 20.0, 1260.0, 60.0), (20.0, 650.0, 60.0, 700.0), (1200.0, 650.0, 1260.0, 700.0)]  # fmt: skip
    config = DiscoveryConfig(every_s=1e-3, detector=path, max_tracks=1)

    def stepper(discovery: DiscoveryConfig | None) -> Any:
        tracker = _box_tracker(ours, boxes, discovery)
        state = {"frame": 0}

        def step() -> None:
            state["frame"] += 1
            detections = tuple(detector.detect(picture, frame.shape[:2])) if discovery is not None else None
            plan = tracker.plan(state["frame"], emb, state["frame"] / 30, detections)
            batch = ours.decode(emb, plan.requests) if plan.requests else None
            tracker.commit(plan, batch)
            for tid in [t for t in tracker.tracks if t > len(boxes)]:
                tracker.remove(tid)  # every frame finds the same objects anew
            _sync(device)

        return step

    detect_runs = timed(lambda: detector.detect(picture, frame.shape[:2]), max(runs, 3))
    ours_runs, base_runs = timed_pair(stepper(config), stepper(None), runs, warmup=1)
    ours_s, base_s = median(ours_runs), median(base_runs)
    which = "the reference detector" if detector_path is None else os.path.basename(detector_path)
    return [
        Result(
            "decoder",
            f"s/detection frame, {which} ({len(found)} boxes) {name(dtype)}, 4 tracks, 720p, vs the frame without",
            ours_s,
            base_s,
            "s",
            ours_s / base_s,
            "lower",
            detail={
                "added_s": ours_s - base_s,
                "detector_s": median(detect_runs),
                "boxes": len(found),
                "detector_input": list(detector.input_size),
            },
        )
    ]
