"""Entry point of the ``samstream`` command.

Only argparse and the standard library are imported here: ``samstream --help`` must be instant.
Each sub-command names a handler ``module:function`` that is imported when the command runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from pipeline import __version__
from pipeline.errors import SamstreamError


def _add_model_options(p: argparse.ArgumentParser, precision: str = "auto") -> None:
    g = p.add_argument_group("model")
    w = g.add_mutually_exclusive_group()
    w.add_argument(
        "--checkpoint", metavar="PATH", help="MobileSAM checkpoint (official layout, e.g. mobile_sam.pt)"
    )
    w.add_argument(
        "--weights",
        choices=["official", "random", "null", "reference"],
        default="official",
        help="'official': --checkpoint, else the cached release (downloaded once); "
        "'random': seeded random weights, a smoke test; 'reference': the reference segmenter, "
        "for flat-coloured test scenes only (default: official)",
    )
    g.add_argument(
        "--image-size", type=int, default=1024, metavar="N", help="encoder input size (default 1024)"
    )
    g.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: CUDA if present"
    )
    g.add_argument(
        "--compile",
        choices=["auto", "compiled", "eager"],
        default="auto",
        help="auto: start at once, compile in the background when it pays off (cached on disk); "
        "compiled: compile first and wait; eager: never (default auto)",
    )
    g.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default=precision,
        help="number format of encoder and decoder: auto = bf16 on CPUs with bf16 matrix units, "
        f"fp16 on GPUs, fp32 elsewhere; fp32 = the official predictor's results (default {precision})",
    )


def _add_tracking_options(p: argparse.ArgumentParser) -> None:
    """How tracks follow and find their objects (``run``, ``submit``, ``eval``)."""
    tr = p.add_argument_group("tracking")
    tr.add_argument(
        "--min-score", type=float, metavar="S", help="predicted IoU below which a mask is not taken (0.5)"
    )
    tr.add_argument(
        "--lost-after",
        type=int,
        metavar="N",
        help="report a track lost after N frames in a row without its object; it searches on (5)",
    )
    tr.add_argument(
        "--box-margin", type=float, metavar="F", help="grow the predicted box by this fraction (0.1)"
    )
    tr.add_argument(
        "--search-s",
        type=float,
        metavar="S",
        help="a track gives up after S seconds (frame time) without its object (0: never; default)",
    )
    tr.add_argument(
        "--search-interval-s",
        type=float,
        metavar="S",
        help="search for a lost object at most every S seconds of frame time (0: every frame; default)",
    )


def _add_redis_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("redis")
    g.add_argument(
        "--redis-url",
        metavar="URL",
        help="redis://[:password@]host:port/db or rediss://… (default: an embedded server, data under --data-dir)",
    )
    g.add_argument(
        "--data-dir",
        default="samstream-out",
        metavar="DIR",
        help="folder of the embedded Redis server's data (default samstream-out)",
    )
    g.add_argument("--prefix", default="samstream:", help="Redis key prefix (default samstream:)")


def _add_job_options(p: argparse.ArgumentParser) -> None:
    """Tracks, stride, live and tracking options: what a job spec holds (``run`` and ``submit``)."""
    p.add_argument("--point", action="append", default=[], metavar="X,Y", help="start a track at a point")
    p.add_argument(
        "--box", action="append", default=[], metavar="X0,Y0,X1,Y1", help="start a track with a box"
    )
    p.add_argument(
        "--mask-prompt",
        action="append",
        default=[],
        metavar="ID=FILE.png",
        help="start track ID from a mask image of the frame's size (0 background; grey, palette or alpha)",
    )
    p.add_argument(
        "--prompts",
        metavar="FILE",
        help="tracks from a YAML file (several points, negatives, masks, start frame)",
    )
    p.add_argument("--stride", type=int, default=1, metavar="N", help="process every N-th frame (default 1)")
    p.add_argument(
        "--live",
        action="store_true",
        help="a live feed: take the newest frame, drop the rest (implied by rtsp/udp/tcp and /dev/videoN)",
    )
    p.add_argument(
        "--give-up",
        type=float,
        default=30.0,
        metavar="S",
        help="live: fail after S seconds without a frame (30)",
    )
    p.add_argument(
        "--maxlen", type=int, metavar="N", help="keep about N masks entries (live default 10000; files: all)"
    )
    _add_tracking_options(p)
    _add_discovery_options(p)


def _add_discovery_options(p: argparse.ArgumentParser) -> None:
    """Discovery: objects found and followed without a prompt (``DiscoveryConfig``'s fields)."""
    g = p.add_argument_group("discovery (objects found without a prompt)")
    g.add_argument(
        "--discover",
        action="store_true",
        help="find objects by segment-everything on a grid and follow each (no prompt needed)",
    )
    g.add_argument(
        "--discover-every", type=float, metavar="S", help="seconds of the feed between two looks (1)"
    )
    g.add_argument(
        "--discover-grid",
        type=int,
        metavar="N",
        help="points a side of the grid: N*N decodes a look (16 on a GPU, 8 on a CPU)",
    )
    g.add_argument("--discover-max-tracks", type=int, metavar="N", help="most discovered tracks at once (16)")
    g.add_argument("--discover-min-area", type=int, metavar="PX", help="least pixels of an object (64)")
    g.add_argument(
        "--discover-max-area", type=float, metavar="SHARE", help="most of the frame an object covers (0.25)"
    )
    g.add_argument("--discover-roi", metavar="X0,Y0,X1,Y1", help="look only here (default: the whole frame)")
    g.add_argument(
        "--discover-forget",
        type=float,
        metavar="S",
        help="a discovered track ends after S s without its object (5)",
    )
    g.add_argument(
        "--detector",
        metavar="MODEL.onnx",
        help="discover with this ONNX object detector's boxes instead of the grid (YOLO-style; "
        "docs/tracking.md); implies --discover",
    )
    g.add_argument(
        "--classes", metavar="A,B", help="with --detector: only objects of these classes get tracks (all)"
    )
    g.add_argument(
        "--detector-score", type=float, metavar="S", help="with --detector: the least score of a box (0.25)"
    )


def _add_media_options(p: argparse.ArgumentParser, service: bool = False) -> None:
    """Limits on what a source may hold (``run`` and ``serve``; see ``pipeline.sources.limits``)."""
    from pipeline.sources.limits import DEFAULT_MAX_FRAME_PIXELS, SERVICE_MAX_DURATION_S, SERVICE_MAX_FRAMES

    g = p.add_argument_group("media limits (0: no limit)")
    g.add_argument(
        "--max-frame-pixels",
        type=int,
        default=DEFAULT_MAX_FRAME_PIXELS,
        metavar="N",
        help=f"a source whose frames have more pixels fails at open (default {DEFAULT_MAX_FRAME_PIXELS}, 8192x4320)",
    )
    frames, seconds = (SERVICE_MAX_FRAMES, SERVICE_MAX_DURATION_S) if service else (0, 0.0)
    g.add_argument(
        "--max-frames",
        type=int,
        default=frames,
        metavar="N",
        help=f"a file with more frames fails (at open when its index says so; default {frames})",
    )
    g.add_argument(
        "--max-duration-s",
        type=float,
        default=seconds,
        metavar="S",
        help=f"a file lasting longer fails (at open when its container says so; default {seconds:g})",
    )


def _add_preview_options(p: argparse.ArgumentParser) -> None:
    """The JPEG previews the viewer shows (``run`` and ``serve``; see ``pipeline.masks.preview``)."""
    g = p.add_argument_group("previews (the viewer's pictures; docs/wire-format.md)")
    g.add_argument(
        "--no-preview", action="store_true", help="publish no previews (the viewer then shows none)"
    )
    g.add_argument(
        "--preview-side", type=int, default=640, metavar="PX", help="a preview's long side in pixels (640)"
    )
    g.add_argument(
        "--preview-rate", type=float, default=10.0, metavar="N", help="most previews a second per job (10)"
    )
    g.add_argument(
        "--preview-keep",
        type=int,
        default=64,
        metavar="N",
        help="keep about N previews per job in Redis (64)",
    )
    g.add_argument(
        "--preview-live-always",
        action="store_true",
        help="make a live job's previews all the time (for render afterwards); by default only "
        "while a viewer shows the job, as each costs its frame a JPEG",
    )


def _add_api_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("API (samstream serve)")
    g.add_argument(
        "--api",
        metavar="URL",
        default=os.environ.get("SAMSTREAM_API_URL"),
        help="talk to the REST API at URL (default $SAMSTREAM_API_URL)"
        + ("" if required else "; without it, to Redis directly"),
    )
    g.add_argument(
        "--token", metavar="T", default=None, help="the API's bearer token (default $SAMSTREAM_API_TOKEN)"
    )


def _add_ending_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("jobs always end")
    g.add_argument(
        "--stall-s",
        type=float,
        default=30.0,
        metavar="S",
        help="fail a file or URL job whose source gives no picture for S seconds (default 30)",
    )
    g.add_argument(
        "--redis-retry-s",
        type=float,
        default=30.0,
        metavar="S",
        help="retry Redis while it is unreachable or refuses writes for up to S seconds, "
        "then fail the job (default 30)",
    )


def _add_export_parser(sub: Any) -> None:
    ex = sub.add_parser("export", help="write a job's masks as DAVIS palette PNGs, one per frame")
    ex.add_argument("job", metavar="JOB", help="job id")
    ex.add_argument(
        "--davis",
        required=True,
        metavar="DIR",
        help="folder for FRAME.png (00000.png …): pixel value k is track k, 0 the background",
    )
    _add_redis_options(ex)
    ex.set_defaults(handler="pipeline.cli.jobs:export")


def _add_eval_parser(sub: Any) -> None:
    ev = sub.add_parser(
        "eval",
        help="track every object of a DAVIS 2017 (semi-supervised) dataset from its first masks; J, F, J&F",
    )
    ev.add_argument(
        "dataset", metavar="DATASET", help="folder with JPEGImages/480p, Annotations/480p, ImageSets/2017"
    )
    ev.add_argument("--split", default="val", help="the ImageSets/2017 list to run (default val)")
    ev.add_argument("--resolution", default="480p", help="the frames' folder (default 480p)")
    ev.add_argument("--sequences", metavar="A,B,…", help="only these sequences of the split")
    ev.add_argument("--out", metavar="DIR", help="also write each frame's masks as DAVIS palette PNGs here")
    ev.add_argument("--json", metavar="FILE", help="write the scores as JSON here (default: after the table)")
    ev.add_argument(
        "--reference",
        action="store_true",
        help="run the reference segmenter instead of MobileSAM (flat-coloured test scenes only: it "
        "measures the tracker, not the weights)",
    )
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_tracking_options(ev)
    _add_model_options(ev)
    ev.set_defaults(handler="pipeline.cli.eval:run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samstream",
        description="Streaming video segmentation on MobileSAM: masks for every object on every frame, "
        "published to Redis streams.",
    )
    parser.add_argument("--version", action="version", version=f"samstream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        _segment_command,
        _run_command,
        _result_commands,
        _submit_command,
        _serve_command,
        _bench_command,
        _warmup_command,
        _weights_command,
    ):
        add(sub)
    return parser


def _segment_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``samstream segment``: one image."""
    seg = sub.add_parser("segment", help="segment one image with point/box prompts, write a PNG mask")
    seg.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, …)")
    seg.add_argument(
        "--point", action="append", default=[], metavar="X,Y", help="a point on the object (repeatable)"
    )
    seg.add_argument(
        "--neg", action="append", default=[], metavar="X,Y", help="a point not on the object (repeatable)"
    )
    seg.add_argument("--box", metavar="X0,Y0,X1,Y1", help="a box around the object")
    seg.add_argument("--mask", metavar="FILE.png", help="a mask of the object (the image's size)")
    seg.add_argument("--out", metavar="MASK.png", help="output mask (default: IMAGE's name + .mask.png)")
    _add_model_options(seg, precision="fp32")
    seg.set_defaults(handler="pipeline.cli.segment:run")


def _run_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``samstream run``: a video on this machine."""
    run = sub.add_parser("run", help="segment every frame of a video file or URL, publish masks to Redis")
    run.add_argument("source", metavar="SOURCE", help="video file or http(s) URL")
    run.add_argument(
        "--job-id", metavar="ID", help="job id; an existing id resumes that job (default: a new id)"
    )
    _add_job_options(run)
    _add_redis_options(run)
    run.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on this port")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--keep",
        default="7d",
        metavar="TIME",
        help="keep the job's data in Redis this long once it has ended: 3600, 90m, 12h, 7d, 2w "
        "or 'never' (default 7d)",
    )
    run.add_argument(
        "--view",
        action="store_true",
        help="serve the browser viewer of the job while it runs (its URL and token are printed)",
    )
    run.add_argument(
        "--view-port", type=int, default=8765, metavar="PORT", help="the viewer's port with --view (8765)"
    )
    _add_media_options(run)
    _add_ending_options(run)
    _add_preview_options(run)
    _add_model_options(run)
    run.set_defaults(handler="pipeline.cli.run:run")


