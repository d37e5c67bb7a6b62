"""One job on one machine: an embedded (or given) Redis, Ray started in-process, a progress bar.

This is what ``samstream run`` does. A job that stops anywhere (a worker killed, the driver killed,
Ctrl-C) is resumed by running it again with the same job id: the masks stream tells where it got to,
and the tracker state stored with each frame lets it go on exactly as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pipeline.config import ModelConfig, Weights
from pipeline.errors import InvalidInputError, SamstreamError
from pipeline.jobs.driver import DriverOptions, JobDriver, Listener
from pipeline.ledger import JobStore
from pipeline.ledger.lifecycle import Ending, Lifecycle
from pipeline.masks.preview import PreviewOptions
from pipeline.metrics import PrometheusMetrics
from pipeline.model.weights import resolve_checkpoint
from pipeline.signals import InterruptOnSignals, exit_code, signal_name
from pipeline.sources.limits import MediaLimits
from pipeline.spec import JobSpec
from pipeline.streams import Keys, Publisher, connect, redact_redis_url
from pipeline.streams.connection import DEFAULT_RETRY_S
from pipeline.streams.keys import new_job_id
from pipeline.streams.retention import DEFAULT_KEEP_S
from pipeline.streams.server import open_redis
from pipeline.tracking.stage import FrameSummary

if TYPE_CHECKING:
    from pipeline.sources.video import SourceInfo
    from workers.transport import RayTransport

GPU_BATCH = 16  # frames per encoder call on a GPU (and for the benchmark's null model)


@dataclass(frozen=True)
class LocalRun:
    """Options of a local run.

    Attributes:
        job_id: the job's id; None makes a new one. An existing id resumes that job.
        redis_url: use this Redis; None starts an embedded server with its data under ``out_dir``.
        out_dir: the output folder (embedded Redis data).
        prefix: Redis key prefix.
        metrics_port: serve Prometheus metrics on this port (None: no server).
        progress: show a progress bar on stderr.
        keep_s: seconds the job's keys stay in Redis once it has ended; None: until deleted.
        limits: what the source may hold (pixels per frame; frames and duration).
        stall_s: fail the job when its file or URL gives no picture for this long.
        redis_retry_s: retry Redis for this long while it is unreachable or refuses writes.
        preview: the JPEG previews of the job's frames (the viewer's pictures).
        view_port: serve the browser viewer of the job on this port while it runs (None: no viewer).
        detach: leave Ray running at the end, for the caller to end this process at once
            (``samstream run``: the terminal is not held while Ray shuts down); the embedded
            Redis is stopped (and saved) either way.
    """

    job_id: str | None = None
    redis_url: str | None = None
    out_dir: Path = Path("samstream-out")
    prefix: str = "samstream:"
    metrics_port: int | None = None
    progress: bool = True
    keep_s: int | None = DEFAULT_KEEP_S
    limits: MediaLimits = field(default_factory=MediaLimits)
    stall_s: float = 30.0
    redis_retry_s: float = DEFAULT_RETRY_S
    preview: PreviewOptions = field(default_factory=PreviewOptions)
    view_port: int | None = None
    detach: bool = False

    def __post_init__(self) -> None:
        if not self.stall_s > 0 or not self.redis_retry_s >= 0:
            raise InvalidInputError(
                f"--stall-s must be > 0 and --redis-retry-s >= 0 seconds, got {self.stall_s}, {self.redis_retry_s}"
            )


def _resolve_weights(model: ModelConfig) -> ModelConfig:
    """Download (once) in the driver, so workers only ever load a file."""
    if model.weights is not Weights.OFFICIAL:
        return model
    return replace(model, checkpoint=resolve_checkpoint(model.checkpoint, model.cache_dir))


class _Progress:
    def __init__(self, total: int | None, initial: int, enabled: bool, stream: TextIO) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, unit="frame", file=stream, dynamic_ncols=True, mininterval=0.5
            )

    def __call__(self, summaries: Sequence[FrameSummary]) -> None:
        if self.bar is not None:
            self.bar.update(sum(1 for s in summaries if s.published))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _RunListener(Listener):
    def __init__(self, progress: _Progress) -> None:
        self.progress = progress
        self.ended_with: tuple[str, str | None] | None = None

    def frames(self, job_id: str, summaries: Sequence[FrameSummary]) -> None:
        self.progress(summaries)

    def ended(self, job_id: str, status: str, error: str | None) -> None:
        self.ended_with = (status, error)


@dataclass(frozen=True)
class Layout:
    """How a local run lays its job out on Ray."""

    options: DriverOptions
    encoders: int = 1
    encoder_gpus: float = 0.0
    encoder_threads: int | None = None
    tracker_gpus: float = 0.0


def layout(model: ModelConfig) -> Layout:
    """A CPU encoder takes one frame a call (batching does not help it) with all the cores' threads;
    GPU encoders (one per GPU) and the benchmark's null model take batches of 16: every batch costs
    each stage a Ray call, about a millisecond of CPU apiece. With GPUs, the tracker host takes a
    tenth of the first one (its mask decoder runs there) and the encoder beside it the rest.
    """
    import ray

    batched = DriverOptions(batch_frames=GPU_BATCH, file_window=4 * GPU_BATCH, max_hosts=1, max_decoders=1)
    if model.weights is Weights.NULL:
        return Layout(batched)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus >= 1:
        return Layout(batched, encoders=gpus, encoder_gpus=0.9, tracker_gpus=0.1)
    # One live frame in flight: the frame taken is always the newest when the encoder has room.
    cpu = DriverOptions(batch_frames=1, file_window=3, live_in_flight=1, max_hosts=1, max_decoders=1)
    return Layout(cpu, encoder_threads=os.cpu_count())


def run_local(spec: JobSpec, model: ModelConfig, run: LocalRun, out: TextIO = sys.stdout) -> int:
    """Run (or resume) a job end to end. Returns the process exit code; the job hash says why.

    SIGINT or SIGTERM sent to this process (``kill``, ``docker stop``) ends it as Ctrl-C does: the
    job is left resumable, Ray and the embedded Redis are shut down, and the code is 130 or 143.
    """
    job_id = run.job_id or new_job_id()
    err = sys.stderr
    metrics = _metrics(run.metrics_port)
    with InterruptOnSignals() as signals, ExitStack() as stack:
        # Ray takes seconds to start: it starts now, while Redis starts and the source is probed
        # (on a thread of its own; on this one, first, where PyAV is in use: see _RayStart).
        ray_ready = _RayStart(stack, detach=run.detach)
        url = open_redis(stack, run.redis_url, run.out_dir / "redis")
        client = connect(url, retry_s=run.redis_retry_s)
        keys = Keys(run.prefix)
        store = JobStore(client, keys)
        lifecycle = Lifecycle(store, stop_reason="stopped on request")
        admitted = lifecycle.admit(job_id, spec, keep_s=run.keep_s)
        if admitted is None:
            done = store.get(job_id).frames_done
            print(f"job {job_id} finished already: {done} frames in {keys.masks(job_id)}", file=out)
            return 0
        try:
            # A file is probed here, to fail fast and clearly; a live feed is opened once, by its
            # source host (some servers take one client only).
            source_info = None if spec.live else probe(spec.source, run.limits)
            start = lifecycle.begin(job_id, again=True)
            if start is None:  # pragma: no cover - admitted above, so it has not succeeded
                return 0
            if source_info is not None:
                lifecycle.opened(start, source_info)
        except SamstreamError as exc:
            lifecycle.end(job_id, spec, Ending.FAILED, str(exc))
            print(f"samstream: error: job {job_id} failed: {exc}", file=err)
            return 1

        if model.weights is not Weights.OFFICIAL:
            print(f"samstream: WARNING: {_notice(model)}", file=err)
        size = f"{source_info.width}x{source_info.height}, " if source_info is not None else "live, "
        total = store.get(job_id).frames_total
        published = start.resume.last_published
        print(
            f"job {job_id}: {spec.source} ({size}{total if total is not None else '?'} frames, "
            f"{len(spec.tracks)} tracks)" + _resuming(published, start.read_after),
            file=err,
        )
        if run.view_port is not None:
            from pipeline.apps.view import viewer_alongside

            stack.enter_context(viewer_alongside(client, run.prefix, job_id, run.view_port, err))
        try:
            model = _resolve_weights(_workload(model, spec, total, published))
            ray_ready.wait()
            signals.reassert()  # ray.init may set a SIGTERM handler that exits at once
            if _first_compile(model):
                print(
                    "samstream: --compile compiled: compiling the model for this machine first "
                    "(about a minute, cached for later runs)",
                    file=err,
                )
            progress = _Progress(total, store.get(job_id).frames_done, run.progress, err)
            stack.callback(progress.close)
            listener = _RunListener(progress)
            driver = _driver(
                model,
                url,
                run.prefix,
                store,
                lifecycle,
                metrics,
                listener,
                stack,
                run,
                (spec.image_size, len(spec.tracks)),
                own_ray=ray_ready.started,
            )
            driver.add(start)
            try:
                driver.run(until_idle=True)
            except BaseException:
                driver.interrupt()
                raise
            progress.close()
        except SamstreamError as exc:
            lifecycle.end(job_id, spec, Ending.FAILED, str(exc))
            print(f"samstream: error: job {job_id} failed: {exc}", file=err)
            return 1
        except KeyboardInterrupt as exc:
            name = signal_name(exc)
            how = "interrupted" if name == "SIGINT" else f"interrupted ({name})"
            print(f"samstream: {how}; resume with --job-id {job_id}", file=err)
            return exit_code(exc)
        except BaseException as exc:
            # A bug, not a user mistake: the job is marked failed, the traceback goes on.
            lifecycle.end(job_id, spec, Ending.FAILED, f"internal error: {type(exc).__name__}: {exc}")
            raise
        return _report(listener, store, job_id, url, run, out)


def _metrics(port: int | None) -> PrometheusMetrics:
    """The run's metrics, served on ``port`` when given: bound before Ray starts (Ray's processes
    take free ports)."""
    metrics = PrometheusMetrics()
    if port is not None:
        try:
            metrics.serve(port)
        except OSError as exc:
            raise InvalidInputError(
                f"--metrics-port {port} is not free ({exc.strerror}): another process "
                "listens there; stop it or pick another --metrics-port"
            ) from None
    return metrics


def _report(
    listener: _RunListener, store: JobStore, job_id: str, url: str, run: LocalRun, out: TextIO
) -> int:
    """How the job ended, said once (stdout, or stderr for a failure); the exit code."""
    status, error = listener.ended_with or ("failed", "the job ended without a status")
    if status == "failed":
        print(f"samstream: error: job {job_id} failed: {error}", file=sys.stderr)
        return 1
    if status == "cancelled":
        print(f"job {job_id} {error}", file=out)
        return 0
    final = store.get(job_id)
    where = (
        f"Redis {redact_redis_url(url)}"
        if run.redis_url
        else f"{run.out_dir / 'redis'} (embedded Redis, stopped)"
    )
    masks = store.keys.masks(job_id)
    print(f"job {job_id} succeeded: {final.frames_done} frames, masks in stream {masks} of {where}", file=out)
    return 0


def _driver(
    model: ModelConfig,
    url: str,
    prefix: str,
    store: JobStore,
    lifecycle: Lifecycle,
    metrics: PrometheusMetrics,
    listener: Listener,
    stack: ExitStack,
    run: LocalRun | None = None,
    prepare: tuple[int, int] | None = None,
    own_ray: bool = True,
) -> JobDriver:
    """A driver over Ray actors of this run: one source host, encoders, one tracker host.

    ``prepare``: (image size, tracks) of the model the tracker host loads at once, while the
    source opens, rather than when the first frame comes. ``own_ray``: this run started Ray, and
    shuts it down at its end; a caller's Ray keeps running, only this run's actors go.
    """
    from pipeline.streams.control import ControlBus
    from workers.transport import HostResources, OwnEncoders, RayTransport

    lay = layout(model)
    encoders = OwnEncoders(model, lay.encoders, lay.encoder_gpus, lay.encoder_threads)
    run = run or LocalRun()
    transport = RayTransport(
        model,
        url,
        prefix,
        encoders,
        HostResources(tracker_gpus=lay.tracker_gpus),
        redis_retry_s=run.redis_retry_s,
    )
    if not run.detach:
        stack.callback(_end_ray if own_ray else RayTransport.shutdown, transport)
    if prepare is not None:
        transport.prepare(*prepare)
    keys = store.keys

    def event(job_id: str, kind: str, detail: str | None) -> None:
        Publisher(store.client, keys, job_id).event(kind, detail=detail)

    options = replace(lay.options, media=run.limits, stall_s=run.stall_s, preview=run.preview)
    return JobDriver(transport, lifecycle, ControlBus(store.client, keys), event, options, metrics, listener)


def _end_ray(transport: RayTransport) -> None:
    """Let the last closes run, then shut this run's Ray down, actors and all.

    Killing the actors one by one first would fail their calls in flight, and Ray's driver prints
    each failure (``(raylet) Task EncoderWorker.encode failed … retried``) after our last line;
    ``ray.shutdown`` stops that printer first. Calls still in flight (an interrupted job's frames)
    then fail inside Ray's C++ core, which logs each to file descriptor 2 ("Failed to push error to
    driver"): expected while everything is being stopped, so that descriptor points at /dev/null for
    the shutdown only.
    """
    import ray

    transport.settle()
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        ray.shutdown()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def probe(source: str, limits: MediaLimits | None = None) -> SourceInfo:
    """Open a video once, to fail fast and clearly on bad input (before any worker starts).

    Raises:
        SamstreamError: the video cannot be read, or goes past ``limits``.
    """
    from pipeline.sources.video import VideoSource

    with VideoSource(source, limits=limits) as video:
        return video.info


def _resuming(published: int | None, after: int | None) -> str:
    if published is None:
        return ""
    replay = "" if after == published else f" (replaying from frame {0 if after is None else after + 1})"
    return f", resuming after frame {published}{replay}"


def _first_compile(model: ModelConfig) -> bool:
    """Whether the first frame will wait for a compile: ``--compile compiled`` and no encoder of
    this size cached yet (``auto`` never waits: it compiles in the background when that pays)."""
    from pipeline.config import Compile

    if model.compile is not Compile.COMPILED or model.weights in (Weights.NULL, Weights.REFERENCE):
        return False
    from pipeline.model.accelerate import packages_dir  # imports torch: a second the driver need not spend

    return not any(packages_dir(model.cache_dir).glob(f"encoder-{model.image_size}-*.pt2"))


def _workload(model: ModelConfig, spec: JobSpec, total: int | None, published: int | None) -> ModelConfig:
    """The model config with the frames this run will process, when the source says (a file)."""
    if spec.live or total is None:
        return model
    left = max(0, total - (0 if published is None else published + 1))
    return replace(model, workload_frames=-(-left // spec.stride))


def _notice(model: ModelConfig) -> str:
    from pipeline.evaluation.reference import ReferenceSegmenter
    from pipeline.model.null import NULL_NOTICE
    from pipeline.model.segmenter import RANDOM_WEIGHTS_NOTICE

    if model.weights is Weights.REFERENCE:
        return ReferenceSegmenter.notice
    return NULL_NOTICE if model.weights is Weights.NULL else RANDOM_WEIGHTS_NOTICE


class _RayStart:
    """``ray.init`` on a thread of its own; :meth:`wait` returns once it is done (or raises its error).

    The thread lives until Ray is shut down: Ray's head processes are started with the parent
    death signal (Linux), which the kernel sends when the *thread* that started them ends. Ray is
    shut down when ``stack`` unwinds, unless ``detach``: then it goes with this process, which
    must end soon after, with the processes below it (:func:`pipeline.cli.run.end_now`).

    Where this process has used PyAV already (a caller of the Python API), Ray starts on the
    calling thread instead, before anything else: Ray forks its processes with a ``preexec_fn``,
    so the child runs Python's after-fork clean-up, which drops every *other* thread's state. PyAV
    keeps a frame converter per thread, and one dropped in the child waits forever for FFmpeg's
    slice threads, which the child does not have: ``ray.init`` then waits for that child forever.
    The caller's thread keeps its state in the child.
    """

    def __init__(self, stack: ExitStack, detach: bool) -> None:
        import threading

        self.error: BaseException | None = None
        self.detach = detach
        self.started = False  # whether this run started Ray (a caller's own Ray is left running)
        self._done = threading.Event()
        self._ready = threading.Event()
        self.thread: threading.Thread | None = None
        stack.callback(self._stop)
        if "av" in sys.modules:
            self._init()
        else:
            self.thread = threading.Thread(target=self._start, name="ray-init", daemon=True)
            self.thread.start()

    def _init(self) -> None:
        try:
            self.started = _ray_init()
        except BaseException as exc:  # handed to the main thread by wait()
            self.error = exc
        self._ready.set()

    def _start(self) -> None:
        self._init()
        self._done.wait()

    def wait(self) -> None:
        self._ready.wait()
        if self.error is not None:
            raise self.error

    def _stop(self) -> None:
        if self.detach:  # even mid-start: what it started goes with this process
            return
        self._ready.wait()
        if self.started:
            import ray

            ray.shutdown()
        self._done.set()
        if self.thread is not None:
            self.thread.join()


def _ray_init() -> bool:
    """Start a local Ray for this run; False when the caller's Ray is there already (it is used)."""
    import ray

    if ray.is_initialized():
        return False
    from workers.actors import ray_start_env

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray_start_env(run=True)
    with _lean_head():
        ray.init(
            address="local",
            num_cpus=max(os.cpu_count() or 1, 4),
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            configure_logging=True,
        )
    return True


@contextlib.contextmanager
def _lean_head() -> Iterator[None]:
    """While Ray starts here: none of the head's processes that a run has no use for.

    * No API server when the dashboard is off. Without the dashboard, Ray still starts its
      dashboard process (serving usage statistics only) and ``ray.init`` waits until it has
      written its address: about 0.8 s of a run's start on two cores, and a Python process. A run
      uses no job submission, state API or dashboard.
    * No autoscaler monitor: one machine, nothing to scale (a service's cluster keeps its own).
    * No log monitor: it sends the workers' output to the driver, which a run asks Ray not to do
      (``log_to_driver=False``); the output stays in Ray's log files.

    The two monitors are Python processes that took about 0.75 CPU-seconds, on two cores, while
    the actors were importing torch. Where Ray no longer has one of these functions, it starts
    that process as before.
    """
    import ray._private.node as node
    import ray._private.services as services

    start_api = getattr(services, "start_api_server", None)

    def start_unless_off(include_dashboard: bool | None, *args: Any, **kwargs: Any) -> Any:
        if include_dashboard is False:
            return None, None  # (its URL, its process): what the node records for none
        return start_api(include_dashboard, *args, **kwargs)  # type: ignore[misc]

    def none(self: Any) -> None:
        return None

    patches: list[tuple[Any, str, Any]] = [
        (where, name, new)
        for where, name, new in (
            (services, "start_api_server", start_unless_off),
            (node.Node, "start_monitor", none),
            (node.Node, "start_log_monitor", none),
        )
        if callable(getattr(where, name, None))
    ]
    saved = [(where, name, getattr(where, name)) for where, name, _ in patches]
    for where, name, new in patches:
        setattr(where, name, new)
    try:
        yield
    finally:
        for where, name, old in saved:
            setattr(where, name, old)
