"""Pipeline and machinery suites: the whole ``samstream run`` command against what a user would write."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.bench.report import Result, median, rate_result, timed
from pipeline.errors import SamstreamError


def _clip(folder: Path, frames: int, width: int = 1280, height: int = 720) -> Path:
    from pipeline.bench.samples import write_clip

    return write_clip(
        folder / f"bench-{width}x{height}-{frames}.mp4", frames=frames, width=width, height=height
    )


def _prompts(width: int, height: int) -> tuple[tuple[float, float], tuple[float, float, float, float]]:
    from pipeline.bench.samples import object_boxes, object_centres

    x, y = object_centres(0, width, height)[0]
    box = object_boxes(0, width, height)[1]
    return (float(x), float(y)), (float(box[0]), float(box[1]), float(box[2]), float(box[3]))


def _samstream_run(
    clip: Path, data: Path, extra: list[str], env: dict[str, str] | None = None
) -> tuple[float, list[float], float]:
    """Wall time of a ``samstream run``, the publish times of its entries, and its start (epoch s)."""
    from pipeline.streams import EmbeddedRedis, Keys, MaskReader, connect

    point, box = _prompts(1280, 720)
    cmd = [
        _exe(), "run", str(clip), "--point", f"{point[0]},{point[1]}", "--box", ",".join(map(str, box)),
        "--data-dir", str(data), "--job-id", "bench", "--no-progress", *extra,
    ]  # fmt: skip
    began = time.time()
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise SamstreamError(f"samstream run failed in the benchmark: {res.stderr.strip().splitlines()[-1:]}")
    with EmbeddedRedis(data / "redis") as server:
        reader = MaskReader(connect(server.url), Keys(), "bench")
        published = [e.publish_time for e in reader.read_entries()]
    return wall, published, began


def _exe() -> str:
    return str(Path(sys.executable).with_name("samstream"))


def warmup(model: list[str]) -> float:
    """Seconds of ``samstream warmup`` with ``model``'s options: the packages compiled (or found
    cached) before anything is timed."""
    start = time.perf_counter()
    res = subprocess.run([_exe(), "warmup", *model], capture_output=True, text=True)
    if res.returncode != 0:
        raise SamstreamError(f"samstream warmup failed in the benchmark: {res.stderr.strip()[-300:]}")
    return time.perf_counter() - start


def _steady(published: list[float]) -> float:
    """Seconds per frame once running (first to last publish, the first frame excluded)."""
    return (published[-1] - published[0]) / max(1, len(published) - 1)


def _seed_loop(clip: Path, device: str) -> float:
    """Seconds of the loop a user writes from kornia's documentation: decode → set_image → predict per track."""
    import av
    import torch
    from kornia.contrib.visual_prompter import VisualPrompter
    from kornia.models.sam import SamConfig

    point, box = _prompts(1280, 720)
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    prompter = VisualPrompter(SamConfig("mobile_sam"), device=dev)

    def seed_loop() -> None:
        with av.open(str(clip)) as container, torch.inference_mode():
            for frame in container.decode(video=0):
                image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).float() / 255
                prompter.set_image(image.to(dev))
                a = prompter.predict(
                    keypoints=torch.tensor([[point]], device=dev),
                    keypoints_labels=torch.tensor([[1]], device=dev),
                    multimask_output=True,
                )
                b = prompter.predict(boxes=torch.tensor([box], device=dev), multimask_output=False)
                (a.logits > 0).cpu(), (b.logits > 0).cpu()

    return median(timed(seed_loop, 1, warmup=0))