def _result_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands over a job's results: status, watch, render, view, track, cancel, delete."""
    st = sub.add_parser("status", help="a job's status and progress")
    st.add_argument("job", metavar="JOB", help="job id")
    st.add_argument("--json", action="store_true", help="one JSON object")
    _add_redis_options(st)
    _add_api_options(st)
    st.set_defaults(handler="pipeline.cli.jobs:status")

    wa = sub.add_parser("watch", help="print a job's masks stream, one line per frame, following it live")
    wa.add_argument("job", metavar="JOB", help="job id")
    wa.add_argument("--json", action="store_true", help="one JSON object per frame")
    wa.add_argument("--no-follow", dest="follow", action="store_false", help="print what is there and stop")
    _add_redis_options(wa)
    _add_api_options(wa)
    wa.set_defaults(handler="pipeline.cli.jobs:watch")

    rd = sub.add_parser(
        "render",
        help="write the job's video with each track's mask overlaid in its own colour (a live job: "
        "from its kept previews, at preview resolution)",
    )
    rd.add_argument("job", metavar="JOB", help="job id")
    rd.add_argument("--out", "-o", required=True, metavar="VIDEO.mp4", help="output video (.mp4, .mkv, .mov)")
    rd.add_argument("--source", metavar="SOURCE", help="the video (default: the job's source)")
    _add_redis_options(rd)
    rd.set_defaults(handler="pipeline.cli.jobs:render")
    _add_export_parser(sub)
    _add_eval_parser(sub)

    vw = sub.add_parser(
        "view", help="serve the browser viewer of a job of samstream run (prints its URL; Ctrl-C ends it)"
    )
    vw.add_argument("job", metavar="JOB", help="job id")
    vw.add_argument("--port", type=int, default=8765, metavar="P", help="port on 127.0.0.1 (default 8765)")
    vw.add_argument(
        "--token",
        metavar="T",
        default=None,
        help="the token the page asks for (default $SAMSTREAM_API_TOKEN, else a random one, printed)",
    )
    _add_redis_options(vw)
    vw.set_defaults(handler="pipeline.cli.view:view")

    tk = sub.add_parser("track", help="add, remove or re-prompt a track of a running job")
    tk.add_argument("action", choices=["add", "remove", "reprompt"])
    tk.add_argument("job", metavar="JOB", help="job id")
    tk.add_argument("track", type=int, metavar="ID", help="track id")
    tk.add_argument("--point", action="append", default=[], metavar="X,Y", help="a point on the object")
    tk.add_argument("--neg", action="append", default=[], metavar="X,Y", help="a point not on the object")
    tk.add_argument("--box", metavar="X0,Y0,X1,Y1", help="a box around the object")
    tk.add_argument("--mask", metavar="FILE.png", help="a mask of the object (the frame's size)")
    _add_redis_options(tk)
    _add_api_options(tk)
    tk.set_defaults(handler="pipeline.cli.jobs:track")

    sp = sub.add_parser(
        "cancel",
        aliases=["stop"],
        help="end a running job or live stream before its next frame (results stay)",
    )
    sp.add_argument("job", metavar="JOB", help="job id")
    _add_redis_options(sp)
    _add_api_options(sp)
    sp.set_defaults(handler="pipeline.cli.jobs:cancel")

    dl = sub.add_parser(
        "delete", help="remove an ended job's data from Redis at once: masks, events, state, record"
    )
    dl.add_argument("job", metavar="JOB", help="job id")
    _add_redis_options(dl)
    _add_api_options(dl)
    dl.set_defaults(handler="pipeline.cli.jobs:delete")


