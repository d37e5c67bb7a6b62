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
from typing import Any, TextIO

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
    """Check every option, then start in order: the ports held, Redis, the metrics, Ray and the
    encoder pool, the job runner with the unfinished jobs resumed, the API."""
    from pipeline.signals import InterruptOnSignals

    _port(args.port, "--port")
    _port(args.metrics_port, "--metrics-port", zero_ok=True)
    model = model_config(args)
    settings, made_token = _api_settings(args, model.image_size, model.weights.value)
    config = _service_config(args, model, settings.policy)
    if model.weights.value == "official":
        from pipeline.model.weights import resolve_checkpoint

        resolve_checkpoint(model.checkpoint, model.cache_dir)  # fail now, not in every worker
    err = sys.stderr
    # SIGINT or SIGTERM to this process alone (docker stop, systemd) ends it as Ctrl-C does: the API
    # stops, jobs on a cluster (--address) go on, a local Ray and the embedded Redis are shut down.
    with InterruptOnSignals() as signals, contextlib.ExitStack() as stack:
        api_socket = stack.enter_context(_listen(args.host, args.port, "--port"))
        url, client, store = _open_redis_and_metrics(stack, args, config.redis_url)
        backend = _start_ray(stack, args, config, url, signals, err)
        _start_jobs(stack, store, backend, err)
        _announce(args, url, settings.token if made_token else None, err)
        return _run_api(settings, client, backend, api_socket, args, signals, err)


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
    )
    return settings, made_token


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


def _open_redis_and_metrics(
    stack: contextlib.ExitStack, args: argparse.Namespace, redis_url: str | None
) -> tuple[str, Any, Any]:
    """Redis (``--redis-url``, or the embedded server), and the metrics served at once: both before
    Ray starts (its processes take free ports as they start). Redis's URL, a client, the job store."""
    from pipeline.api.metrics import serve_metrics
    from pipeline.ledger import JobStore
    from pipeline.streams import Keys, connect
    from pipeline.streams.server import open_redis

    host = args.metrics_host or args.host
    held = (
        stack.enter_context(_listen(host, args.metrics_port, "--metrics-port")) if args.metrics_port else None
    )
    url = open_redis(stack, redis_url, Path(args.data_dir) / "redis")
    client = connect(url)
    store = JobStore(client, Keys(args.prefix))
    if held is not None:  # the metrics server binds it again at once, still before Ray starts
        held.close()
        try:
            serve_metrics(store, args.metrics_port, host)
        except OSError as exc:
            raise InvalidInputError(f"--metrics-port {args.metrics_port}: {exc.strerror}") from None
    return url, client, store


def _start_ray(
    stack: contextlib.ExitStack, args: argparse.Namespace, config: Any, url: str, signals: Any, err: TextIO
) -> Any:
    """Ray (joined or started here) and the encoder pool; the job runner's backend over them."""
    from dataclasses import replace

    from workers.pool import start_pool
    from workers.service import RayBackend, connect_ray

    connect_ray(args.address)
    signals.reassert()  # ray.init sets a SIGTERM handler that exits at once
    stack.callback(_disconnect_ray)
    print(f"samstream serve: Ray {'at ' + args.address if args.address else 'started here'}", file=err)
    pool = config.pool
    _, deployed = start_pool(config.model, pool)
    print(
        f"samstream serve: encoder pool of {pool.min_replicas}-{pool.max_replicas} replicas "
        f"({pool.gpus:g} GPU each)"
        if deployed
        else "samstream serve: the encoder pool runs already; kept as it is",
        file=err,
    )
    return RayBackend(replace(config, redis_url=url))


def _start_jobs(stack: contextlib.ExitStack, store: Any, backend: Any, err: TextIO) -> None:
    """Unfinished jobs resumed; from then on, a job whose runner is gone is found and resumed
    within seconds (the reconciler)."""
    from pipeline.api.reconcile import Reconciler

    reconciler = Reconciler(store, backend, every_s=backend.config.reconcile_s)
    resumed = reconciler.once()
    if resumed:
        print(f"samstream serve: resumed {len(resumed)} unfinished jobs: {', '.join(resumed)}", file=err)
    reconciler.start()
    stack.callback(reconciler.stop)


def _announce(args: argparse.Namespace, url: str, made_token: str | None, err: TextIO) -> None:
    from pipeline.streams import redact_redis_url

    metrics = f"http://{args.metrics_host or args.host}:{args.metrics_port}/metrics"
    print(
        f"samstream serve: API on http://{args.host}:{args.port} (OpenAPI at /openapi.json), "
        f"Redis {redact_redis_url(url)}" + (f", metrics on {metrics}" if args.metrics_port else ""),
        file=err,
    )
    if made_token:
        print(f"samstream serve: no --token given; this run's token is: {made_token}", file=err)
    err.flush()


def _run_api(
    settings: Any,
    client: Any,
    backend: Any,
    api_socket: socket.socket,
    args: argparse.Namespace,
    signals: Any,
    err: TextIO,
) -> int:
    """The API on its held socket until a signal; the exit code."""
    import uvicorn

    from pipeline.api import create_app

    app = create_app(settings, client, backend)
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
