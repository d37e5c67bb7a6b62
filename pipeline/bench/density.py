"""The density suite: how many live streams one machine follows, and what each costs.

For each stream count K it starts ``samstream serve`` on local Ray with the null model (so that
everything but the model does its real work: decoding, hosts, the driver, tracking, RLE, Redis),
sends K live UDP MPEG-TS feeds of 640×360 at ``fps`` from this process (:mod:`pipeline.bench.feeds`),
submits them through the REST API, waits until every stream publishes, lets them run for a
warm-up, then measures for ``seconds``:

* processes and PSS of the service's whole process tree (Ray's processes, workers, Redis);
* published frames per second of each stream (frames captured in the window), min and median;
* capture-to-publish latency over all streams' entries (p50, p99), read from Redis;
* frames dropped per stream (live feeds drop the stale ones), and jobs that failed.

Targets (``DONE`` of the many-streams issue): below ``overload_from`` streams every stream keeps
≥ 90 % of its rate, p99 ≤ 500 ms and the tree's PSS ≤ 4 GB, with as many processes as at the
smallest K; from ``overload_from`` on (more demand than the machine has) nothing fails, the
slowest stream gets ≥ half the median's rate and p99 ≤ 1 s. The layout with a process set per
stream is gone, so the figures are absolute, against those targets.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.bench.report import Result
from pipeline.errors import SamstreamError

GB = 2**30
MB = 2**20


@dataclass
class DensityFigures:
    """What one stream count gave."""

    streams: int
    fps: float
    seconds: float
    processes: int = 0
    pss: int = 0
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    drops: list[int] = field(default_factory=list)
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def quantile(self, q: float) -> float:
        values = sorted(self.latencies)
        if not values:
            return float("inf")
        return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _footprint(pid: int) -> tuple[int, int]:
    """(processes, PSS in bytes) of ``pid``'s process tree."""
    import psutil

    procs, pss = 0, 0
    for p in _tree(pid):
        with contextlib.suppress(psutil.Error):
            pss += p.memory_full_info().pss
            procs += 1
    return procs, pss


