"""The metrics are declared once: local mode's registry serves every series under its declared name."""

from __future__ import annotations

from prometheus_client import generate_latest

from pipeline.metrics import SERIES, STAGES, PrometheusMetrics


def test_the_registry_holds_every_declared_series_and_records_into_it() -> None:
    m = PrometheusMetrics()
    m.observe_stage("encode", 0.2)
    m.observe_end_to_end(0.3)
    m.frame_published()
    m.frame_failed(2)
    m.frames_dropped(3)
    m.encoder_batch(4)
    m.set_queue_depth("frames_in_flight", 5)
    m.set_active(1, 6)
    m.stream_rates("cam", 10.0, 4.0, True)
    m.encoder_capacity(512, 1.75)
    text = generate_latest(m.registry).decode()
    for series in SERIES.values():
        assert f"# HELP {series.name}" in text, series.name
    assert 'samstream_stage_seconds_count{stage="encode"} 1.0' in text
    assert all(f'samstream_stage_seconds_count{{stage="{s}"}}' in text for s in STAGES)  # 0 until seen
    assert "samstream_frames_failed_total 2.0" in text
    assert 'samstream_stream_capacity_bound{stream="cam"} 1.0' in text
    assert 'samstream_encoder_capacity_fps{size="512"} 1.75' in text
    m.stream_ended("cam")
    assert 'stream="cam"' not in generate_latest(m.registry).decode()
