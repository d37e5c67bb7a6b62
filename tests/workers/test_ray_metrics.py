"""On a cluster the stage metrics leave through Ray's metrics agent: check the names it serves."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_recorded_in_an_actor_are_served_with_the_ray_prefix() -> None:
    import ray

    port = _free_port()
    ray.init(
        address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR", _metrics_export_port=port
    )
    try:

        @ray.remote
        class Worker:
            def record(self) -> None:
                from workers.metrics import RayMetrics

                m = RayMetrics()
                for stage in ("decode", "encode", "publish"):
                    m.observe_stage(stage, 0.02)
                m.observe_end_to_end(0.1)
                m.frame_published()
                m.frames_dropped(2)
                m.encoder_batch(4)
                m.set_queue_depth("frames_in_flight", 1)
                m.set_active(1, 3)

        ray.get(Worker.remote().record.remote())  # type: ignore[attr-defined]
        wanted = {
            'ray_samstream_stage_seconds_bucket{le="0.025"',
            "ray_samstream_end_to_end_seconds_count",
            "ray_samstream_frames_published_total",
            "ray_samstream_frames_dropped_total",
            "ray_samstream_encoder_batch_size_bucket",
            "ray_samstream_queue_depth",
            "ray_samstream_active_tracks",
        }
        body = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                body = ""
            if all(
                any(line.startswith(w) for line in body.splitlines()) for w in wanted if "{" not in w
            ) and ('stage="encode"' in body):
                break
            time.sleep(1)
        missing = [w.split("{")[0] for w in wanted if w.split("{")[0] not in body]
        assert not missing, body[-3000:]
        assert 'stage="encode"' in body and 'stage="publish"' in body
    finally:
        ray.shutdown()
