"""``samstream serve``'s start-up, as named steps: the ports held, Redis (given or embedded) and the
metrics, Ray and the encoder pool, the job runner with the unfinished jobs resumed, then the API until
a signal. What runs the jobs is :mod:`workers.service` (the driver actor and the backend the API
submits to); the options are read and checked by :mod:`pipeline.cli.serve`. Ray is imported only
when the service starts."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pipeline.errors import InvalidInputError


@dataclass(frozen=True)
class ServeOptions:
    """Where the service listens and keeps its data.

    Attributes:
        host: the API's (and by default the metrics') address.
        port: the API's port.
        metrics_port: the metrics' port; 0: none served.
        metrics_host: the metrics' address, if not ``host``.
        data_dir: the embedded Redis's data lives in ``data_dir/redis``.
        address: a Ray cluster to join; None: Ray starts here.
        prefix: Redis key prefix.
    """

    host: str
    port: int
    metrics_port: int
    metrics_host: str | None
    data_dir: Path
    address: str | None
    prefix: str


def run_service(settings: Any, config: Any, options: ServeOptions, made_token: bool) -> int:
    """Start the service in order and serve the API until SIGINT or SIGTERM; the exit code.

    Args:
        settings: the API's :class:`~pipeline.api.ApiSettings`.
        config: the job runner's :class:`~workers.service.ServiceConfig` (its Redis URL empty: the
            embedded server's, once it runs).
        made_token: the token was made here (then it is printed once).
    """
    from pipeline.signals import InterruptOnSignals

    err = sys.stderr
    # SIGINT or SIGTERM to this process alone (docker stop, systemd) ends it as Ctrl-C does: the API
    # stops, jobs on a cluster (--address) go on, a local Ray and the embedded Redis are shut down.
    with InterruptOnSignals() as signals, contextlib.ExitStack() as stack:
        api_socket = stack.enter_context(_listen(options.host, options.port, "--port"))
        url, client, store = _open_redis_and_metrics(stack, options, config.redis_url)
        backend = _start_ray(stack, options, config, url, signals, err)
        _start_jobs(stack, store, backend, err)
        _announce(options, url, settings.token if made_token else None, err)
        return _run_api(settings, client, backend, api_socket, options, signals, err)


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


def _open_redis_and_metrics(
    stack: contextlib.ExitStack, options: ServeOptions, redis_url: str | None
) -> tuple[str, Any, Any]:
    """Redis (``--redis-url``, or the embedded server), and the metrics served at once: both before
    Ray starts (its processes take free ports as they start). Redis's URL, a client, the job store."""
    from pipeline.api.metrics import serve_metrics
    from pipeline.ledger import JobStore
    from pipeline.streams import Keys, connect
    from pipeline.streams.server import open_redis

    host = options.metrics_host or options.host
    held = (
        stack.enter_context(_listen(host, options.metrics_port, "--metrics-port"))
        if options.metrics_port
        else None
    )
    url = open_redis(stack, redis_url, Path(options.data_dir) / "redis")
    client = connect(url)
    store = JobStore(client, Keys(options.prefix))
    if held is not None:  # the metrics server binds it again at once, still before Ray starts
        held.close()
        try:
            serve_metrics(store, options.metrics_port, host)
        except OSError as exc:
            raise InvalidInputError(f"--metrics-port {options.metrics_port}: {exc.strerror}") from None
    return url, client, store


def _start_ray(
    stack: contextlib.ExitStack, options: ServeOptions, config: Any, url: str, signals: Any, err: TextIO
) -> Any:
    """Ray (joined or started here) and the encoder pool; the job runner's backend over them."""
    from dataclasses import replace

    from workers.pool import start_pool
    from workers.service import RayBackend, connect_ray

    connect_ray(options.address)
    signals.reassert()  # ray.init sets a SIGTERM handler that exits at once
    stack.callback(_disconnect_ray)
    print(f"samstream serve: Ray {'at ' + options.address if options.address else 'started here'}", file=err)
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


def _announce(options: ServeOptions, url: str, made_token: str | None, err: TextIO) -> None:
    from pipeline.streams import redact_redis_url

    metrics = f"http://{options.metrics_host or options.host}:{options.metrics_port}/metrics"
    print(
        f"samstream serve: API on http://{options.host}:{options.port} (OpenAPI at /openapi.json), "
        f"Redis {redact_redis_url(url)}" + (f", metrics on {metrics}" if options.metrics_port else ""),
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
    options: ServeOptions,
    signals: Any,
    err: TextIO,
) -> int:
    """The API on its held socket until a signal; the exit code."""
    import uvicorn

    from pipeline.api import create_app

    app = create_app(settings, client, backend)
    # uvicorn takes SIGINT and SIGTERM while it runs, and raises the one taken again once stopped
    server = uvicorn.Server(uvicorn.Config(app, host=options.host, port=options.port, log_level="warning"))
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
