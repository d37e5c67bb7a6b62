"""Turning parsed command-line options into typed config (the only place the CLI builds it)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import ModelConfig
from pipeline.errors import InvalidInputError
from pipeline.sources.limits import MediaLimits

if TYPE_CHECKING:
    from pipeline.masks.preview import PreviewOptions


def model_config(args: argparse.Namespace, single_image: bool = False) -> ModelConfig:
    from pipeline.model.weights import env_cache_dir  # urllib and friends: only where a model is set up

    compile_mode = args.compile
    if compile_mode == "auto" and single_image:
        # Compiling takes a minute once (then it is cached); it pays off over a video, not one image.
        compile_mode = "eager"
    return ModelConfig(
        compile=compile_mode,
        precision=args.precision,
        image_size=args.image_size,
        device=args.device,
        weights=args.weights,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        cache_dir=env_cache_dir(),
    )


def tracking_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The tracking options given (``--min-score`` …): overrides of ``TrackingConfig``'s fields."""
    given = (
        ("min_score", args.min_score),
        ("lost_after", args.lost_after),
        ("box_margin", args.box_margin),
        ("search_s", args.search_s),
        ("search_interval_s", args.search_interval_s),
    )
    return {k: v for k, v in given if v is not None}


def discovery_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """``--discover`` and its settings given (``--discover-grid`` …), or None without ``--discover``.

    Raises:
        InvalidInputError: a setting without ``--discover``, or a bad ``--discover-roi``.
    """
    given = {
        "every_s": args.discover_every,
        "grid": args.discover_grid,
        "max_tracks": args.discover_max_tracks,
        "min_area": args.discover_min_area,
        "max_area": args.discover_max_area,
        "roi": args.discover_roi,
        "forget_s": args.discover_forget,
        "classes": _names(args.classes),
        "detector_score": args.detector_score,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if args.detector is not None:
        given["detector"] = args.detector
    elif "classes" in given or "detector_score" in given:
        raise InvalidInputError("--classes and --detector-score go with --detector")
    if not args.discover and args.detector is None:
        if given:
            raise InvalidInputError("--discover-* settings go with --discover")
        return None
    if "roi" in given:
        try:
            given["roi"] = [float(v) for v in given["roi"].split(",")]
        except ValueError:
            raise InvalidInputError(
                f"--discover-roi must be X0,Y0,X1,Y1, got {args.discover_roi!r}"
            ) from None
        if len(given["roi"]) != 4:
            raise InvalidInputError(f"--discover-roi must be X0,Y0,X1,Y1, got {args.discover_roi!r}")
    return given


def _names(text: str | None) -> list[str] | None:
    """``--classes a,b``: the names, each stripped (None when not given)."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InvalidInputError(f"--classes must name classes, A,B, got {text!r}")
    return names


def media_limits(args: argparse.Namespace) -> MediaLimits:
    """``--max-frame-pixels``, ``--max-frames`` and ``--max-duration-s`` (0: no limit)."""
    return MediaLimits.from_options(args.max_frame_pixels, args.max_frames, args.max_duration_s)


def preview_options(args: argparse.Namespace) -> PreviewOptions:
    """``--no-preview``, ``--preview-side``, ``--preview-rate`` and ``--preview-keep``."""
    from pipeline.masks.preview import PreviewOptions

    return PreviewOptions(
        enabled=not args.no_preview,
        max_side=args.preview_side,
        rate=args.preview_rate,
        keep=args.preview_keep,
        live_always=args.preview_live_always,
    )


def results_redis(stack: contextlib.ExitStack, args: argparse.Namespace) -> Any:
    """The Redis a job's results are in, for the commands that read them (``status``, ``view``, …):
    ``--redis-url``, or the embedded server of a run's ``--data-dir`` (started for the command and
    stopped with ``stack``); no results there is one line, not a server started on an empty folder."""
    from pipeline.streams import connect
    from pipeline.streams.server import open_redis

    data = Path(args.data_dir) / "redis"
    if not args.redis_url and not data.is_dir():
        raise InvalidInputError(
            f"no local results under {args.data_dir}: pass --redis-url URL, or the run's --data-dir DIR"
        )
    return connect(open_redis(stack, args.redis_url, data))