class Service:
    """``samstream serve`` on local Ray with one CPU encoder (the null model unless told), as a
    process group; ``extra``: more of serve's options."""

    def __init__(
        self, folder: Path, image_size: int, weights: str = "null", extra: tuple[str, ...] = ()
    ) -> None:
        self.folder = folder
        self.port = _free_port()
        self.token = secrets.token_urlsafe(16)
        exe = str(Path(sys.executable).with_name("samstream"))
        args = [
            exe, "serve", "--weights", weights, "--image-size", str(image_size), "--allow-schemes", "udp",
            "--allow-hosts", "127.0.0.1",  # the feeds are sent on loopback, which serve refuses by default
            "--encoder-gpus", "0", "--encoder-cpus", "1", "--min-encoders", "1", "--max-encoders", "1",
            "--idle-s", "3600", "--port", str(self.port), "--metrics-port", "0", "--data-dir", str(folder),
            *extra,
        ]  # fmt: skip
        self.log = open(folder / "serve.log", "wb")  # noqa: SIM115 (the process writes to it)
        # The token by the environment: a token that starts with "-" is not an option's value, and a
        # command line shows in every process list.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "SAMSTREAM_API_TOKEN": self.token}
        self.proc = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def api(self) -> Any:
        import httpx

        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def wait_ready(self, timeout: float = 180) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        with self.api() as api:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SamstreamError(f"samstream serve ended in the benchmark: {self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if api.get("/healthz").status_code == 200:
                        return
                time.sleep(0.5)
        raise SamstreamError(f"samstream serve did not answer within {timeout:.0f} s: {self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return (self.folder / "serve.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        tree = _tree(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for p in tree:  # Ray's processes live in other sessions: end what is left of the tree
            with contextlib.suppress(Exception):
                p.kill()
        self.log.close()


def measure(
    streams: int, fps: float, seconds: float, warmup: float, image_size: int, clip: Any
) -> DensityFigures:
    """Serve ``streams`` live feeds and measure them (see the module docstring)."""
    from pipeline.bench.feeds import UdpFeeds, free_udp_ports
    from pipeline.bench.samples import object_centres
    from pipeline.streams import EmbeddedRedis, Keys, connect

    figures = DensityFigures(streams, fps, seconds)
    x, y = (float(v) for v in object_centres(0, clip.width, clip.height)[0])
    with tempfile.TemporaryDirectory(prefix="samstream-density-") as tmp:
        service = Service(Path(tmp), image_size)
        feeds = UdpFeeds(clip, free_udp_ports(streams))
        try:
            service.wait_ready()
            feeds.start()
            jobs = [f"density-{streams}-{i}" for i in range(streams)]
            submit_streams(service, jobs, feeds.urls, (x, y))
            with EmbeddedRedis(Path(tmp) / "redis") as server:
                client = connect(server.url)
                keys = Keys()
                wait_publishing(client, keys, jobs, timeout=60 + 0.5 * streams, service=service)
                time.sleep(warmup)
                dropped0 = dropped(client, keys, jobs)
                t0 = time.time()
                samples = []
                while time.time() < t0 + seconds:
                    samples.append(_footprint(service.proc.pid))
                    time.sleep(min(10.0, max(0.0, t0 + seconds - time.time())))
                t1 = t0 + seconds
                time.sleep(2.0)  # frames captured before t1 finish publishing
                figures.processes = max(n for n, _ in samples)
                figures.pss = max(p for _, p in samples)
                dropped1 = dropped(client, keys, jobs)
                for job in jobs:
                    captured = []
                    entries: Any = client.xrange(keys.masks(job))
                    for _, f in entries:
                        c = float(f["capture_time"])
                        if t0 <= c < t1:
                            captured.append(float(f["publish_time"]) - c)
                    figures.rates.append(len(captured) / seconds)
                    figures.latencies += captured
                figures.drops = [b - a for a, b in zip(dropped0, dropped1, strict=True)]
                for job in jobs:
                    info: Any = client.hgetall(keys.job(job))
                    if info.get("status") == "failed":
                        figures.failed += 1
                        figures.errors.append(f"{job}: {info.get('error')}")
                with service.api() as api:
                    for job in jobs:
                        with contextlib.suppress(Exception):
                            api.delete(f"/streams/{job}")
                client.close()
        finally:
            feeds.stop()
            service.stop()
    return figures


def dropped(client: Any, keys: Any, jobs: list[str]) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for job in jobs:
        pipe.hget(keys.job(job), "dropped")
    return [int(v or 0) for v in pipe.execute()]


def submit_streams(
    service: Service,
    jobs: list[str],
    urls: list[str],
    point: tuple[float, float],
    extra: dict[str, Any] | None = None,
) -> None:
    """Each feed as a live stream of the running ``service``, one point track on ``point`` (and
    ``extra`` fields in each body)."""
    with service.api() as api:
        for job, url in zip(jobs, urls, strict=True):
            body = {
                "source": url,
                "tracks": [{"id": 1, "points": [list(point)]}],
                "job_id": job,
                **(extra or {}),
            }
            r = api.post("/streams", json=body)
            if r.status_code != 201:
                raise SamstreamError(f"the API refused stream {job}: {r.status_code} {r.text[:200]}")


def wait_publishing(client: Any, keys: Any, jobs: list[str], timeout: float, service: Service) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(jobs)
    while waiting:
        if time.monotonic() > deadline:
            raise SamstreamError(
                f"{len(waiting)} of {len(jobs)} streams published nothing within {timeout:.0f} s"
            )
        if service.proc.poll() is not None:
            raise SamstreamError(f"samstream serve ended in the benchmark: {service.tail()}")
        waiting = [j for j in waiting if not client.xlen(keys.masks(j))]
        time.sleep(0.5)


def run_density(
    counts: list[int], fps: float, seconds: float, warmup: float, image_size: int, overload_from: int
) -> list[Result]:
    """Measure each stream count in turn; the results against the targets."""
    from pipeline.bench.feeds import TsClip

    clip = TsClip.encode(frames=max(50, int(fps * (warmup + seconds + 120))), fps=fps)
    runs = []
    for k in counts:
        print(f"bench: density: {k} streams at {fps:g} fps …", file=sys.stderr, flush=True)
        runs.append(measure(k, fps, seconds, warmup, image_size, clip))
    return density_results(runs, overload_from)


def density_results(runs: list[DensityFigures], overload_from: int) -> list[Result]:
    """The table rows of the measured stream counts."""
    out: list[Result] = []
    strict = [r for r in runs if r.streams < overload_from]
    meeting = []
    for r in runs:
        k, name = r.streams, f"K={r.streams}"
        low, mid = (min(r.rates), statistics.median(r.rates)) if r.rates else (0.0, 0.0)
        over = k >= overload_from
        detail = {"streams": k, "fps": r.fps, "seconds": r.seconds, "errors": r.errors[:5]}
        rows = [
            Result("density", f"{name}: processes", r.processes, None, "procs", None, detail=detail),
            Result("density", f"{name}: PSS of the tree", r.pss / GB, None, "GB", None, "lower", 4.0),
            Result("density", f"{name}: median stream", mid, None, "frames/s", None),
            Result(
                "density",
                f"{name}: slowest stream" + (" / median" if over else ""),
                low / mid if over and mid else low,
                None,
                "ratio" if over else "frames/s",
                None,
                "higher",
                0.5 if over else 0.9 * r.fps,
            ),
            Result("density", f"{name}: latency p50", r.quantile(0.5), None, "s", None, "lower"),
            Result(
                "density",
                f"{name}: latency p99",
                r.quantile(0.99),
                None,
                "s",
                None,
                "lower",
                1.0 if over else 0.5,
            ),
            Result(
                "density",
                f"{name}: drops (streams with any)",
                float(sum(r.drops)),
                None,
                "frames",
                None,
                detail={
                    "streams_with_drops": sum(1 for d in r.drops if d),
                    "per_stream_max": max(r.drops or [0]),
                },
            ),
            Result("density", f"{name}: jobs failed", r.failed, None, "jobs", None, "lower", 0.0),
        ]
        out += rows
        if r.rates and low >= 0.9 * r.fps and r.quantile(0.99) <= 0.5 and r.pss <= 4 * GB and not r.failed:
            meeting.append(k)  # the targets below overload, met whether or not K is past it
    if len(strict) >= 2:
        first, last = strict[0], strict[-1]
        out.append(
            Result(
                "density",
                f"processes K={last.streams} - K={first.streams}",
                last.processes - first.processes,
                None,
                "procs",
                None,
                "lower",
                0.0,
            )
        )
        out.append(
            Result(
                "density",
                "PSS per added stream",
                (last.pss - first.pss) / max(1, last.streams - first.streams) / MB,
                None,
                "MB",
                None,
                "lower",
            )
        )
    out.append(
        Result(
            "density",
            "largest K with every stream at rate",
            max(meeting) if meeting else 0,
            None,
            "streams",
            None,
            detail={"targets": "every stream >= 90% of its fps, p99 <= 0.5 s, PSS <= 4 GB, none failed"},
        )
    )
    return out
