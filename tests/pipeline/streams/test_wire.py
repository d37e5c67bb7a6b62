"""Key names and the wire format, without a server."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipeline.errors import InvalidInputError
from pipeline.frames import FrameResult, TrackMask
from pipeline.streams import (
    WIRE_VERSION,
    Keys,
    WireFormatError,
    decode_entry,
    decode_event,
    decode_mask_entry,
    encode_entry,
    encode_event,
    entry_id,
    frame_of,
)
from tests.pipeline.streams.conftest import make_result, rle_of


def test_keys_layout() -> None:
    keys = Keys()
    assert keys.job("a-1") == "samstream:job:a-1"
    assert keys.masks("a-1") == "samstream:job:a-1:masks"
    assert keys.events("a-1") == "samstream:job:a-1:events"
    assert keys.control("a-1") == "samstream:job:a-1:control"
    assert keys.jobs_index() == "samstream:jobs"
    assert Keys("x:").masks("J_2.b") == "x:job:J_2.b:masks"


@pytest.mark.parametrize("bad", ["", "a:b", "a b", "é", "x" * 129, None, 5])
def test_keys_reject_bad_job_ids(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="job id"):
        Keys().job(bad)  # type: ignore[arg-type]


def test_entry_id_is_frame_dash_one() -> None:
    assert entry_id(0) == "0-1"  # above 0-0, which Redis refuses
    assert entry_id(41) == "41-1"
    assert frame_of("41-1") == frame_of(b"41-1") == 41
    for bad in (-1, 1.0, True):
        with pytest.raises(WireFormatError):
            entry_id(bad)  # type: ignore[arg-type]


def test_round_trip_with_notice_and_bytes_fields() -> None:
    result = make_result(7)
    fields = encode_entry(result, "random weights: masks are meaningless", publish_time=1.7e9 + 1)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    assert fields["v"] == str(WIRE_VERSION) == "1"
    assert fields["frame"] == "7"
    as_bytes = {k.encode(): v.encode() for k, v in fields.items()}  # redis-py without decode_responses
    for f in (fields, as_bytes):
        entry = decode_mask_entry(b"7-1", f)
        assert entry.result == result
        assert entry.entry_id == "7-1"
        assert entry.notice == "random weights: masks are meaningless"
        assert entry.publish_time == 1.7e9 + 1
    assert decode_entry("7-1", fields) == result


def test_round_trip_edge_values() -> None:
    empty = rle_of(np.zeros((24, 32), bool))
    lost = TrackMask(3, "lost", 0.0, None, {"size": empty["size"], "counts": empty["counts"].decode()})
    result = FrameResult(0, None, 12.25, 32, 24, (lost,))
    fields = encode_entry(result)
    assert fields["pts"] == ""
    assert "notice" not in fields
    entry = decode_mask_entry("0-1", fields)
    assert entry.result == result
    assert entry.notice is None
    assert decode_entry("0-1", encode_entry(FrameResult(3, 0.1, 1.0, 8, 8))).tracks == ()


def test_an_entry_says_the_encoder_size_its_masks_were_made_at() -> None:
    result = replace(make_result(4), image_size=512)
    fields = encode_entry(result)
    assert fields["image_size"] == "512" and fields["v"] == "1"  # an optional field: same version
    assert decode_entry("4-1", fields) == result
    # an entry written before the field existed says nothing of its size
    old = {k: v for k, v in fields.items() if k != "image_size"}
    assert decode_entry("4-1", old).image_size is None
    assert "image_size" not in encode_entry(make_result(4))


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools vs numpy 2
def test_tracks_field_layout_and_pycocotools_decodes_it() -> None:
    mask = np.zeros((24, 32), bool)
    mask[3:9, 10:20] = True
    raw = rle_of(mask)  # counts as bytes, straight from pycocotools
    result = FrameResult(2, 0.08, 1.0, 32, 24, (TrackMask(1, "active", 0.875, (10, 3, 20, 9), raw),))
    tracks = json.loads(encode_entry(result)["tracks"])
    assert tracks == [
        {
            "id": 1,
            "state": "active",
            "score": 0.875,
            "bbox": [10, 3, 20, 9],
            "rle": {"size": [24, 32], "counts": raw["counts"].decode()},
        }
    ]
    rle = decode_entry("2-1", encode_entry(result)).tracks[0].rle
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_timings_stay_local() -> None:
    result = replace(make_result(1), timings={"encode": 0.01})
    assert decode_entry("1-1", encode_entry(result)) == replace(result, timings={})


@pytest.mark.parametrize(
    ("track", "match"),
    [
        (TrackMask(1, "gone", 0.5, None, {"size": [24, 32], "counts": "x"}), "state"),
        (TrackMask(1, "active", float("nan"), None, {"size": [24, 32], "counts": "x"}), "finite"),
        (TrackMask(1, "active", 0.5, None, {"size": [32, 24], "counts": "x"}), r"\[24, 32\]"),
        (TrackMask(1, "active", 0.5, None, {"size": [24, 32], "counts": [3, 4]}), "compressed"),
    ],
)
def test_encode_rejects_what_the_format_cannot_carry(track: TrackMask, match: str) -> None:
    with pytest.raises(WireFormatError, match=match):
        encode_entry(FrameResult(0, None, 0.0, 32, 24, (track,)))


def test_decode_rejects_newer_versions_and_missing_fields() -> None:
    fields = encode_entry(make_result(1))
    with pytest.raises(WireFormatError, match="version 2"):
        decode_entry("1-1", {**fields, "v": "2"})
    del fields["capture_time"]
    with pytest.raises(WireFormatError, match="capture_time"):
        decode_entry("1-1", fields)


def test_event_round_trip() -> None:
    fields = encode_event(
        "track_lost", time_s=5.5, frame=12, track=2, detail="iou below 0.5", data={"iou": 0.25}
    )
    event = decode_event(b"99-0", {k.encode(): v.encode() for k, v in fields.items()})
    assert (event.entry_id, event.type, event.time, event.frame, event.track) == (
        "99-0",
        "track_lost",
        5.5,
        12,
        2,
    )
    assert (event.detail, event.data) == ("iou below 0.5", {"iou": 0.25})
    bare = decode_event("1-0", encode_event("reconnect", time_s=1.0))
    assert (bare.frame, bare.track, bare.detail, bare.data) == (None, None, None, {})


def test_a_searching_track_travels_as_its_own_state() -> None:
    empty = {"size": [24, 32], "counts": "Ph0"}  # 768 pixels, none of them the object
    tracks = (
        TrackMask(1, "searching", 0.0, None, empty),
        TrackMask(2, "lost", 0.0, None, empty),
    )
    result = FrameResult(3, 0.12, 1.7e9, 32, 24, tracks)
    fields = encode_entry(result)
    assert [t["state"] for t in json.loads(fields["tracks"])] == ["searching", "lost"]
    assert decode_entry("3-1", fields) == result
    # A state a reader does not know (a later version's) is read as it is, not refused.
    newer = json.loads(fields["tracks"])
    newer[0]["state"] = "occluded"
    assert decode_entry("3-1", {**fields, "tracks": json.dumps(newer)}).tracks[0].state == "occluded"
