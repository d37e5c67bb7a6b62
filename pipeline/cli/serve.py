"""``samstream serve``: the REST API, the job driver, stream hosts and the autoscaled encoder pool, on Ray."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
from pathlib import Path

from pipeline.cli.options import model_config
from pipeline.errors import InvalidInputError


def _port(value: int, what: str, zero_ok: bool = False) -> int:
    if not (0 if zero_ok else 1) <= value < 65536:
        raise InvalidInputError(f"{what} must be a TCP port (1-65535), got {value}")
    return value


def serve(args: argparse.Namespace) -> int:
    from pipeline.api import ApiSettings
    from pipeline.sources.policy import SourcePolicy

    _port(args.port, "--port")
    _port(args.metrics_port, "--metrics-port", zero_ok=True)
    token = args.token or os.environ.get("SAMSTREAM_API_TOKEN")
    made_token = not token
    token = token or secrets.token_urlsafe(24)
    policy = SourcePolicy.parse(args.allow_schemes, args.allow_local_files)
    model = model_config(args)
    settings = ApiSettings(
        token=token,
        policy=policy,
        prefix=args.prefix,
        image_size=model.image_size,
        weights=model.weights.value,
    )
    from workers.pool import PoolConfig

    pool = PoolConfig(
        min_replicas=args.min_encoders,
        max_replicas=args.max_encoders,
        gpus=args.encoder_gpus,
        cpus=args.encoder_cpus,
        downscale_delay_s=args.idle_s,
    )
    from pipeline.jobs.driver import DriverOptions
    from workers.transport import HostResources

    driver = DriverOptions(
        batch_frames=4,
        file_window=16,
        streams_per_host=args.streams_per_host,
        tracks_per_decoder=args.tracks_per_decoder,
        host_idle_s=args.host_idle_s,
        stall_s=args.stall_s,
    )
    resources = HostResources(
        host_cpus=args.host_cpus,
        host_memory_mb=args.host_memory_mb,
        decoder_cpus=args.decoder_cpus,
        decoder_gpus=args.decoder_gpus,
        decoder_memory_mb=args.decoder_memory_mb,
    )
    source_hosts = args.source_hosts if args.source_hosts is not None else min(os.cpu_count() or 1, 8)
    if source_hosts < 1:
        raise InvalidInputError(f"--source-hosts must be >= 1, got {source_hosts}")
    redis_url = args.redis_url or os.environ.get("SAMSTREAM_REDIS_URL")
    if model.weights.value == "official":
        from pipeline.model.weights import resolve_checkpoint

        resolve_checkpoint(model.checkpoint, model.cache_dir)  # fail now, not in every worker

    import uvicorn

    from pipeline.api import create_app, recover
    from pipeline.api.metrics import serve_metrics
    from pipeline.api.reconcile import Reconciler
    from pipeline.streams import JobStore, Keys, connect, redact
    from pipeline.streams.server import open_redis
    from workers.pool import start_pool
    from workers.service import RayBackend, ServiceConfig, connect_ray

    err = sys.stderr
    with contextlib.ExitStack() as stack:
        url = open_redis(stack, redis_url, Path(args.data_dir) / "redis")
        client = connect(url)
        connect_ray(args.address)
        print(f"samstream serve: Ray {'at ' + args.address if args.address else 'started here'}", file=err)
        _, deployed = start_pool(model, pool)
        print(
            f"samstream serve: encoder pool of {pool.min_replicas}-{pool.max_replicas} replicas "
            f"({pool.gpus:g} GPU each)"
            if deployed
            else "samstream serve: the encoder pool runs already; kept as it is",
            file=err,
        )
        backend = RayBackend(
            ServiceConfig(
                model,
                url,
                args.prefix,
                pool,
                driver,
                resources,
                hosts=source_hosts,
                decoders=1,
                redis_retry_s=args.redis_retry_s,
            )
        )
        store = JobStore(client, Keys(args.prefix))
        resumed = recover(store, backend)
        if resumed:
            print(f"samstream serve: resumed {len(resumed)} unfinished jobs: {', '.join(resumed)}", file=err)
        # From now on, a job whose runner is gone is found and resumed within seconds.
        reconciler = Reconciler(store, backend, every_s=backend.config.reconcile_s)
        reconciler.start()
        stack.callback(reconciler.stop)
        if args.metrics_port:
            serve_metrics(store, args.metrics_port)
        app = create_app(settings, client, backend)
        print(
            f"samstream serve: API on http://{args.host}:{args.port} (OpenAPI at /openapi.json), "
            f"Redis {redact(url)}"
            + (f", metrics on :{args.metrics_port}/metrics" if args.metrics_port else ""),
            file=err,
        )
        if made_token:
            print(f"samstream serve: no --token given; this run's token is: {token}", file=err)
        err.flush()
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
