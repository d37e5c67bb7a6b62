"""The capacity suite: live streams when the model cannot keep up with them.

One ``samstream serve`` on local Ray with real compute (random weights, one CPU encoder) follows
K = 1, 2, 4, 8 live UDP feeds at ``fps`` in turn (:mod:`pipeline.bench.feeds`), each with one
point track: far more frames than the encoder can take once K > 1 (on a CPU, already at K = 1).
For each K, after a warm-up, it measures for ``seconds``, from the streams' entries in Redis:

* the total published rate and each stream's (frames captured in the window);
* capture-to-publish latency over all entries (p50, p99);
* the service interval of K = 1: the median gap between its published frames.

Targets (the live-latency issue's): for every K, p99 ≤ 2 × the service interval of K = 1 (latency
stays about one frame's processing, whatever the number of streams), the slowest stream ≥ 0.8 ×
its fair share of the total (total / K), and the total ≥ 0.9 × that of K = 1 (pacing costs no
throughput). Each K is measured against K = 1 of the same run.

With ``image_size="auto"`` the streams ask for adaptive resolution with a ``target_fps``, on a
service of sizes 256, 512, 768 and 1024 whose streams start at 1024: each K also reports the
slowest stream against the target (≥ 0.9 ×) and the sizes its entries were made at in the window
and its ``image_size`` events named.

With ``admission_floor`` F the service runs ``--admission capacity --min-stream-fps F``: once
each K is measured, one more stream is asked for. It must be refused (429) exactly when a fair
share of the measured total over K + 1 streams would fall below F, and the streams already
running must keep their rate (the next ``seconds / 2`` against the measured window, ≥ 0.9).
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.bench.density import Service, submit_streams, wait_publishing
from pipeline.bench.report import Result

AUTO_SIZES = (
    256,
    512,
    768,
    1024,
)  # the service's sizes when the streams ask for auto; they start at the last


@dataclass
class CapacityFigures:
    """What one stream count gave."""

    streams: int
    seconds: float
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)  # between one stream's published frames
    failed: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)  # entries in the window per image size
    changes: list[str] = field(default_factory=list)  # the image_size events' details
    admission: dict[str, Any] | None = None  # one more stream asked for: the answer, what followed

    @property
    def total(self) -> float:
        return sum(self.rates)

    def quantile(self, q: float) -> float:
        values = sorted(self.latencies)
        if not values:
            return float("inf")
        return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


def measure(
    service: Service,
    streams: int,
    clip: Any,
    seconds: float,
    warmup: float,
    client: Any,
    keys: Any,
    body: dict[str, Any] | None = None,
    admission_floor: float | None = None,
) -> CapacityFigures:
    """``streams`` live feeds through the running ``service``, measured (see the module docstring)."""
    from pipeline.bench.feeds import UdpFeeds, free_udp_ports
    from pipeline.bench.samples import object_centres

    figures = CapacityFigures(streams, seconds)
    x, y = (float(v) for v in object_centres(0, clip.width, clip.height)[0])
    feeds = UdpFeeds(clip, free_udp_ports(streams)).start()
    jobs = [f"capacity-{streams}-{i}" for i in range(streams)]
    try:
        submit_streams(service, jobs, feeds.urls, (x, y), body)
        wait_publishing(client, keys, jobs, timeout=120 + 10 * streams, service=service)
        time.sleep(warmup)
        t0 = time.time()
        time.sleep(seconds)
        t1 = t0 + seconds
        time.sleep(5.0)  # frames captured before t1 finish publishing
        for job in jobs:
            captured, published = [], []
            entries: Any = client.xrange(keys.masks(job))
            for _, f in entries:
                c = float(f["capture_time"])
                if t0 <= c < t1:
                    captured.append(float(f["publish_time"]) - c)
                    published.append(float(f["publish_time"]))
                    size = int(f.get("image_size") or 0)
                    figures.sizes[size] = figures.sizes.get(size, 0) + 1
            figures.rates.append(len(captured) / seconds)
            figures.latencies += captured
            figures.gaps += [b - a for a, b in itertools.pairwise(published)]
            info: Any = client.hgetall(keys.job(job))
            if info.get("status") == "failed":
                figures.failed += 1
            events: Any = client.xrange(keys.events(job))
            figures.changes += [f.get("detail", "") for _, f in events if f.get("type") == "image_size"]
        if admission_floor is not None:
            figures.admission = _one_more(service, client, keys, jobs, figures, admission_floor, body)
        info = client.hgetall(keys.job(jobs[0]))
        figures.detail = {
            k: info.get(k) for k in ("requested_fps", "delivered_fps", "capacity_bound") if k in info
        }
    finally:
        with service.api() as api:
            for job in jobs:
                with contextlib.suppress(Exception):
                    api.delete(f"/streams/{job}")
        feeds.stop()
        _wait_ended(client, keys, jobs)
    return figures


def _one_more(
    service: Service,
    client: Any,
    keys: Any,
    jobs: list[str],
    figures: CapacityFigures,
    floor: float,
    body: dict[str, Any] | None,
) -> dict[str, Any]:
    """Ask for one more stream (a feed nobody sends: admitted, it is deleted at once); then the
    running streams' total over the next half window, against the measured one."""
    from pipeline.bench.feeds import free_udp_ports

    url = f"udp://127.0.0.1:{free_udp_ports(1)[0]}"
    extra = f"{jobs[0]}-one-more"
    request = {"source": url, "tracks": [{"id": 1, "points": [[10, 10]]}], "job_id": extra, **(body or {})}
    with service.api() as api:
        r = api.post("/streams", json=request)
        if r.status_code == 201:
            api.delete(f"/streams/{extra}")
    after = max(2.0, figures.seconds / 2)
    t0 = time.time()
    time.sleep(after + 5.0)  # frames captured in the window finish publishing
    captured = 0
    for job in jobs:
        entries: Any = client.xrange(keys.masks(job))
        captured += sum(1 for _, f in entries if t0 <= float(f["capture_time"]) < t0 + after)
    share = figures.total / (figures.streams + 1)
    return {
        "status": r.status_code,
        "detail": r.json().get("detail") if r.status_code != 201 else None,
        "share_if_admitted": round(share, 3),
        "floor": floor,
        "refused_as_due": (r.status_code == 429) == (share < floor),
        "total_after": round(captured / after, 3),
    }


