"""The preview stream: written by the publish script with the frame's new masks entry, read back."""

from __future__ import annotations

import io

import redis
from PIL import Image

from pipeline.ledger import JobStore
from pipeline.ledger.sink import RedisSink
from pipeline.streams import Keys
from pipeline.streams.previews import PreviewReader
from tests.pipeline.streams.conftest import make_result


def test_a_preview_goes_in_with_its_frames_entry_and_only_then(redis_client: redis.Redis, keys: Keys) -> None:
    JobStore(redis_client, keys).create("job", {"source": "clip.mp4"})
    sink = RedisSink(redis_client, keys, "job", preview_keep=3)
    assert sink.publish_many([(make_result(i, preview=i != 1), None) for i in range(3)]) == [True] * 3
    reader = PreviewReader(redis_client, keys, "job")
    assert [p.frame for p in reader.after(None, 10)] == [0, 2]  # frame 1 had none
    # A replayed frame (refused by the masks stream) adds no preview either.
    assert sink.publish(make_result(2, preview=True), None) is False
    latest = reader.latest()
    assert latest is not None and latest.entry_id == "2-1" and latest.frame == 2
    assert latest.capture_time == make_result(2).capture_time and latest.pts == 2 / 25
    picture = Image.open(io.BytesIO(latest.jpeg))
    assert picture.format == "JPEG" and picture.size == (latest.width, latest.height) == (32, 24)
    assert reader.frame(0) is not None and reader.frame(1) is None
    assert [p.frame for p in reader.after("0-1", 10)] == [2]


def test_the_preview_stream_is_trimmed_to_about_its_keep(redis_client: redis.Redis, keys: Keys) -> None:
    JobStore(redis_client, keys).create("job", {"source": "clip.mp4"})
    sink = RedisSink(redis_client, keys, "job", preview_keep=5)
    sink.publish_many([(make_result(i, preview=True), None) for i in range(400)])
    kept = int(redis_client.xlen(keys.preview("job")))  # type: ignore[arg-type]
    assert 5 <= kept < 200  # MAXLEN ~ trims whole macro-nodes (100 entries)
    assert int(redis_client.xlen(keys.masks("job"))) == 400  # type: ignore[arg-type]
