"""``samstream eval`` on a generated DAVIS-layout dataset, its numbers against vos-benchmark's on the
masks it wrote; ``samstream export --davis`` of a job's masks; one clear line for a bad dataset."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from vos_benchmark.benchmark import benchmark

from pipeline.evaluation.davis import palette, read_labels
from pipeline.ledger import JobStatus, JobStore
from pipeline.ledger.sink import RedisSink
from pipeline.masks.rle import decode_rle
from pipeline.streams import EmbeddedRedis, Keys, connect
from tests.fixtures.davis import make_davis
from tests.pipeline.cli.test_segment import run_cli
from tests.pipeline.streams.conftest import make_result


def sam(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, timeout=timeout)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_davis(tmp_path_factory.mktemp("davis"), ("crossing", "occlusion"), frames=20)


def _agrees(report: dict, masks: Path, dataset: Path) -> None:
    """The report's numbers are vos-benchmark's on the same masks and truth, to 1e-3."""
    jf, j, f, objects = benchmark([str(dataset / "Annotations" / "480p")], [str(masks)], verbose=False)
    assert report["global"]["J&F"] == pytest.approx(jf[0], abs=1e-3)
    assert report["global"]["J"] == pytest.approx(j[0], abs=1e-3)
    assert report["global"]["F"] == pytest.approx(f[0], abs=1e-3)
    for seq in report["sequences"]:
        theirs_j, theirs_f = objects[0][seq["name"]]
        assert sorted(int(o) for o in seq["objects"]) == sorted(theirs_j)
        for obj, v in seq["objects"].items():
            assert v["J"] == pytest.approx(theirs_j[int(obj)], abs=1e-3)
            assert v["F"] == pytest.approx(theirs_f[int(obj)], abs=1e-3)


@pytest.mark.slow
def test_eval_with_the_reference_agrees_with_vos_benchmark(dataset: Path, tmp_path: Path) -> None:
    out, scores = tmp_path / "masks", tmp_path / "scores.json"
    res = sam("eval", str(dataset), "--reference", "--out", str(out), "--json", str(scores), "--no-progress")
    assert res.returncode == 0, res.stderr
    report = json.loads(scores.read_text())
    assert report["model"] == "reference segmenter" and "not MobileSAM" in report["notice"]
    assert "Global" in res.stdout and "crossing" in res.stdout
    _agrees(report, out, dataset)
    assert report["global"]["J&F"] > 95  # the tracker holds both crossing discs and the hidden one
    print("eval --reference:", json.dumps(report["global"]))
    # The masks written are palette PNGs of the truth's size, one per frame, named as DAVIS names them.
    written = sorted((out / "crossing").glob("*.png"))
    assert [p.name for p in written] == [f"{i:05d}.png" for i in range(20)]
    from PIL import Image

    with Image.open(written[5]) as img:
        assert img.mode == "P" and bytes(img.getpalette()[:30]) == palette()[:30]


@pytest.mark.slow
def test_eval_with_random_weights_says_so_and_still_agrees(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "masks"
    res = sam(
        "eval", str(dataset), "--weights", "random", "--image-size", "256", "--compile", "eager",
        "--precision", "fp32", "--out", str(out), "--sequences", "crossing",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "WARNING: random weights" in res.stderr and "%" in res.stderr  # loud, with a progress bar
    report = json.loads(res.stdout.strip().splitlines()[-2])
    assert report["model"] == "MobileSAM, random weights" and report["notice"]
    assert [s["name"] for s in report["sequences"]] == ["crossing"]
    (out / "occlusion").mkdir()  # vos-benchmark wants every sequence of the truth; not scored here
    for src in sorted((dataset / "Annotations" / "480p" / "occlusion").glob("*.png")):
        (out / "occlusion" / src.name).write_bytes(src.read_bytes())
    *_, objects = benchmark([str(dataset / "Annotations" / "480p")], [str(out)], verbose=False)
    theirs_j, theirs_f = objects[0]["crossing"]
    for obj, v in report["sequences"][0]["objects"].items():
        assert v["J"] == pytest.approx(theirs_j[int(obj)], abs=1e-3)
        assert v["F"] == pytest.approx(theirs_f[int(obj)], abs=1e-3)
    print("eval --weights random:", json.dumps(report["global"]))


def test_a_folder_that_is_not_a_davis_dataset_is_one_line(tmp_path: Path, dataset: Path) -> None:
    cases = [
        (str(tmp_path / "missing"), [], "no dataset folder"),
        (str(tmp_path), [], "is not in the DAVIS 2017 layout: no ImageSets/2017/val.txt"),
        (str(dataset), ["--sequences", "nope"], "no sequences ['nope'] in val"),
        (str(dataset), ["--reference", "--weights", "random"], "--reference runs no weights"),
    ]
    for folder, extra, message in cases:
        res = sam("eval", folder, "--reference" if "--weights" not in extra else "--no-progress", *extra)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert message in lines[-1], res.stderr


def test_export_writes_a_jobs_masks_as_davis_pngs(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis") as server:
        client = connect(server.url)
        keys = Keys(f"exp-{uuid.uuid4().hex[:6]}:")
        store = JobStore(client, keys)
        store.create("job", {"source": "a.mp4"})
        store.set_status("job", JobStatus.RUNNING)
        RedisSink(client, keys, "job").publish_many([(make_result(i), None) for i in range(3)])
        res = sam(
            "export",
            "job",
            "--davis",
            str(tmp_path / "out"),
            "--redis-url",
            server.url,
            "--prefix",
            keys.prefix,
        )
        assert res.returncode == 0, res.stderr
        for i in range(3):
            result = make_result(i)
            labels = read_labels(tmp_path / "out" / f"{i:05d}.png")
            expected = np.zeros((result.height, result.width), np.uint8)
            for t in result.tracks:  # where masks overlap, the later track's id (one value a pixel)
                expected[decode_rle(t.rle)] = t.track_id
            np.testing.assert_array_equal(labels, expected)
            assert len(np.unique(expected)) == 3
        client.close()
