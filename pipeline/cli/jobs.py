"""``samstream status | watch | render | track | cancel | delete``: a job's results in Redis."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.cli.options import results_redis
from pipeline.errors import InvalidInputError, JobError
from pipeline.frames import FrameResult
from pipeline.ledger import JobInfo, JobStore
from pipeline.masks.rle import rle_area
from pipeline.streams import Keys, MaskReader


@contextlib.contextmanager
def _store(args: argparse.Namespace) -> Iterator[tuple[JobStore, MaskReader, JobInfo]]:
    with contextlib.ExitStack() as stack:
        client = results_redis(stack, args)
        keys = Keys(args.prefix)
        store = JobStore(client, keys)
        info = store.get(args.job)
        yield store, MaskReader(client, keys, args.job), info


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _remote(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "api", None))


def status(args: argparse.Namespace) -> int:
    if _remote(args):
        from pipeline.cli import remote

        return remote.status(args)
    with _store(args) as (_, reader, info):
        if args.json:
            print(
                json.dumps(
                    {
                        **info.__dict__,
                        "status": info.status.value,
                        "entries": reader.count(),
                        "expires": info.expires,
                    },
                    default=str,
                )
            )
            return 0
        total = "?" if info.frames_total is None else str(info.frames_total)
        print(f"job       {info.job_id}")
        print(f"status    {info.status.value}")
        print(f"source    {info.spec.get('source')}")
        print(f"tracks    {len(info.spec.get('tracks', []))}")
        print(f"frames    {info.frames_done} / {total} (last published: {info.last_frame})")
        print(
            f"created   {_when(info.created)}; started {_when(info.started)}; finished {_when(info.finished)}"
        )
        if info.error:
            print(f"error     {info.error}")
        if info.expires is not None:
            print(f"expires   {_when(info.expires)} (its data leaves Redis; samstream delete: now)")
    return 0


def _line(result: FrameResult) -> str:
    parts = [f"frame {result.frame_index}"]
    if result.pts is not None:
        parts.append(f"t={result.pts:.3f}s")
    for t in result.tracks:
        parts.append(
            f"track {t.track_id} {t.state} score={t.score:.3f} area={rle_area(t.rle)} bbox={list(t.bbox or [])}"
        )
    return "  ".join(parts)


def watch(args: argparse.Namespace) -> int:
    if _remote(args):
        from pipeline.cli import remote

        return remote.watch(args)
    with _store(args) as (store, reader, _):
        entries = reader.follow() if args.follow else reader.read()
        for entry_id, result in entries:
            if args.json:
                print(
                    json.dumps(
                        {
                            "id": entry_id,
                            "frame": result.frame_index,
                            "pts": result.pts,
                            "capture_time": result.capture_time,
                            "tracks": [t.__dict__ for t in result.tracks],
                        }
                    )
                )
            else:
                print(_line(result))
            sys.stdout.flush()
        final = store.get(args.job)
        print(
            f"job {final.job_id} {final.status.value}: {final.frames_done} frames"
            + (f" ({final.error})" if final.error else ""),
            file=sys.stderr,
        )
    return 0


def render(args: argparse.Namespace) -> int:
    from pipeline.masks.render import render_video

    out = Path(args.out)
    with _store(args) as (store, reader, info):
        results = (r for _, r in reader.read())
        if info.spec.get("live") and not args.source:
            return _render_live(store, info, results, out)
        source = args.source or info.spec.get("source")
        if not source:
            raise JobError(f"job {info.job_id} has no source in its spec; give --source")
        count = render_video(str(source), results, out, stride=int(info.spec.get("stride", 1)))
    print(f"wrote {out} ({count} frames, masks of job {info.job_id})")
    return 0


def export(args: argparse.Namespace) -> int:
    """A job's masks as DAVIS palette PNGs: ``DIR/FRAME.png``, pixel value k for track k."""
    import numpy as np

    from pipeline.evaluation.davis import MAX_OBJECTS, write_labels
    from pipeline.masks.rle import decode_rle

    out = Path(args.davis)
    count = 0
    with _store(args) as (_, reader, info):
        for _, result in reader.read():
            labels = np.zeros((result.height, result.width), np.uint8)
            for t in result.tracks:
                if t.track_id > MAX_OBJECTS:
                    raise InvalidInputError(
                        f"DAVIS masks hold object ids 1 to {MAX_OBJECTS}; job {info.job_id} has track {t.track_id}"
                    )
                if t.state == "active":
                    labels[decode_rle(t.rle)] = t.track_id
            write_labels(labels, out / f"{result.frame_index:05d}.png")
            count += 1
    print(f"wrote {count} DAVIS masks of job {info.job_id} to {out}")
    return 0


def _render_live(store: JobStore, info: JobInfo, results: Iterator[FrameResult], out: Path) -> int:
    """A live job's overlay from its previews: its frames are not kept, the newest previews are."""
    from pipeline.masks.render import render_previews
    from pipeline.streams.previews import PreviewReader

    previews = PreviewReader(store.client, store.keys, info.job_id).after(None, 1_000_000)
    if not previews:
        raise JobError(
            f"job {info.job_id} reads a live feed, whose frames are not kept, and has no previews to "
            "render (it ran with --no-preview, or none was published yet)"
        )
    count, (width, height) = render_previews(previews, results, out)
    print(
        f"wrote {out} ({count} frames of live job {info.job_id}, from its previews at preview resolution "
        f"{width}x{height}: frames {previews[0].frame}-{previews[-1].frame}, the ones Redis keeps)"
    )
    return 0


def _send(args: argparse.Namespace, command: Any) -> None:
    from pipeline.streams.control import send

    with _store(args) as (store, _, info):
        if info.status.terminal:
            raise JobError(f"job {info.job_id} is {info.status.value}: nothing to control")
        send(store.client, Keys(args.prefix), info.job_id, command)


def track(args: argparse.Namespace) -> int:
    from pipeline.masks.imageio import read_mask
    from pipeline.masks.mask_prompt import MaskPrompt
    from pipeline.prompts import parse_box, parse_point, single_prompt
    from pipeline.streams.control import Command

    prompt = None
    if args.action != "remove":
        points = [parse_point(p) for p in args.point]
        negatives = [parse_point(p) for p in args.neg]
        mask = MaskPrompt.from_array(read_mask(args.mask)) if args.mask else None
        prompt = single_prompt(points, negatives, parse_box(args.box) if args.box else None, mask)
    if _remote(args):
        from pipeline.cli import remote

        return remote.track(args, prompt)
    _send(args, Command(args.action, args.track, prompt))
    print(f"sent: {args.action} track {args.track} to job {args.job} (applies from its next frame)")
    return 0


def cancel(args: argparse.Namespace) -> int:
    """Through the API when given one; else a ``stop`` command in Redis (the job marks itself)."""
    if _remote(args):
        from pipeline.cli import remote

        return remote.cancel(args)
    from pipeline.streams.control import Command

    _send(args, Command("stop"))
    print(f"sent: stop to job {args.job}")
    return 0


def delete(args: argparse.Namespace) -> int:
    """Remove every key of a job that has ended (through the API when given one)."""
    if _remote(args):
        from pipeline.cli import remote

        return remote.delete(args)
    with _store(args) as (store, _, info):
        try:
            store.delete(info.job_id)
        except JobError:
            raise JobError(
                f"job {info.job_id} is {store.get(info.job_id).status.value}: cancel it first "
                f"(samstream cancel {info.job_id}), then delete it"
            ) from None
    print(f"deleted: every key of job {info.job_id}")
    return 0
