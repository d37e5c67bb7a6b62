"""``samstream serve``'s options, read and checked: the API's settings and the job runner's config.
The service itself starts in :mod:`pipeline.apps.serve`."""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path
from typing import Any

from pipeline.cli.options import media_limits, model_config, preview_options
from pipeline.errors import InvalidInputError


def _port(value: int, what: str, zero_ok: bool = False) -> int:
    if not (0 if zero_ok else 1) <= value < 65536:
        raise InvalidInputError(f"{what} must be a TCP port (1-65535), got {value}")
    return value


def _sizes(text: str) -> tuple[int, ...]:
    """``--image-sizes``: a comma-separated list of sizes (checked by ApiSettings)."""
    try:
        return tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise InvalidInputError(f"--image-sizes must be a list like 256,512,1024, got {text!r}") from None


def _require_shared_redis(address: str | None, redis_url: str | None) -> None:
    """Workers of a cluster (``--address``) run on other nodes: an embedded Redis on 127.0.0.1 is not
    theirs to reach, so the service needs the URL of a Redis every node reaches."""
    if address and not redis_url:
        raise InvalidInputError(
            f"--address {address} runs jobs on a Ray cluster whose other nodes cannot reach an embedded "
            "Redis on this machine's 127.0.0.1: give --redis-url URL (or SAMSTREAM_REDIS_URL) of a "
            "Redis every node reaches"
        )


def serve(args: argparse.Namespace) -> int:
    """Check every option, then start the service (:func:`pipeline.apps.serve.run_service`)."""
    from pipeline.apps.serve import ServeOptions, run_service

    _port(args.port, "--port")
    _port(args.metrics_port, "--metrics-port", zero_ok=True)
    model = model_config(args)
    settings, made_token = _api_settings(args, model.image_size, model.weights.value)
    config = _service_config(args, model, settings.policy)
    if model.weights.value == "official":
        from pipeline.model.weights import resolve_checkpoint

        resolve_checkpoint(model.checkpoint, model.cache_dir)  # fail now, not in every worker
    options = ServeOptions(
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        data_dir=Path(args.data_dir),
        address=args.address,
        prefix=args.prefix,
    )
    return run_service(settings, config, options, made_token)


def _api_settings(args: argparse.Namespace, image_size: int, weights: str) -> tuple[Any, bool]:
    """The API's settings (token, source policy, limits), and whether the token was made here."""
    from pipeline.api import ApiSettings
    from pipeline.sources.policy import SourcePolicy
    from pipeline.streams.retention import parse_keep

    token = args.token or os.environ.get("SAMSTREAM_API_TOKEN")
    made_token = not token
    keep_s = parse_keep(args.keep)
    media = media_limits(args)
    settings = ApiSettings(
        token=token or secrets.token_urlsafe(24),
        policy=SourcePolicy.parse(args.allow_schemes, args.allow_local_files, args.allow_hosts),
        prefix=args.prefix,
        image_size=image_size,
        weights=weights,
        max_jobs=args.max_jobs,
        max_tracks=args.max_tracks,
        image_sizes=_sizes(args.image_sizes),
        max_body_kb=args.max_body_kb,
        keep_s=keep_s,
        max_keep_s=keep_s if args.max_keep is None else parse_keep(args.max_keep, "--max-keep"),
        max_maxlen=args.max_maxlen,
        max_frame_pixels=media.max_frame_pixels,
        admission=args.admission,
        min_stream_fps=args.min_stream_fps,
        detector_dir=_detector_dir(args.detector_dir),
    )
    return settings, made_token


def _detector_dir(value: str | None) -> str | None:
    """``--detector-dir``: an existing folder, absolute (None: not given)."""
    if value is None:
        return None
    if not os.path.isdir(value):
        raise InvalidInputError(f"--detector-dir {value}: no such folder")
    return os.path.abspath(value)


def _service_config(args: argparse.Namespace, model: Any, policy: Any) -> Any:
    """What the job runner is made of: the encoder pool, the driver, the hosts, Redis, and the
    guard of every connection the sources make (``policy``'s addresses, as the API checks them)."""
    from pipeline.jobs.driver import DriverOptions
    from pipeline.sources.guard import NetworkGuard
    from workers.pool import PoolConfig
    from workers.service import ServiceConfig
    from workers.transport import HostResources

    media = media_limits(args)
    source_hosts = args.source_hosts if args.source_hosts is not None else min(os.cpu_count() or 1, 8)
    if source_hosts < 1:
        raise InvalidInputError(f"--source-hosts must be >= 1, got {source_hosts}")
    redis_url = args.redis_url or os.environ.get("SAMSTREAM_REDIS_URL")
    _require_shared_redis(args.address, redis_url)
    return ServiceConfig(
        model,
        redis_url or "",  # the embedded server's, once it runs (_start_ray)
        args.prefix,
        PoolConfig(
            min_replicas=args.min_encoders,
            max_replicas=args.max_encoders,
            gpus=args.encoder_gpus,
            cpus=args.encoder_cpus,
            downscale_delay_s=args.idle_s,
            max_sizes=args.encoder_sizes,
        ),
        DriverOptions(
            batch_frames=4,
            file_window=16,
            streams_per_host=args.streams_per_host,
            tracks_per_tracker=args.tracks_per_tracker,
            host_idle_s=args.host_idle_s,
            media=media,
            stall_s=args.stall_s,
            preview=preview_options(args),
        ),
        HostResources(
            host_cpus=args.host_cpus,
            host_memory_mb=args.host_memory_mb,
            tracker_cpus=args.tracker_cpus,
            tracker_gpus=args.tracker_gpus,
            tracker_memory_mb=args.tracker_memory_mb,
        ),
        hosts=source_hosts,
        decoders=1,
        guard=NetworkGuard(policy.addresses),  # the API's rule, for every connection
        redis_retry_s=args.redis_retry_s,
    )
