"""``samstream run``: a video job on this machine (local Ray, embedded Redis unless --redis-url)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from pipeline.cli.options import (
    discovery_settings,
    media_limits,
    model_config,
    preview_options,
    tracking_overrides,
)
from pipeline.errors import InvalidInputError
from pipeline.prompts import read_prompts_file, tracks_from_cli
from pipeline.sources.opening import is_feed
from pipeline.spec import JobSpec
from pipeline.streams.keys import validate_job_id
from pipeline.streams.retention import default_maxlen, parse_keep
from pipeline.tracking.discovery import DiscoveryConfig


def build_spec(args: argparse.Namespace, image_size: int, weights: str) -> JobSpec:
    """The spec of the job options shared by ``run`` and ``submit`` (see ``_add_job_options``)."""
    tracks = tracks_from_cli(args.point, args.box, args.mask_prompt)
    discover: Any = discovery_settings(args)
    if args.prompts:
        if tracks:
            raise InvalidInputError(
                "give tracks either with --point/--box/--mask-prompt or with --prompts, not both"
            )
        tracks, in_file = read_prompts_file(args.prompts)
        if in_file is not None and discover is not None:
            raise InvalidInputError("give discovery either with --discover or in the prompts file, not both")
        discover = in_file if discover is None else discover
    live = args.live or is_feed(args.source)
    return JobSpec(
        source=args.source,
        live=live,
        give_up_s=args.give_up,
        maxlen=default_maxlen(args.maxlen, live),
        tracks=tuple(tracks),
        stride=args.stride,
        image_size=image_size,
        weights=weights,
        tracking=tracking_overrides(args),
        discover=None if discover is None or discover is False else DiscoveryConfig.from_dict(discover),
    )


def local_detector(spec: JobSpec) -> JobSpec:
    """The spec with its detector file (if it has one) checked, before the job starts, and named by
    its absolute path (the source host that runs it may have another working folder).

    Raises:
        InvalidInputError: the file is missing, not ONNX, or not of the detector contract, or a
            class it does not name.
    """
    found = spec.discover
    if found is None or found.detector is None:
        return spec
    from pipeline.model.detector import open_detector

    path = os.path.abspath(found.detector)
    open_detector(path, found.detector_score, found.classes)
    return replace(spec, discover=replace(found, detector=path))


def run(args: argparse.Namespace) -> int:
    spec = local_detector(
        build_spec(args, args.image_size, args.weights if not args.checkpoint else "official")
    )
    model = model_config(args)
    keep_s = parse_keep(args.keep)
    if args.job_id is not None:
        validate_job_id(args.job_id)
    if args.metrics_port is not None and not 0 < args.metrics_port < 65536:
        raise InvalidInputError(f"--metrics-port must be a TCP port (1-65535), got {args.metrics_port}")

    if args.view:
        from pipeline.apps.view import check_port

        check_port(args.view_port)
    from pipeline.apps.run import LocalRun, run_local

    options = LocalRun(
        job_id=args.job_id,
        redis_url=args.redis_url,
        out_dir=Path(args.data_dir),
        prefix=args.prefix,
        metrics_port=args.metrics_port,
        progress=not args.no_progress,
        keep_s=keep_s,
        limits=media_limits(args),
        stall_s=args.stall_s,
        redis_retry_s=args.redis_retry_s,
        preview=preview_options(args),
        view_port=args.view_port if args.view else None,
        detach=sys.platform == "linux",
    )
    code = run_local(spec, model, options)
    if options.detach:
        # An embedded Redis still up is another process's now (a `watch` beside the run): spared.
        spare = set() if args.redis_url else {embedded_redis_pid(options.out_dir / "redis")}
        end_now(code, spare)
    return code


def embedded_redis_pid(data_dir: Path) -> int:
    """The pid recorded for the embedded Redis of ``data_dir`` (0: none)."""
    import json

    from pipeline.streams.server import STATE_FILE

    try:
        return int(json.loads((data_dir / STATE_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def end_now(code: int, spare: set[int] | frozenset[int] = frozenset()) -> NoReturn:
    """End this process at once with ``code``, and every process below it (Ray's head processes,
    its workers and agents, a background compile): the results are saved and the embedded Redis
    stopped already (or left to another process that uses it: ``spare`` and what is below it),
    so nothing is left to wait for. Ray's own shutdown takes a second or more, and some of its
    agents outlive their raylet by minutes."""
    import os
    import signal

    from pipeline.processes import descendants

    sys.stdout.flush()
    sys.stderr.flush()
    spared = {p for s in spare if s for p in (s, *descendants(s))}
    for pid in descendants(os.getpid()) - spared:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    os._exit(code)