def _submit_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``samstream submit``: a job or stream to a service."""
    sb = sub.add_parser("submit", help="submit a job or live stream to a samstream service (its REST API)")
    sb.add_argument("source", metavar="SOURCE", help="video URL (or a file on the service's machines)")
    sb.add_argument("--job-id", metavar="ID", help="job id (default: the service makes one)")
    _add_job_options(sb)
    sb.add_argument(
        "--image-size",
        metavar="N|auto",
        help="encoder input size (default: the service's); auto (live): a smaller size when the "
        "encoders cannot keep --target-fps",
    )
    sb.add_argument(
        "--target-fps",
        type=float,
        metavar="F",
        help="with --image-size auto: the rate to keep (default: the feed's)",
    )
    sb.add_argument("--wait", action="store_true", help="wait for the job to end, showing its progress")
    sb.add_argument(
        "--keep",
        metavar="TIME",
        help="keep its data this long once it has ended: 3600, 90m, 12h, 7d (default and most: the service's)",
    )
    _add_api_options(sb, required=True)
    sb.set_defaults(handler="pipeline.cli.remote:submit")


def _serve_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``samstream serve``: the service, its options by group."""
    sv = sub.add_parser(
        "serve",
        help="run the service: REST API, the job driver, stream hosts and the autoscaled encoder pool on Ray",
    )
    _serve_service_options(sv)
    _serve_pool_options(sv)
    _serve_host_options(sv)
    _serve_limit_options(sv)
    sv.set_defaults(handler="pipeline.cli.serve:serve")


