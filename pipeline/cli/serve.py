"""``samstream serve``: the REST API, the job driver, stream hosts and the autoscaled encoder pool, on Ray."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import sys
from pathlib import Path

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


def _listen(host: str, port: int, what: str) -> socket.socket:
    """Hold ``port`` from now on, or refuse it in one line. The API's socket is bound before Ray
    starts: Ray's own processes take free ports as they start, and a port only checked as free could
    be theirs by the time the API binds it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidInputError(f"cannot listen on {host!r} for {what}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and prometheus do
    try:
        sock.bind(address)
        sock.listen(2048)  # uvicorn's default backlog
    except OSError as exc:
        sock.close()
        raise InvalidInputError(
            f"{what} {port} on {host} is not free ({exc.strerror}): another process listens there; "
            f"stop it or pick another {what}"
        ) from None
    return sock


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
    from pipeline.api import ApiSettings
    from pipeline.sources.policy import SourcePolicy

    _port(args.port, "--port")
    _port(args.metrics_port, "--metrics-port", zero_ok=True)
    token = args.token or os.environ.get("SAMSTREAM_API_TOKEN")
    made_token = not token
    token = token or secrets.token_urlsafe(24)
    policy = SourcePolicy.parse(args.allow_schemes, args.allow_local_files, args.allow_hosts)
    model = model_config(args)
    from pipeline.streams.retention import parse_keep

    keep_s = parse_keep(args.keep)
    media = media_limits(args)
    max_keep_s = keep_s if args.max_keep is None else parse_keep(args.max_keep, "--max-keep")
    settings = ApiSettings(
        token=token,
        policy=policy,
        prefix=args.prefix,
        image_size=model.image_size,
        weights=model.weights.value,
        max_jobs=args.max_jobs,
        max_tracks=args.max_tracks,
        image_sizes=_sizes(args.image_sizes),
        max_body_kb=args.max_body_kb,
        keep_s=keep_s,
        max_keep_s=max_keep_s,
        max_maxlen=args.max_maxlen,
        max_frame_pixels=media.max_frame_pixels,
        admission=args.admission,
        min_stream_fps=args.min_stream_fps,
    )
    metrics_host = args.metrics_host or args.host
    from workers.pool import PoolConfig

    pool = PoolConfig(
        min_replicas=args.min_encoders,
        max_replicas=args.max_encoders,
        gpus=args.encoder_gpus,
        cpus=args.encoder_cpus,
        downscale_delay_s=args.idle_s,
        max_sizes=args.encoder_sizes,
    )
    from pipeline.jobs.driver import DriverOptions
    from workers.transport import HostResources

    driver = DriverOptions(
        batch_frames=4,
        file_window=16,
        streams_per_host=args.streams_per_host,
        tracks_per_decoder=args.tracks_per_decoder,
        host_idle_s=args.host_idle_s,
        media=media,
        stall_s=args.stall_s,
        preview=preview_options(args),
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
    _require_shared_redis(args.address, redis_url)
    if model.weights.value == "official":
        from pipeline.model.weights import resolve_checkpoint

        resolve_checkpoint(model.checkpoint, model.cache_dir)  # fail now, not in every worker

    import uvicorn

    from pipeline.api import create_app, recover
    from pipeline.api.metrics import serve_metrics
    from pipeline.api.reconcile import Reconciler
    from pipeline.signals import InterruptOnSignals
    from pipeline.sources.guard import NetworkGuard
    from pipeline.streams import JobStore, Keys, connect, redact
    from pipeline.streams.server import open_redis
    from workers.pool import start_pool
    from workers.service import RayBackend, ServiceConfig, connect_ray

    err = sys.stderr
    # SIGINT or SIGTERM to this process alone (docker stop, systemd) ends it as Ctrl-C does: the API
    # stops, jobs on a cluster (--address) go on, a local Ray and the embedded Redis are shut down.
    with InterruptOnSignals() as signals, contextlib.ExitStack() as stack:
        api_socket = stack.enter_context(_listen(args.host, args.port, "--port"))
        held = (
            stack.enter_context(_listen(metrics_host, args.metrics_port, "--metrics-port"))
            if args.metrics_port
            else None
        )
        url = open_redis(stack, redis_url, Path(args.data_dir) / "redis")
        client = connect(url)
        store = JobStore(client, Keys(args.prefix))
        if held is not None:  # the metrics server binds it again at once, still before Ray starts
            held.close()
            try:
                serve_metrics(store, args.metrics_port, metrics_host)
            except OSError as exc:
                raise InvalidInputError(f"--metrics-port {args.metrics_port}: {exc.strerror}") from None
        connect_ray(args.address)
        signals.reassert()  # ray.init sets a SIGTERM handler that exits at once
        stack.callback(_disconnect_ray)
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
                guard=NetworkGuard(policy.addresses),  # the API's rule, for every connection
                redis_retry_s=args.redis_retry_s,
            )
        )
        resumed = recover(store, backend)
        if resumed:
            print(f"samstream serve: resumed {len(resumed)} unfinished jobs: {', '.join(resumed)}", file=err)
        # From now on, a job whose runner is gone is found and resumed within seconds.
        reconciler = Reconciler(store, backend, every_s=backend.config.reconcile_s)
        reconciler.start()
        stack.callback(reconciler.stop)
        app = create_app(settings, client, backend)
        print(
            f"samstream serve: API on http://{args.host}:{args.port} (OpenAPI at /openapi.json), "
            f"Redis {redact(url)}"
            + (
                f", metrics on http://{metrics_host}:{args.metrics_port}/metrics" if args.metrics_port else ""
            ),
            file=err,
        )
        if made_token:
            print(f"samstream serve: no --token given; this run's token is: {token}", file=err)
        err.flush()
        # uvicorn takes SIGINT and SIGTERM while it runs, and raises the one taken again once stopped
        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=[api_socket])
        if not server.started and signals.signum is None:
            print("samstream serve: the API did not start (uvicorn's log above says why)", file=err)
            return 1
        if signals.signum is None:
            return 0
        print(f"samstream serve: stopped ({signal.Signals(signals.signum).name})", file=err)
        return 128 + signals.signum


def _disconnect_ray() -> None:
    """Leave Ray: a cluster's detached job runner goes on; a local Ray (no --address) stops."""
    import ray

    ray.shutdown()
