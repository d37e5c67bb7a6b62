"""The CLI's side of the REST API: ``samstream submit``, and ``status|watch|track|cancel --api``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from pipeline.api.client import ApiClient
from pipeline.errors import InvalidInputError


def client(args: argparse.Namespace) -> ApiClient:
    if not args.api:
        raise InvalidInputError("give the service's API: --api URL (or set SAMSTREAM_API_URL)")
    return ApiClient(args.api, args.token or os.environ.get("SAMSTREAM_API_TOKEN"))


def job_body(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """The API request body of ``submit``'s options, and whether it is a live stream."""
    from pipeline.cli.run import build_spec

    # The same checks as `samstream run`, before anything is sent; the size is sent only if given.
    size = _size(args.image_size, args.target_fps)
    spec = build_spec(args, size if isinstance(size, int) else 1024, "official")
    if size == "auto" and not spec.live:
        raise InvalidInputError("--image-size auto is for live streams (give --live, or a live URL)")
    body: dict[str, Any] = {
        "source": spec.source,
        "tracks": [t.to_dict() for t in spec.tracks],
        "stride": spec.stride,
        "give_up_s": spec.give_up_s,
    }
    if args.job_id:
        body["job_id"] = args.job_id
    if size is not None:
        body["image_size"] = size
    if args.target_fps is not None:
        body["target_fps"] = args.target_fps
    if spec.maxlen is not None:
        body["maxlen"] = spec.maxlen
    if spec.tracking:
        body["tracking"] = spec.tracking
    if spec.discover is not None:
        body["discover"] = spec.discover.to_dict()
    if args.keep is not None:
        from pipeline.streams.retention import parse_keep

        keep_s = parse_keep(args.keep)
        if keep_s is None:
            raise InvalidInputError(
                "--keep never: a service keeps a job's data at most its own maximum; give a duration"
            )
        body["keep_s"] = keep_s
    return body, spec.live


def _size(text: str | None, target_fps: float | None) -> int | str | None:
    """``--image-size``: a size, ``auto`` or not given (the service's); ``--target-fps`` goes with auto."""
    if target_fps is not None and (text != "auto" or not target_fps > 0):
        raise InvalidInputError(
            f"--target-fps goes with --image-size auto and must be > 0, got {target_fps:g}"
        )
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise InvalidInputError(f"--image-size must be a size like 512, or auto, got {text!r}") from None


def submit(args: argparse.Namespace) -> int:
    body, live = job_body(args)
    with client(args) as api:
        job = api.submit(body, live)
        print(f"{job['kind']} {job['id']} {job['status']}: masks in Redis stream {job['masks_stream']}")
        if args.wait:
            return _wait(api, job["id"])
    return 0


def _wait(api: ApiClient, job_id: str, poll_s: float = 1.0) -> int:
    shown = -1
    while True:
        job = api.get(job_id)
        if job["frames_done"] != shown:
            total = job["frames_total"] if job["frames_total"] is not None else "?"
            print(f"{job_id}: {job['status']} {job['frames_done']}/{total} frames", file=sys.stderr)
            shown = job["frames_done"]
        if job["status"] in ("succeeded", "failed", "cancelled"):
            print(f"{job['kind']} {job_id} {job['status']}" + (f": {job['error']}" if job["error"] else ""))
            return 0 if job["status"] == "succeeded" else 1
        time.sleep(poll_s)


def status(args: argparse.Namespace) -> int:
    with client(args) as api:
        job = api.get(args.job)
    if args.json:
        print(json.dumps(job))
        return 0
    total = "?" if job["frames_total"] is None else job["frames_total"]
    print(f"{job['kind']:<9} {job['id']}")
    print(f"status    {job['status']}")
    print(f"source    {job['source']}")
    print(f"tracks    {len(job['tracks'])}")
    print(f"frames    {job['frames_done']} / {total} (last published: {job['last_frame']})")
    print(f"masks     {job['masks_stream']}")
    if job["error"]:
        print(f"error     {job['error']}")
    return 0


def watch(args: argparse.Namespace) -> int:
    from pipeline.cli.jobs import _line
    from pipeline.frames import FrameResult, TrackMask

    with client(args) as api:
        for e in api.masks(args.job, args.follow):
            if args.json:
                print(json.dumps(e))
            else:
                tracks = tuple(
                    TrackMask(t["track_id"], t["state"], t["score"], t["bbox"], t["rle"]) for t in e["tracks"]
                )
                print(
                    _line(
                        FrameResult(
                            e["frame"], e["pts"], e["capture_time"] or 0.0, e["width"], e["height"], tracks
                        )
                    )
                )
            sys.stdout.flush()
        job = api.get(args.job)
    print(
        f"{job['kind']} {job['id']} {job['status']}: {job['frames_done']} frames"
        + (f" ({job['error']})" if job["error"] else ""),
        file=sys.stderr,
    )
    return 0


def track(args: argparse.Namespace, prompt: Any) -> int:
    with client(args) as api:
        api.track(args.job, args.action, args.track, None if prompt is None else prompt.to_dict())
    print(f"sent: {args.action} track {args.track} to {args.job} (applies from its next frame)")
    return 0


def cancel(args: argparse.Namespace) -> int:
    with client(args) as api:
        job = api.cancel(args.job)
    print(
        f"{job['kind']} {job['id']}: {job['status']}"
        + (" (stops before its next frame)" if job["status"] == "running" else "")
    )
    return 0


def delete(args: argparse.Namespace) -> int:
    with client(args) as api:
        kind = api.delete_data(args.job)
    print(f"deleted: every key of {kind[:-1]} {args.job}")
    return 0
