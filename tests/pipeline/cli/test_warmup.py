"""`samstream warmup`: compiles ahead of time, once; a run afterwards starts on the packages."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import WARMUP_ARGS, CompiledCache, warmup


@pytest.mark.slow
def test_warmup_compiles_both_parts_once_and_the_model_loads_them(compiled_cache: CompiledCache) -> None:
    first = compiled_cache.first  # the session's one compile (an empty cache folder)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.strip().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["mask decoder", "encoder"], first.stdout
    assert all("compiled in" in line for line in lines), first.stdout
    assert "compiling the encoder" in first.stderr  # progress on a long step
    packages = sorted(p.name for p in (compiled_cache.path / "compiled").glob("*.pt2"))
    assert [p.split("-")[0] for p in packages] == ["encoder", "mask"], packages

    again = warmup(compiled_cache.path, *WARMUP_ARGS)
    assert again.returncode == 0 and again.stdout.count("already compiled") == 2, again.stdout

    from pipeline.config import ModelConfig
    from pipeline.model import MobileSam

    config = ModelConfig(weights="random", image_size=256, precision="fp32", cache_dir=compiled_cache.path)
    model = MobileSam.from_config(config)
    model.warm(encoder=True, decoder=True)
    assert model.encoder.compiled and model.mask_decoder.compiled  # what a run starts on


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--weights", "null"), "--weights null has nothing to compile"),
        (("--weights", "random", "--compile", "eager"), "--compile eager compiles nothing"),
        (("--weights", "random", "--precision", "fp16", "--device", "cpu"), "fp16 runs on a GPU only"),
    ],
)
def test_warmup_refuses_what_it_cannot_do_in_one_line(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    res = warmup(tmp_path, *args)
    assert res.returncode == 1 and says in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
