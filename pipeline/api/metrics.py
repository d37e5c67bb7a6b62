"""The service's own metrics (the API process's ``--metrics-port``): jobs by status, read from Redis
at each scrape. Per-stage latencies of a cluster come from Ray's metrics agents (``ray_samstream_*``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pipeline.ledger import JobStatus, JobStore

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer


class JobsCollector:
    """``samstream_jobs{status}`` and ``samstream_active_jobs``, counted in Redis when scraped."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        counts = dict.fromkeys(JobStatus, 0)
        with contextlib.suppress(Exception):  # Redis away: zeros rather than a failed scrape
            for info in self.store.list():
                counts[info.status] += 1
        by_status = GaugeMetricFamily("samstream_jobs", "Jobs by status", labels=["status"])
        for status, n in counts.items():
            by_status.add_metric([status.value], n)
        yield by_status
        active = GaugeMetricFamily("samstream_active_jobs", "Jobs running")
        active.add_metric([], counts[JobStatus.RUNNING])
        yield active


def serve_metrics(store: JobStore, port: int, addr: str) -> WSGIServer:
    """Serve ``/metrics`` on ``addr`` (``serve``'s ``--metrics-host``, else its ``--host``: where
    Prometheus scrapes it from another pod, that is ``0.0.0.0`` there), in a daemon thread.

    Returns:
        The server (``shutdown()`` stops it).
    """
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(JobsCollector(store))
    server, _ = start_http_server(port, addr=addr, registry=registry)
    return server
