"""One job on one machine: an embedded (or given) Redis, Ray started in-process, a progress bar.

This is what ``samstream run`` does. A job that stops anywhere (a worker killed, the driver killed,
Ctrl-C) is resumed by running it again with the same job id: the masks stream tells where it got to,
and the tracker state stored with each frame lets it go on exactly as if it had never stopped.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from pipeline.config import ModelConfig, Weights
from pipeline.decoding import FrameSummary
from pipeline.errors import JobError, SamstreamError
from pipeline.metrics import PrometheusMetrics
from pipeline.model.weights import resolve_checkpoint
from pipeline.spec import JobSpec
from pipeline.streams import JobStatus, JobStore, Keys, Publisher, connect, redact
from pipeline.streams.keys import new_job_id
from pipeline.streams.server import open_redis
from pipeline.streams.sink import resume_after


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
    """

    job_id: str | None = None
    redis_url: str | None = None
    out_dir: Path = Path("samstream-out")
    prefix: str = "samstream:"
    metrics_port: int | None = None
    progress: bool = True


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


def run_local(spec: JobSpec, model: ModelConfig, run: LocalRun, out: TextIO = sys.stdout) -> int:
    """Run (or resume) a job end to end. Returns the process exit code; the job hash says why."""
    job_id = run.job_id or new_job_id()
    err = sys.stderr
    with ExitStack() as stack:
        url = open_redis(stack, run.redis_url, run.out_dir / "redis")
        client = connect(url)
        keys = Keys(run.prefix)
        store = JobStore(client, keys)
        resuming = store.exists(job_id)
        if resuming:
            info = store.get(job_id)
            if info.spec != spec.to_dict():
                raise JobError(
                    f"job {job_id!r} exists with another spec (source {info.spec.get('source')!r}); "
                    "use another --job-id to start a new job"
                )
            if info.status is JobStatus.SUCCEEDED:
                print(
                    f"job {job_id} finished already: {info.frames_done} frames in {keys.masks(job_id)}",
                    file=out,
                )
                return 0
        try:
            # A file is probed here, to fail fast and clearly; a live feed is opened once, by its
            # worker (some servers take one client only).
            from workers.graph import probe

            info_src, total = (None, None) if spec.live else probe(spec)
        except SamstreamError as exc:
            if not resuming:
                store.create(job_id, spec.to_dict())
            store.set_status(job_id, JobStatus.FAILED, str(exc))
            print(f"samstream: error: job {job_id} failed: {exc}", file=err)
            return 1
        if not resuming:
            store.create(job_id, spec.to_dict(), total_frames=total)
        # A file job goes on after its last checkpoint (replaying, unpublished, the frames up to its
        # last published one); a live one from the feed's present, numbered after the last published.
        published = Publisher(client, keys, job_id).last_published_frame()
        last = resume_after(client, keys, job_id, spec.live)
        done = store.get(job_id).frames_done

        metrics = PrometheusMetrics()
        if run.metrics_port is not None:
            metrics.serve(run.metrics_port)
        if model.weights is not Weights.OFFICIAL:
            print(f"samstream: WARNING: {_notice(model)}", file=err)
        size = f"{info_src.width}x{info_src.height}, " if info_src is not None else "live, "
        print(
            f"job {job_id}: {spec.source} ({size}{total if total is not None else '?'} frames, "
            f"{len(spec.tracks)} tracks)" + _resuming(published, last),
            file=err,
        )
        try:
            model = _resolve_weights(model)
            _ray_init(stack)
            from workers.graph import GraphOptions, JobGraph

            if _first_compile(model):
                print(
                    "samstream: first run at this image size here: compiling the image encoder "
                    "(about a minute, cached for later runs)",
                    file=err,
                )
            progress = _Progress(total, done, run.progress, err)
            stack.callback(progress.close)
            store.set_status(job_id, JobStatus.RUNNING)
            graph = JobGraph(
                job_id,
                spec,
                model,
                url,
                run.prefix,
                GraphOptions.auto(null_model=model.weights is Weights.NULL),
                metrics=metrics,
                on_frames=progress,
            )
            graph.run(last)
            progress.close()
            if graph.stopped and not spec.live:
                store.set_status(job_id, JobStatus.CANCELLED, "stopped on request")
                print(f"job {job_id} stopped on request", file=out)
                return 0
        except SamstreamError as exc:
            store.set_status(job_id, JobStatus.FAILED, str(exc))
            print(f"samstream: error: job {job_id} failed: {exc}", file=err)
            return 1
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                store.set_status(
                    job_id, JobStatus.CANCELLED, "interrupted; run again with the same --job-id to resume"
                )
                print(f"samstream: interrupted; resume with --job-id {job_id}", file=err)
                return 130
            # A bug, not a user mistake: the job is marked failed, the traceback goes on.
            store.set_status(job_id, JobStatus.FAILED, f"internal error: {type(exc).__name__}: {exc}")
            raise
        store.set_status(job_id, JobStatus.SUCCEEDED)
        final = store.get(job_id)
        where = (
            f"Redis {redact(url)}" if run.redis_url else f"{run.out_dir / 'redis'} (embedded Redis, stopped)"
        )
        print(
            f"job {job_id} succeeded: {final.frames_done} frames, masks in stream {keys.masks(job_id)} of {where}",
            file=out,
        )
        return 0


def _resuming(published: int | None, after: int | None) -> str:
    if published is None:
        return ""
    replay = "" if after == published else f" (replaying from frame {0 if after is None else after + 1})"
    return f", resuming after frame {published}{replay}"


def _first_compile(model: ModelConfig) -> bool:
    """Whether no compiled encoder of this size is cached yet (the first frame will wait for one)."""
    from pipeline.config import Compile
    from pipeline.model.weights import default_cache_dir

    if model.compile is Compile.EAGER or model.weights is Weights.NULL:
        return False
    folder = (model.cache_dir or default_cache_dir()) / "compiled"
    return not any(folder.glob(f"encoder-{model.image_size}-*.pt2"))


def _notice(model: ModelConfig) -> str:
    from pipeline.model.null import NULL_NOTICE
    from pipeline.model.segmenter import RANDOM_WEIGHTS_NOTICE

    return NULL_NOTICE if model.weights is Weights.NULL else RANDOM_WEIGHTS_NOTICE


def _ray_init(stack: ExitStack) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, 4),
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=True,
    )
    stack.callback(ray.shutdown)
