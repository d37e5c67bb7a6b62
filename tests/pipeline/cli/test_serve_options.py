"""``samstream serve``'s limit and address options, as parsed (the service itself needs Ray: see
``tests/workers/test_serve_cli.py``)."""

from __future__ import annotations

import pytest

from pipeline.cli.main import build_parser
from pipeline.cli.serve import _sizes
from pipeline.errors import InvalidInputError


def test_limits_have_their_documented_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.max_jobs, args.max_tracks, args.max_body_kb) == (256, 64, 256)
    assert _sizes(args.image_sizes) == (256, 512, 1024)
    assert args.metrics_host is None  # serve then uses --host
    assert (args.admission, args.min_stream_fps) == ("none", 1.0)


def test_limits_are_given_on_the_command_line() -> None:
    argv = [
        "serve",
        "--max-jobs",
        "8",
        "--max-tracks",
        "4",
        "--image-sizes",
        "512, 1024",
        "--max-body-kb",
        "16",
    ]
    argv += ["--metrics-host", "10.0.0.5", "--admission", "capacity", "--min-stream-fps", "2.5"]
    args = build_parser().parse_args(argv)
    assert (args.admission, args.min_stream_fps) == ("capacity", 2.5)
    assert (args.max_jobs, args.max_tracks, args.max_body_kb, args.metrics_host) == (8, 4, 16, "10.0.0.5")
    assert _sizes(args.image_sizes) == (512, 1024)


def test_image_sizes_that_are_not_numbers_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="--image-sizes must be a list like 256,512,1024"):
        _sizes("256,big")


def test_tracker_host_options_take_their_old_decoder_names_too(capsys: pytest.CaptureFixture[str]) -> None:
    parse = build_parser().parse_args
    defaults = parse(["serve"])
    assert (defaults.tracks_per_tracker, defaults.tracker_cpus, defaults.tracker_memory_mb) == (256, 0.5, 900)
    assert defaults.tracker_gpus == 0.0
    new = [
        "--tracks-per-tracker",
        "8",
        "--tracker-cpus",
        "1",
        "--tracker-memory-mb",
        "500",
        "--tracker-gpus",
        "0.25",
    ]
    old = [
        "--tracks-per-decoder",
        "8",
        "--decoder-cpus",
        "1",
        "--decoder-memory-mb",
        "500",
        "--decoder-gpus",
        "0.25",
    ]
    for argv in (new, old):
        args = parse(["serve", *argv])
        assert (args.tracks_per_tracker, args.tracker_cpus, args.tracker_memory_mb, args.tracker_gpus) == (
            8,
            1.0,
            500,
            0.25,
        )
    with pytest.raises(SystemExit):
        parse(["serve", "--help"])
    shown = capsys.readouterr().out
    assert "--tracker-cpus" in shown and "decoder-" not in shown  # the old names are not shown
