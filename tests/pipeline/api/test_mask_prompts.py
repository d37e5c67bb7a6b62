"""Mask prompts through the REST API: stored compact with the job, sent on the control stream, 422s."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from pycocotools import mask as coco

from pipeline.ledger import JobStore
from pipeline.masks.mask_prompt import MaskPrompt
from pipeline.spec import JobSpec
from pipeline.streams import Keys
from pipeline.streams.control import ControlReader
from tests.pipeline.api.conftest import RecordingBackend

SIZE = (240, 320)


def _mask() -> np.ndarray:
    m = np.zeros(SIZE, bool)
    m[40:100, 60:150] = True
    m[70:120, 120:130] = True
    return m


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def _runs(mask: np.ndarray) -> list[int]:
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    counts = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    return [0, *counts] if flat[0] else counts


def test_a_job_with_a_mask_prompt_stores_it_as_a_compressed_rle(
    api: TestClient, backend: RecordingBackend, redis_client: redis.Redis, prefix: str
) -> None:
    # Uncompressed counts (a list of runs) are accepted, and stored as pycocotools' string.
    body = {
        "source": "https://videos.example/clip.mp4",
        "tracks": [
            {"id": 1, "mask": {"size": [240, 320], "counts": _runs(_mask())}},
            {"id": 2, "mask": _rle(~_mask()), "points": [[300, 230]]},
        ],
    }
    r = api.post("/jobs", json=body)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["tracks"][0]["mask"] == _rle(_mask())
    stored = JobStore(redis_client, Keys(prefix)).get(job["id"]).spec
    assert [t["mask"] for t in stored["tracks"]] == [_rle(_mask()), _rle(~_mask())]
    spec = JobSpec.from_dict(stored)  # what the job runs (and resumes) from
    assert spec.tracks[0].prompt.mask == MaskPrompt.from_array(_mask())
    assert spec.tracks[1].prompt.points == ((300.0, 230.0),)
    assert backend.submitted == [job["id"]]


@pytest.mark.parametrize(
    ("mask", "loc", "msg"),
    [
        ({"size": [240, 320], "counts": "0"}, [], "bad mask RLE: RLE run lengths sum to 0, expected"),
        ({"size": [240, 320], "counts": [76800]}, [], "the 320x240 mask is empty"),
        ({"size": [240, 320], "counts": "ab{"}, [], "characters '0' to 'o'"),
        ({"size": [240, 320], "counts": [-1, 76801]}, [], "non-negative"),
        ({"size": [240, 320, 3], "counts": "0"}, ["mask", "size"], "at most 2 items"),
        ({"size": [240, 320]}, ["mask", "counts"], "Field required"),
        ({"size": [240, 320], "counts": {"a": 1}}, ["mask", "counts", "str"], "valid string"),
        ({"size": [240, 320], "counts": "0", "bbox": [0, 0, 1, 1]}, ["mask", "bbox"], "Extra inputs"),
    ],
)
def test_bad_masks_are_422_naming_the_track(
    api: TestClient, backend: RecordingBackend, mask: dict[str, Any], loc: list[str], msg: str
) -> None:
    body = {"source": "https://videos.example/clip.mp4", "tracks": [{"id": 1, "mask": mask}]}
    r = api.post("/jobs", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "tracks", 0, *loc]
    assert msg in detail["msg"]
    assert backend.submitted == []


def test_a_stream_track_is_added_and_re_prompted_from_a_mask(
    api: TestClient, redis_client: redis.Redis, prefix: str
) -> None:
    stream = api.post(
        "/streams",
        json={"source": "rtsp://cam.example:8554/live", "tracks": [{"id": 1, "box": [0, 0, 50, 40]}]},
    ).json()
    control = ControlReader(redis_client, Keys(prefix), stream["id"], everything=True)
    url = f"/streams/{stream['id']}/tracks"
    assert api.post(url, json={"id": 2, "mask": _rle(_mask())}).status_code == 202
    r = api.post(
        url, json={"id": 1, "mask": {"size": [240, 320], "counts": _runs(~_mask())}, "action": "reprompt"}
    )
    assert r.status_code == 202, r.text
    bad = api.post(url, json={"id": 3, "mask": {"size": [240, 320], "counts": [76800]}})
    assert bad.status_code == 422 and "mask is empty" in bad.json()["detail"][0]["msg"]
    commands = [c for c in control.poll() if not isinstance(c, Exception)]
    assert [(c.cmd, c.track) for c in commands] == [("add", 2), ("reprompt", 1)]
    assert commands[0].prompt is not None and commands[0].prompt.mask == MaskPrompt.from_array(_mask())
    assert commands[1].prompt is not None and commands[1].prompt.mask == MaskPrompt.from_array(~_mask())
    # On the wire, the compact form: the compressed string, not the runs.
    _, fields = redis_client.xrange(Keys(prefix).control(stream["id"]))[-1]  # type: ignore[index]
    assert json.loads(fields["prompt"])["mask"] == _rle(~_mask())