def _wait_ended(client: Any, keys: Any, jobs: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [client.hget(keys.job(j), "status") for j in jobs]
        if all(s not in ("queued", "running") for s in states):
            return
        time.sleep(0.5)


def run_capacity(
    counts: list[int],
    fps: float,
    seconds: float,
    warmup: float,
    image_size: int | str,
    target_fps: float = 2.0,
    admission_floor: float | None = None,
    encoder_cpus: int = 1,
) -> list[Result]:
    """Measure each stream count in turn on one service; the results against the targets
    (``image_size`` ``"auto"``: adaptive streams with ``target_fps``, see the module docstring)."""
    from pipeline.bench.feeds import TsClip
    from pipeline.bench.system import warmup as compile_model
    from pipeline.streams import EmbeddedRedis, Keys, connect

    auto = image_size == "auto"
    # The service's model compiled first (as a user runs `samstream warmup`; cached after): a
    # compile in the background takes a core for minutes, and the streams would be measured
    # beside it.
    sizes = AUTO_SIZES if auto else (int(image_size),)
    print(f"bench: capacity: the model compiled for {', '.join(map(str, sizes))} px (once; cached) …",
          file=sys.stderr, flush=True)  # fmt: skip
    warmup_s = sum(compile_model(["--weights", "random", "--image-size", str(size)]) for size in sizes)
    clip = TsClip.encode(frames=max(50, int(fps * 30)), fps=fps)
    runs = []
    with tempfile.TemporaryDirectory(prefix="samstream-capacity-") as tmp:
        extra: tuple[str, ...] = ("--encoder-cpus", str(encoder_cpus))  # after the bench's 1: it wins
        if auto:
            extra += ("--image-sizes", ",".join(map(str, AUTO_SIZES)))
        if admission_floor is not None:
            extra += ("--admission", "capacity", "--min-stream-fps", f"{admission_floor:g}")
        service = Service(
            Path(tmp), AUTO_SIZES[-1] if auto else int(image_size), weights="random", extra=extra
        )
        body = {"image_size": "auto", "target_fps": target_fps} if auto else None
        try:
            service.wait_ready()
            with EmbeddedRedis(Path(tmp) / "redis") as server:
                client = connect(server.url)
                for k in counts:
                    print(f"bench: capacity: {k} streams at {fps:g} fps …", file=sys.stderr, flush=True)
                    runs.append(
                        measure(service, k, clip, seconds, warmup, client, Keys(), body, admission_floor)
                    )
                client.close()
        finally:
            service.stop()
    return capacity_results(runs, fps, target_fps if auto else None, warmup_s)


def capacity_results(
    runs: list[CapacityFigures], fps: float, target_fps: float | None = None, warmup_s: float | None = None
) -> list[Result]:
    """The table rows: each K against K = 1 (or the smallest K measured) of the same run; with a
    ``target_fps`` (adaptive streams), each K's slowest stream against it too; ``warmup_s``: the
    seconds the model's compile took first (its packages cached: seconds to load them)."""
    if not runs:
        return []
    base = runs[0]
    interval = statistics.median(base.gaps) if base.gaps else float("inf")
    out: list[Result] = [
        Result(
            "capacity",
            f"K={base.streams}: service interval p50",
            interval,
            None,
            "s",
            None,
            detail={"fps_per_stream": fps, "total_fps": base.total, "warmup_s": warmup_s},
        )
    ]
    for r in runs:
        name = f"K={r.streams}"
        share = r.total / r.streams if r.streams else 0.0
        low = min(r.rates) if r.rates else 0.0
        detail = {
            "streams": r.streams,
            "seconds": r.seconds,
            "rates": [round(v, 3) for v in r.rates],
            **r.detail,
        }
        out += [
            Result("capacity", f"{name}: total published", r.total, base.total, "frames/s",
                   r.total / base.total if base.total else 0.0, "higher", 0.9, detail=detail),
            Result("capacity", f"{name}: slowest stream / fair share", low, share, "frames/s",
                   low / share if share else 0.0, "higher", 0.8),
            Result("capacity", f"{name}: latency p50", r.quantile(0.5), None, "s", None, "lower"),
            Result("capacity", f"{name}: latency p99 / K=1 interval", r.quantile(0.99), interval, "s",
                   r.quantile(0.99) / interval if interval else float("inf"), "lower", 2.0),
            Result("capacity", f"{name}: jobs failed", r.failed, None, "jobs", None, "lower", 0.0),
        ]  # fmt: skip
        if r.admission is not None:
            a = r.admission
            out += [
                Result("capacity", f"{name}: one more stream refused iff its share < floor",
                       float(a["refused_as_due"]), None, "yes", None, "higher", 1.0, detail=a),
                Result("capacity", f"{name}: running streams' total after / before", a["total_after"],
                       r.total, "frames/s", a["total_after"] / r.total if r.total else 0.0, "higher", 0.9),
            ]  # fmt: skip
        if target_fps is not None:
            sizes = {"entries_by_size": {str(k): v for k, v in sorted(r.sizes.items())}, "events": r.changes}
            out.append(
                Result("capacity", f"{name}: slowest stream / target (auto)", low, target_fps, "frames/s",
                       low / target_fps, "higher", 0.9, detail=sizes)
            )  # fmt: skip
    return out
