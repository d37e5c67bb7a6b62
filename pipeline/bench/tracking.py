"""``samstream bench --suite tracking``: how well tracks hold on, and what holding on costs.

Quality: each scene of :func:`pipeline.evaluation.scenes.bench_scenes` is followed through the
reference segmenter (:mod:`pipeline.evaluation.reference`: it returns the object under a prompt,
as MobileSAM with its released weights does on clear objects; **it measures the tracker, not the
weights**), once with samstream's tracker and once, as the baseline, with the same tracker's motion,
memory, search and pixel claims turned off (propagation alone: the previous mask's box and logits, what samstream
did before). Rows: J per scene (mean IoU over the frames its object is visible), the mean J,
processed frames to re-find an object that came back into view (30 % visible), and frames a track's
mask lay mostly on something else.

Cost, at MobileSAM's embedding size for ``image_size`` ((256, S/16, S/16)): a searching track's
search (the similarity of its memory with every cell, and the peaks), and a followed track's
bookkeeping (its motion, the memory's pooled vector and the look around its prediction), each in
milliseconds against one encode of eager fp32 MobileSAM measured in the same run. A searching track
also decodes up to ``search_candidates`` more prompts a frame (2 by default), in the same call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.bench.report import Result, median, timed
from pipeline.evaluation.reference import ReferenceSegmenter
from pipeline.evaluation.scenes import bench_scenes, measure
from pipeline.tracking import TrackingConfig
from pipeline.tracking.memory import FrameFeatures, Memory
from pipeline.tracking.motion import Motion

ALONE = TrackingConfig(motion=False, memory=False, search=False, exclusive=False, coast_s=0.0)
WRONG_TARGET = ("crossing", "vanish", "lookalike")  # no frame on another object, ever


def run_tracking(image_size: int, runs: int, device: Any) -> list[Result]:
    """The suite's results (see the module's docstring)."""
    return run_quality(image_size) + run_cost(image_size, runs, device)


def run_quality(image_size: int = 1024) -> list[Result]:
    segmenter = ReferenceSegmenter(image_size)
    out: list[Result] = []
    js, alone_js = [], []
    for scene in bench_scenes():
        ours = measure(scene, segmenter)
        base = measure(scene, segmenter, ALONE)
        js.append(ours.j)
        alone_js.append(base.j)
        detail = {"about": scene.about, "frames": ours.frames, "tracker_s": round(ours.seconds, 3)}
        out.append(
            Result(
                "tracking",
                f"J {scene.name}",
                ours.j,
                base.j,
                "J",
                None,
                target=0.85 if scene.name == "fast" else None,
                detail=detail,
            )
        )
        if ours.reacquire is not None and base.reacquire is not None:  # its object came back
            out.append(
                Result(
                    "tracking",
                    f"frames to re-find {scene.name}",
                    float(ours.reacquire),
                    float(base.reacquire),
                    "frames",
                    None,
                    "lower",
                    target=5.0,
                    detail={"note": "a return never re-found counts the frames to the scene's end"},
                )
            )
        out.append(
            Result(
                "tracking",
                f"frames on another object {scene.name}",
                float(ours.wrong),
                float(base.wrong),
                "frames",
                None,
                "lower",
                target=0.0 if scene.name in WRONG_TARGET else None,
            )
        )
    out.insert(
        0,
        Result(
            "tracking",
            "mean J over the scenes",
            float(np.mean(js)),
            float(np.mean(alone_js)),
            "J",
            None,
            target=0.90,
            detail={
                "segmenter": "reference (measures the tracker, not the weights)",
                "baseline": "propagation alone",
            },
        ),
    )
    return out


def run_cost(image_size: int, runs: int, device: Any) -> list[Result]:
    """A searching track's search and a followed track's bookkeeping, against one eager encode."""
    import torch

    from pipeline.bench.model import _plain, _sync

    g = image_size // 16
    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.standard_normal((256, g, g)).astype(np.float32))
    size = (720, 1280)
    from pipeline.model.transforms import input_size

    size_in = input_size(size, image_size)
    vectors = rng.standard_normal((8, 256)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    memory = Memory(vectors, tuple(range(8)), 0.95, 5000.0, True)
    logits = np.full((image_size // 4, image_size // 4), -8.0, np.float32)
    logits[40:60, 50:80] = 8.0
    motion = Motion.start((600.0, 300.0, 680.0, 380.0), 0.0)

    def search() -> None:
        frame = FrameFeatures(features, size_in, size)
        sims = frame.similarity(memory)
        frame.peaks(sims, 8, 0.5)

    def follow() -> None:
        frame = FrameFeatures(features, size_in, size)
        predicted = motion.predict(1 / 30)
        frame.best_in(memory, (560.0, 260.0, 720.0, 420.0))
        pooled = frame.pool(logits)
        if pooled is not None:
            memory.match(pooled[0])
        predicted.update((604.0, 302.0, 684.0, 382.0))

    # Each call makes its FrameFeatures, which converts the embedding once (a frame's cost, shared
    # by all its tracks): the rows are an upper bound per track.
    search_s = median(timed(search, max(runs, 5) * 4))
    follow_s = median(timed(follow, max(runs, 5) * 4))
    plain = _plain(device, image_size)
    x = torch.randn(1, 3, image_size, image_size, device=device)

    def encode() -> None:
        with torch.inference_mode():
            plain.image_encoder(x)
        _sync(device)

    encode_s = median(timed(encode, runs))
    return [
        Result(
            "tracking",
            f"search per searching track @{image_size}",
            search_s * 1e3,
            encode_s * 1e3,
            "ms",
            search_s / encode_s,
            "lower",
            target=0.05,
            detail={"baseline": "one eager fp32 encode", "extra_decodes_per_frame": ALONE.search_candidates},
        ),
        Result(
            "tracking",
            f"bookkeeping per followed track @{image_size}",
            follow_s * 1e3,
            encode_s * 1e3,
            "ms",
            follow_s / encode_s,
            "lower",
            target=0.05,
            detail={"baseline": "one eager fp32 encode"},
        ),
    ]
