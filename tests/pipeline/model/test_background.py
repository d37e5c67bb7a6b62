"""No compile wait: a part answers eagerly, builds its package in another process when that pays
off, and switches to it once it is there."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import Compile, ModelConfig
from pipeline.model import DecodeRequest, MobileSam
from pipeline.model.accelerate import Recipe, build_package, disagreement, load_package
from pipeline.model.background import BackgroundBuild, BuildPolicy, building, config_json, take_lock
from pipeline.model.build import recipes
from pipeline.model.runners import Part
from pipeline.prompts import Prompt
from tests.conftest import sample_rgb


def test_a_build_is_due_only_when_the_calls_to_come_pay_for_it() -> None:
    short = BuildPolicy(expected_calls=24, build_s=60.0, saves=0.5)
    assert not short.due(8, eager_s=0.8)  # 16 calls left save 6.4 s: a 60 s build never pays
    long = BuildPolicy(expected_calls=1000, build_s=60.0, saves=0.5)
    assert not long.due(7, eager_s=0.8)  # too few calls yet to know
    assert long.due(8, eager_s=0.8)  # 992 × 0.4 s ≫ 60 s
    assert not long.due(900, eager_s=0.8)  # the end is near: 100 × 0.4 s < 60 s
    unknown = BuildPolicy(expected_calls=None, build_s=60.0, saves=0.5)
    assert not unknown.due(7, eager_s=0.8) and unknown.due(8, eager_s=0.8)  # a live feed, a service


def test_one_builder_per_package_and_stale_locks_are_taken_over(tmp_path: Path) -> None:
    lock = tmp_path / "compiled" / "x.pt2.lock"
    assert take_lock(lock) and building(lock)  # ours, and we are alive
    assert not take_lock(lock)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    lock.write_text(dead.stdout.strip())  # a builder that was killed
    assert not building(lock) and not lock.exists()
    assert take_lock(lock)


class _Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 + 1


def test_a_part_answers_eagerly_and_switches_to_its_package_when_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "compiled" / "double.pt2"
    recipe = Recipe("double", _Double, (torch.zeros(4),), None, path)
    asked: list[tuple[int, float]] = []

    class Watch:
        def consider(self, calls: int, eager_s: float) -> bool:
            asked.append((calls, eager_s))
            return False

    part = Part(recipe, Compile.AUTO, Watch())  # type: ignore[arg-type]
    x = torch.arange(4.0)
    assert torch.equal(part(x)[0], x * 2 + 1) and not part.compiled
    assert asked and asked[0][0] == 1  # the policy was asked, with the calls so far
    build_package(recipe.module, recipe.example, path)  # as a background builder does
    part._checked = 0.0  # the part looks for the package at most once a second
    assert torch.equal(part(x)[0], x * 2 + 1)
    assert part.compiled and torch.equal(part(x)[0], x * 2 + 1)
    # Compile.EAGER never loads a package, even one that is there.
    assert not Part(recipe, Compile.EAGER).compiled


def test_the_python_api_answers_at_once_on_an_empty_cache(tmp_path: Path) -> None:
    model = MobileSam.from_config(ModelConfig(weights="random", image_size=256, cache_dir=tmp_path))
    emb = model.encode([sample_rgb(240, 320, 0)])[0]
    out = model.decode(emb, [DecodeRequest(Prompt(points=((100.0, 120.0),), labels=(1,)))])
    assert out.masks.shape == (1, 240, 320)
    assert not model.encoder.compiled and not model.mask_decoder.compiled
    assert not (tmp_path / "compiled").exists()  # nothing compiled, nothing started: one image


@pytest.mark.slow
def test_a_background_build_is_used_once_ready_and_dies_with_its_parent(tmp_path: Path) -> None:
    config = ModelConfig(weights="random", image_size=64, cache_dir=tmp_path)
    model = MobileSam.from_config(config)
    part = model.mask_decoder.ready()
    assert part is not None and part.build is not None and part.build.policy.expected_calls is None
    emb = model.encode([sample_rgb(64, 64, 0)])[0]
    requests = [DecodeRequest(Prompt(box=(8.0, 8.0, 40.0, 40.0)))]
    eager = model.decode(emb, requests)
    for _ in range(8):  # a workload of unknown length: due after MIN_CALLS calls
        part._checked = 0.0
        model.decode(emb, requests)
    builder = part.build.process
    assert builder is not None, "the build did not start"
    assert builder.wait(timeout=240) == 0, part.recipe.path.with_name(
        part.recipe.path.name + ".log"
    ).read_text()
    assert (
        part.recipe.path.is_file()
        and not part.recipe.path.with_name(part.recipe.path.name + ".lock").exists()
    )
    part._checked = 0.0
    compiled = model.decode(emb, requests)
    assert part.compiled
    assert np.abs(compiled.logits - eager.logits).max() <= 1e-3

    # A builder whose parent has gone stops at once, building nothing.
    (recipe,) = recipes(config, ["encoder"])
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    started = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.model.build", "--background", "--part", "encoder",
         "--config", config_json(config, "fp32"), "--parent", gone.stdout.strip()],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )  # fmt: skip
    assert res.returncode == 3 and time.monotonic() - started < 60
    assert not recipe.path.exists()


def test_a_build_started_once_is_not_started_again(tmp_path: Path) -> None:
    config = ModelConfig(weights="random", image_size=64, cache_dir=tmp_path)
    lock = tmp_path / "compiled" / "p.pt2.lock"
    assert take_lock(lock)  # another process of ours builds it already
    build = BackgroundBuild(
        "encoder", config, "fp32", tmp_path / "compiled" / "p.pt2", BuildPolicy(None, 1.0, 0.5, 0)
    )
    assert not build.consider(1, 1.0) and build.process is None
    assert not build.consider(2, 1.0)  # asked once: not again


def test_a_package_that_disagrees_with_its_module_is_never_used() -> None:
    example = (torch.zeros(4),)
    module = _Double()
    right = lambda x: [x * 2 + 1]  # noqa: E731
    assert disagreement(module, right, example) is None
    assert "not finite" in str(disagreement(module, lambda x: [x * float("nan")], example))
    assert "from the module's" in str(disagreement(module, lambda x: [x * 2 + 1.5], example))
    assert "outputs" in str(disagreement(module, lambda x: [x, x], example))


def test_a_build_falls_back_to_options_whose_package_agrees_else_the_part_runs_eagerly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import pipeline.model.accelerate as accelerate

    tried: list[bool] = []
    real_build = accelerate.build_package

    def build(*args: Any) -> Path:
        tried.append(args[4]["freezing"])
        return real_build(*args)

    checks = iter(["output 0 has 4 values that are not finite", None])  # the first package is wrong
    monkeypatch.setattr(accelerate, "build_package", build)
    monkeypatch.setattr(accelerate, "disagreement", lambda *_: next(checks))
    path = tmp_path / "compiled" / "double.pt2"
    recipe = Recipe("double", _Double, (torch.zeros(4),), None, path)
    assert recipe.build() == path and tried == [True, False]  # frozen first, then unfrozen
    assert not recipe.rejected.exists()
    x = torch.arange(4.0)
    assert torch.equal(load_package(path)(x)[0], x * 2 + 1)

    monkeypatch.setattr(accelerate, "disagreement", lambda *_: "output 0 is 1 from the module's (relative)")
    other = Recipe(
        "double",
        _Double,
        (torch.zeros(4),),
        None,
        tmp_path / "compiled" / "other.pt2",
        (accelerate.INDUCTOR,),
    )
    with caplog.at_level(logging.WARNING):
        part = Part(other, Compile.COMPILED)
    assert not part.compiled and torch.equal(part(x)[0], x * 2 + 1)  # eager, and right
    assert not other.path.exists() and "is 1 from the module's" in other.rejected.read_text()
    assert "runs eagerly" in caplog.text
    monkeypatch.setattr(accelerate, "build_package", lambda *_: pytest.fail("built again"))
    assert not Part(other, Compile.COMPILED).compiled  # a later run does not try again
