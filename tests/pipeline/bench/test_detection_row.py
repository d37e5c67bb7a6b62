"""The decoder suite's detection row: what a detection frame adds, measured with the reference
blob detector through ONNX Runtime (it finds the frame's six discs), or with a user's detector."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.bench.model import run_detection
from pipeline.config import Compile

pytestmark = pytest.mark.slow


def test_the_row_times_the_detector_and_its_boxes_decoded_against_the_frame_without(
    blob_detector: Path,
) -> None:
    # eager: the row's logic, without compiling a model into the user's cache (the bench compiles)
    [row] = run_detection(torch.device("cpu"), 256, 1, compile=Compile.EAGER)
    assert row.suite == "decoder" and "the reference detector (6 boxes)" in row.name
    assert row.detail["boxes"] == 6 and row.detail["detector_s"] > 0 and row.ours > 0 and row.baseline > 0
    [theirs] = run_detection(torch.device("cpu"), 256, 1, str(blob_detector), compile=Compile.EAGER)
    assert "blobs.onnx (6 boxes)" in theirs.name


def test_a_bad_detector_is_refused_before_any_suite_runs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_text("no")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "bench", "--suite", "decoder", "--detector", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "not an ONNX model" in done.stderr and "Traceback" not in done.stderr
