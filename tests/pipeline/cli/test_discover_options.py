"""Discovery's options, as ``run`` and ``submit`` read them into a job spec (and a prompts file's
``discover``); the same spec the API builds from a request body."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli.main import build_parser
from pipeline.cli.remote import job_body
from pipeline.cli.run import build_spec
from pipeline.errors import InvalidInputError
from pipeline.spec import JobSpec
from pipeline.tracking.discovery import DiscoveryConfig


def _spec(*argv: str) -> JobSpec:
    return build_spec(build_parser().parse_args(["run", "clip.mp4", *argv]), 512, "random")


def test_discover_needs_no_prompt_and_takes_its_settings() -> None:
    spec = _spec(
        "--discover", "--discover-every", "2", "--discover-grid", "12", "--discover-roi", "0,10,320,200"
    )
    assert spec.tracks == () and spec.discover == DiscoveryConfig(every_s=2.0, grid=12, roi=(0, 10, 320, 200))
    assert JobSpec.from_dict(spec.to_dict()) == spec
    assert _spec("--point", "5,5").discover is None
    assert _spec("--discover", "--point", "5,5").discover == DiscoveryConfig()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ((), "at least one track, or discovery: give --point, --box, --mask-prompt, --prompts or --discover"),
        (("--point", "5,5", "--discover-grid", "8"), "--discover-\\* settings go with --discover"),
        (("--discover", "--discover-roi", "1,2,3"), "--discover-roi must be X0,Y0,X1,Y1"),
        (("--discover", "--discover-roi", "a,b,c,d"), "--discover-roi must be X0,Y0,X1,Y1"),
        (("--discover", "--discover-grid", "0"), "discovery grid must be an integer >= 1 and <= 64"),
        (("--discover", "--discover-max-area", "2"), "discovery max_area must be a share"),
    ],
)
def test_bad_discovery_options_are_one_line(argv: tuple[str, ...], says: str) -> None:
    with pytest.raises(InvalidInputError, match=says):
        _spec(*argv)


def test_a_prompts_file_may_hold_discovery_alone_or_beside_tracks(tmp_path: Path) -> None:
    alone = tmp_path / "alone.yaml"
    alone.write_text("discover:\n  every_s: 0.5\n  max_tracks: 4\n")
    spec = _spec("--prompts", str(alone))
    assert spec.tracks == () and spec.discover == DiscoveryConfig(every_s=0.5, max_tracks=4)
    both = tmp_path / "both.yaml"
    both.write_text("tracks:\n  - points: [[5, 5]]\ndiscover: true\n")
    spec = _spec("--prompts", str(both))
    assert len(spec.tracks) == 1 and spec.discover == DiscoveryConfig()
    with pytest.raises(InvalidInputError, match="either with --discover or in the prompts file"):
        _spec("--prompts", str(both), "--discover")
    bad = tmp_path / "bad.yaml"
    bad.write_text("discover: {grid: 1000}\n")
    with pytest.raises(InvalidInputError, match="grid must be an integer"):
        _spec("--prompts", str(bad))


def test_submit_sends_the_discovery_settings() -> None:
    args = build_parser().parse_args(["submit", "clip.mp4", "--discover", "--discover-max-tracks", "3"])
    body, live = job_body(args)
    assert body["tracks"] == [] and body["discover"]["max_tracks"] == 3 and not live


def test_a_detector_implies_discovery_and_is_checked_before_the_job_starts(
    blob_detector: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.cli.run import local_detector

    monkeypatch.chdir(blob_detector.parent)
    spec = _spec("--detector", blob_detector.name, "--classes", "red, blue", "--detector-score", "0.5")
    assert spec.discover == DiscoveryConfig(
        detector="blobs.onnx", classes=("red", "blue"), detector_score=0.5
    )
    assert local_detector(spec).discover.detector == str(blob_detector)  # type: ignore[union-attr]
    for argv, says in [
        (("--detector", "missing.onnx"), "detector .*missing.onnx: no such file"),
        (("--detector", blob_detector.name, "--classes", "red,horse"), "no class named 'horse'"),
    ]:
        with pytest.raises(InvalidInputError, match=says):
            local_detector(_spec(*argv))
    for argv, says in [
        (("--point", "5,5", "--classes", "red"), "--classes and --detector-score go with --detector"),
        (("--detector", "d.onnx", "--classes", " , "), "--classes must name classes"),
        (("--detector", "d.onnx", "--discover-grid", "8"), "a grid or a detector, not both"),
    ]:
        with pytest.raises(InvalidInputError, match=says):
            _spec(*argv)
    body, _ = job_body(build_parser().parse_args(["submit", "clip.mp4", "--detector", "people.onnx"]))
    assert body["discover"]["detector"] == "people.onnx"  # a name of the service's --detector-dir