def _serve_service_options(sv: argparse.ArgumentParser) -> None:
    """serve: the service itself (address, ports, Redis, model, data)."""
    g = sv.add_argument_group("service")
    g.add_argument(
        "--address",
        metavar="RAY_ADDRESS",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to join ('auto': this node's); default $RAY_ADDRESS, else a local Ray",
    )
    g.add_argument("--host", default="127.0.0.1", help="address the API listens on (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    g.add_argument(
        "--token",
        metavar="T",
        help="bearer token every request must carry (default $SAMSTREAM_API_TOKEN, else a new one, printed)",
    )
    g.add_argument(
        "--metrics-port",
        type=int,
        default=9400,
        metavar="PORT",
        help="Prometheus /metrics (default 9400; 0: off)",
    )
    g.add_argument(
        "--metrics-host",
        metavar="ADDR",
        help="address /metrics listens on (default: --host's)",
    )
    g.add_argument(
        "--allow-schemes",
        default="http,https,rtsp,rtsps",
        metavar="LIST",
        help="source URL schemes accepted (default http,https,rtsp,rtsps; also udp,tcp)",
    )
    g.add_argument(
        "--allow-local-files", action="store_true", help="accept paths on the service's machines as sources"
    )
    g.add_argument(
        "--keep",
        default="7d",
        metavar="TIME",
        help="keep a job's data in Redis this long once it has ended, unless the job asks for less "
        "(keep_s): 3600, 90m, 12h, 7d, 2w or 'never' (default 7d)",
    )
    g.add_argument(
        "--max-keep",
        metavar="TIME",
        help="the longest keep_s a job may ask for (default: --keep)",
    )
    g.add_argument(
        "--max-maxlen",
        type=int,
        default=1_000_000,
        metavar="N",
        help="the most masks entries a job or stream may ask to keep (maxlen; default 1000000)",
    )
    g.add_argument(
        "--allow-hosts",
        default="",
        metavar="LIST",
        help="hosts, IPs and CIDR networks sources may reach although they are loopback, private, "
        "link-local or metadata addresses (refused by default), e.g. cams.lan,10.1.0.0/16",
    )
    _add_ending_options(sv)


def _serve_pool_options(sv: argparse.ArgumentParser) -> None:
    """serve: the encoder pool (Ray Serve, autoscaled)."""
    pool = sv.add_argument_group("encoder pool (Ray Serve, autoscaled)")
    pool.add_argument("--min-encoders", type=int, default=0, metavar="N", help="replicas kept when idle (0)")
    pool.add_argument("--max-encoders", type=int, default=4, metavar="N", help="most replicas (4)")
    pool.add_argument(
        "--encoder-gpus", type=float, default=1.0, metavar="G", help="GPUs per replica, fractions allowed (1)"
    )
    pool.add_argument("--encoder-cpus", type=float, default=1.0, metavar="C", help="CPUs per replica (1)")
    pool.add_argument(
        "--idle-s", type=float, default=60.0, metavar="S", help="idle seconds before a replica goes (60)"
    )
    pool.add_argument(
        "--encoder-sizes",
        type=int,
        default=4,
        metavar="N",
        help="image sizes whose model each replica keeps loaded; the least recently used goes (4)",
    )


def _serve_host_options(sv: argparse.ArgumentParser) -> None:
    """serve: the source hosts and tracker hosts."""
    hosts = sv.add_argument_group("stream hosts and tracker hosts (many jobs per process)")
    hosts.add_argument(
        "--source-hosts",
        type=int,
        metavar="N",
        help="source hosts started at once (default: one per core of this machine, at most 8)",
    )
    hosts.add_argument(
        "--streams-per-host",
        type=int,
        default=64,
        metavar="N",
        help="jobs a source host takes before another one is started (64)",
    )
    hosts.add_argument(
        "--host-cpus", type=float, default=0.5, metavar="C", help="CPUs each source host asks Ray for (0.5)"
    )
    hosts.add_argument(
        "--host-memory-mb",
        type=int,
        default=600,
        metavar="MB",
        help="memory each source host asks Ray for (600; 0: none)",
    )
    hosts.add_argument(
        "--host-idle-s",
        type=float,
        default=60.0,
        metavar="S",
        help="a host started for more jobs stops after holding none this long (60)",
    )
    hosts.add_argument(
        "--tracks-per-tracker",
        type=int,
        default=256,
        metavar="N",
        help="tracks a tracker host follows before another one is started (256)",
    )
    hosts.add_argument(
        "--tracker-cpus",
        type=float,
        default=0.5,
        metavar="C",
        help="CPUs each tracker host asks Ray for (0.5)",
    )
    hosts.add_argument(
        "--tracker-memory-mb",
        type=int,
        default=900,
        metavar="MB",
        help="memory each tracker host asks Ray for (900; 0: none)",
    )
    hosts.add_argument(
        "--tracker-gpus",
        type=float,
        default=0.0,
        metavar="G",
        help="GPUs each tracker host asks Ray for, fractions allowed (0: the CPU)",
    )
    # The names these options had (a tracker host was called a decoder): still taken, not shown.
    for old, new, kind in (
        ("--tracks-per-decoder", "tracks_per_tracker", int),
        ("--decoder-cpus", "tracker_cpus", float),
        ("--decoder-memory-mb", "tracker_memory_mb", int),
        ("--decoder-gpus", "tracker_gpus", float),
    ):
        sv.add_argument(old, dest=new, type=kind, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _serve_limit_options(sv: argparse.ArgumentParser) -> None:
    """serve: what one client may ask of the service."""
    lim = sv.add_argument_group("limits (what one client may ask of the service)")
    lim.add_argument(
        "--detector-dir",
        metavar="DIR",
        help="the ONNX detectors a job's discovery may name (its file name in DIR); none by default",
    )
    lim.add_argument(
        "--max-jobs",
        type=int,
        default=256,
        metavar="N",
        help="jobs and streams queued or running at once; more are refused with 429 (256)",
    )
    lim.add_argument(
        "--admission",
        choices=("none", "capacity"),
        default="none",
        help="capacity: a live stream that would push a stream's fair share of the encoders or the "
        "tracker hosts below --min-stream-fps is refused with 429 naming the capacity and the share "
        "(none)",
    )
    lim.add_argument(
        "--min-stream-fps",
        type=float,
        default=1.0,
        metavar="FPS",
        help="the least fair share a stream keeps under --admission capacity (1.0)",
    )
    lim.add_argument(
        "--max-tracks",
        type=int,
        default=64,
        metavar="N",
        help="tracks of one job, those added while it runs included; more: 409 (64)",
    )
    lim.add_argument(
        "--image-sizes",
        default="256,512,1024",
        metavar="LIST",
        help="encoder sizes a job may choose; --image-size must be one (256,512,1024)",
    )
    lim.add_argument(
        "--max-body-kb",
        type=int,
        default=256,
        metavar="KB",
        help="largest request body; more: 413 (256)",
    )
    _add_media_options(sv, service=True)
    _add_preview_options(sv)
    _add_redis_options(sv)
    _add_model_options(sv)


def _bench_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``samstream bench``: the suites and their options."""
    bn = sub.add_parser("bench", help="measure speed: ratios against baselines measured in the same run")
    bn.add_argument(
        "--suite",
        choices=["encoder", "decoder", "pipeline", "machinery", "tracking", "density", "capacity", "all"],
        default="all",
        help="default all",
    )
    bn.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    bn.add_argument(
        "--image-size", type=int, default=1024, metavar="N", help="encoder input size (default 1024)"
    )
    bn.add_argument(
        "--runs", type=int, default=5, metavar="N", help="timed runs per measurement (median; default 5)"
    )
    bn.add_argument("--batch", type=int, default=1, metavar="N", help="frames per encoder call (default 1)")
    bn.add_argument(
        "--frames", type=int, default=24, metavar="N", help="frames of the pipeline clip (default 24)"
    )
    bn.add_argument(
        "--machinery-frames",
        type=int,
        default=300,
        metavar="N",
        help="frames of the machinery clip (default 300)",
    )
    dn = bn.add_argument_group("density suite (live streams through samstream serve, null model)")
    dn.add_argument(
        "--streams", default="10,50,100", metavar="K,K,…", help="stream counts to measure (default 10,50,100)"
    )
    dn.add_argument(
        "--fps", type=float, default=5.0, metavar="F", help="frames per second of each stream (5)"
    )
    dn.add_argument(
        "--seconds", type=float, default=60.0, metavar="S", help="measured seconds per count (60)"
    )
    dn.add_argument(
        "--warmup", type=float, default=15.0, metavar="S", help="seconds run before measuring (15)"
    )
    dn.add_argument(
        "--overload-from",
        type=int,
        default=100,
        metavar="K",
        help="stream counts from which the overload targets apply (100)",
    )
    dn.add_argument(
        "--density-image-size",
        type=int,
        default=256,
        metavar="N",
        help="encoder input size of the streams (256)",
    )
    cp = bn.add_argument_group("capacity suite (live streams through samstream serve, random weights)")
    cp.add_argument(
        "--capacity-streams", default="1,2,4,8", metavar="K,K,…", help="stream counts to measure (1,2,4,8)"
    )
    cp.add_argument("--capacity-fps", type=float, default=10.0, metavar="F", help="each stream's rate (10)")
    cp.add_argument(
        "--capacity-seconds", type=float, default=30.0, metavar="S", help="measured seconds per count (30)"
    )
    cp.add_argument(
        "--capacity-warmup", type=float, default=15.0, metavar="S", help="seconds run before measuring (15)"
    )
    cp.add_argument(
        "--capacity-image-size",
        default="512",
        metavar="N|auto",
        help="encoder input size (512); auto: adaptive streams starting at 1024 on sizes 256-1024",
    )
    cp.add_argument(
        "--capacity-target-fps",
        type=float,
        default=2.0,
        metavar="F",
        help="with --capacity-image-size auto: each stream's target_fps (2)",
    )
    cp.add_argument(
        "--capacity-encoder-cpus",
        type=int,
        default=1,
        metavar="C",
        help="CPUs of the service's one encoder replica: its torch threads (1, serve's default)",
    )
    cp.add_argument(
        "--capacity-admission",
        type=float,
        metavar="F",
        help="serve with --admission capacity --min-stream-fps F, and ask for one more stream after "
        "each count: refused exactly when its share would fall below F, the others keep their rate",
    )
    bn.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="precision of the encoder suite's second row and of the decoder and pipeline suites (default auto)",
    )
    bn.add_argument(
        "--detector",
        metavar="MODEL.onnx",
        help="the decoder suite's detection row runs this detector (default: the reference blob detector)",
    )
    bn.set_defaults(handler="pipeline.cli.bench:run")


def _warmup_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``samstream warmup``: compile the model now."""
    wu = sub.add_parser(
        "warmup", help="compile the encoder and mask decoder for this machine now (cached; runs start fast)"
    )
    _add_model_options(wu)
    wu.set_defaults(handler="pipeline.cli.warmup:run")


def _weights_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``samstream weights``: download and verify the release."""
    wts = sub.add_parser("weights", help="download (once) and verify the released MobileSAM weights")
    wts.add_argument(
        "action", choices=["fetch", "path"], help="fetch: download if not cached; path: print the path"
    )
    wts.add_argument("--url", action="append", metavar="URL", help="download from here instead (repeatable)")
    wts.set_defaults(handler="pipeline.cli.weights:run")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    module, func = args.handler.split(":")
    try:
        handler = getattr(importlib.import_module(module), func)
        return int(handler(args) or 0)
    except SamstreamError as exc:
        print(f"samstream: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGINT/SIGTERM where pipeline.signals takes them
        from pipeline.signals import exit_code

        print("samstream: interrupted", file=sys.stderr)
        return exit_code(exc)
    except BrokenPipeError:
        # `samstream watch JOB | head`: the reader went away; not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