def run_pipeline(
    frames: int, image_size: int, weights: list[str], device: str, precision: str = "auto"
) -> list[Result]:
    """``samstream run`` (its defaults) against the seed loop, on a cold cache (a fresh cache folder:
    nothing compiled) and a warm one (``samstream warmup`` first, timed apart).

    The seed loop runs before and after the two runs, and its mean is the baseline: a machine
    whose speed drifts over the suite's minutes (a shared VM's neighbours) moves it as it moves
    the runs between, where one loop at the end gave a ratio off by the drift."""
    model = [*weights, "--device", device, "--precision", precision, "--image-size", str(image_size)]
    # Both tracks are decoded on every frame, as the seed loop decodes both prompts: with random
    # weights a track would otherwise be lost after a few poor frames, and cost nothing after.
    keep_tracks = ["--lost-after", str(frames + 1)]
    with tempfile.TemporaryDirectory(prefix="samstream-bench-") as tmp:
        folder = Path(tmp)
        clip = _clip(folder, frames)
        base_before = _seed_loop(clip, device)
        cold = _samstream_run(
            clip, folder / "cold", [*model, *keep_tracks], {"SAMSTREAM_CACHE_DIR": str(folder / "cache")}
        )
        warmup_s = None
        if device != "cuda":
            warmup_s = warmup(model)
        warm = _samstream_run(clip, folder / "warm", [*model, *keep_tracks])
        base_after = _seed_loop(clip, device)
    base_wall = (base_before + base_after) / 2
    out = []
    for case, (wall, published, began), target in (("cold cache", cold, 1.2), ("warm cache", warm, 3.0)):
        n = len(published)
        detail = {
            "samstream_wall_s": wall,
            "seed_wall_s": base_wall,
            "seed_walls_s": [base_before, base_after],
            "first_mask_s": published[0] - began,
            "tail_s": began + wall - published[-1],
            "steady_s_per_frame": _steady(published),
            "precision": precision,
            "tracks_decoded_every_frame": True,
        }
        if case == "warm cache":
            detail["warmup_s"] = warmup_s
        out.append(
            rate_result(
                "pipeline",
                f"frames/s, whole command, {n} frames 720p, {case}",
                wall / n,
                base_wall / frames,
                target=target,
                detail=detail,
            )
        )
        out.append(
            Result("pipeline", f"time to first mask, {case}", published[0] - began, None, "s", None, "lower")
        )
    out.append(rate_result("pipeline", "frames/s, once running (warm)", _steady(warm[1]), base_wall / frames))
    return out


def run_machinery(frames: int, image_size: int) -> list[Result]:
    """Source → encoder → decoder → Redis with the null model, against raw PyAV decoding."""
    import av

    with tempfile.TemporaryDirectory(prefix="samstream-bench-") as tmp:
        folder = Path(tmp)
        clip = _clip(folder, frames)

        def raw() -> None:
            with av.open(str(clip)) as container:
                for frame in container.decode(video=0):
                    frame.to_ndarray(format="rgb24")

        raw_s = median(timed(raw, 3)) / frames
        wall, published, _ = _samstream_run(
            clip, folder / "run", ["--weights", "null", "--image-size", str(image_size)]
        )
    steady = _steady(published)
    return [
        rate_result(
            "machinery",
            f"frames/s once running, {frames} frames 720p",
            steady,
            raw_s,
            target=0.5,
            goal=0.8,
            detail={"whole_command_s": wall, "frames": len(published)},
        )
    ]


# Variables that hold the kernels below what the CPU has (torch's own kernels and Inductor's code;
# oneDNN's, which carry the matrix products): a run under them measures the smaller kind.
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def isa_limit() -> str | None:
    """The instruction-set limits set in this environment (``NAME=VALUE, …``), or None."""
    set_ = [f"{name}={os.environ[name]}" for name in ISA_LIMITS if os.environ.get(name)]
    return ", ".join(set_) or None


def describe_machine() -> dict[str, Any]:
    """The bench's first line: the CPU, its kind (its own instructions, whatever limit is set:
    ``isa_limit`` says which), threads, torch and the GPU."""
    import platform

    import torch

    from pipeline.model.precision import cpu_kind

    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_kind": cpu_kind(),
        "isa_limit": isa_limit(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
