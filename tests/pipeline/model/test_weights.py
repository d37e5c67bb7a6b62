"""Weights: the official layout, strict loading, the cache and the download path."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.errors import CheckpointError, WeightsUnavailableError
from pipeline.model import weights
from pipeline.model.architecture import build_mobile_sam
from pipeline.model.segmenter import load_sam
from pipeline.model.weights import (
    DIGEST_SUFFIX,
    RELEASE,
    RELEASE_URLS,
    Release,
    check_layout,
    download,
    load_state_dict,
    resolve_checkpoint,
    sha256_of,
)
from tests.fixtures.http import serve_directory

# A copy of ../shared/mobile_sam_state_dict.tsv: every tensor of the released checkpoint.
TSV = Path(__file__).resolve().parents[2] / "fixtures" / "mobile_sam_state_dict.tsv"


def _official_rows() -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        dims = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        rows.append((key, dims, dtype))
    return rows


def test_state_dict_matches_official_listing_key_for_key() -> None:
    rows = _official_rows()
    state = build_mobile_sam(1024).state_dict()
    assert len(rows) == 439
    assert sorted(state) == sorted(k for k, _, _ in rows)
    for key, shape, dtype in rows:
        assert tuple(state[key].shape) == shape, key
        assert str(state[key].dtype).removeprefix("torch.") == dtype, key


@pytest.mark.parametrize("size", [256, 512, 1024])
def test_every_image_size_takes_the_same_checkpoint(size: int) -> None:
    ref = build_mobile_sam(1024).state_dict()
    check_layout(build_mobile_sam(size).state_dict(), ref)


def test_checkpoint_loads_strictly_and_reproduces_weights(checkpoint: Path) -> None:
    model = load_sam(ModelConfig(checkpoint=checkpoint, image_size=256))
    saved = torch.load(checkpoint, weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_wrong_layout_lists_missing_and_unexpected_keys(tmp_path: Path, checkpoint: Path) -> None:
    state = torch.load(checkpoint, weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["image_encoder.patch_embed.seq.0.c.weight"] = torch.zeros(1, 2, 3)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError) as err:
        load_sam(ModelConfig(checkpoint=bad, image_size=256))
    msg = str(err.value)
    assert "missing keys: mask_decoder.iou_token.weight" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "image_encoder.patch_embed.seq.0.c.weight (1, 2, 3) != (32, 3, 3, 3)" in msg


def test_wrapped_state_dict_is_accepted(tmp_path: Path, checkpoint: Path) -> None:
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": torch.load(checkpoint, weights_only=True)}, wrapped)
    assert len(load_state_dict(wrapped)) == 439


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint", b"\x80\x04K\x01."])
def test_unreadable_checkpoint_is_one_clear_error(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "x.pt"
    f.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"cannot load checkpoint|not a state dict"):
        load_state_dict(f)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "evil.pt"
    torch.save({"x": torch.nn.Linear(2, 2)}, f)  # a module, not tensors: weights_only refuses it
    with pytest.raises(CheckpointError, match="not a PyTorch file of tensors"):
        load_state_dict(f)


def _release_of(path: Path) -> Release:
    """A stand-in release: the test checkpoint's own size and hash (the real one is not downloaded)."""
    return Release(path.stat().st_size, sha256_of(path))


def test_the_release_is_pinned() -> None:
    assert Release(40_728_226, "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f") == RELEASE


def test_cached_release_is_used_without_network(tmp_path: Path, checkpoint: Path) -> None:
    (tmp_path / "mobile_sam.pt").write_bytes(checkpoint.read_bytes())
    release = _release_of(checkpoint)
    got = resolve_checkpoint(None, tmp_path, urls=["http://127.0.0.1:9/never-asked"], release=release)
    assert got == tmp_path / "mobile_sam.pt"


def test_cached_file_is_checked_at_every_load_and_a_change_is_caught(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = tmp_path / "mobile_sam.pt"
    cached.write_bytes(checkpoint.read_bytes())
    monkeypatch.setattr(weights, "RELEASE", _release_of(checkpoint))  # as loaders call it: no argument
    assert resolve_checkpoint(None, tmp_path, allow_download=False) == cached
    sidecar = tmp_path / ("mobile_sam.pt" + DIGEST_SUFFIX)
    assert json.loads(sidecar.read_text())["sha256"] == weights.RELEASE.sha256

    hashed: list[Path] = []
    real = weights.sha256_of
    monkeypatch.setattr(weights, "sha256_of", lambda p: hashed.append(p) or real(p))
    assert resolve_checkpoint(None, tmp_path, allow_download=False) == cached
    assert hashed == []  # unchanged since hashed: the recorded hash is used

    # One byte changed in place, its modification time put back: the change time still tells.
    stat = cached.stat()
    with open(cached, "r+b") as f:
        f.seek(stat.st_size // 2)
        byte = f.read(1)
        f.seek(stat.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint(None, tmp_path, allow_download=False)
    msg = str(err.value)
    assert hashed == [cached]
    assert sha256_of(cached) in msg and weights.RELEASE.sha256 in msg  # both hashes
    assert f"Delete {cached} to download it again" in msg and "--checkpoint PATH" in msg  # both ways out


def test_a_cached_file_of_another_size_names_both_hashes(tmp_path: Path) -> None:
    cached = tmp_path / "mobile_sam.pt"
    cached.write_bytes(b"not the weights")
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint(None, tmp_path, allow_download=False)
    msg = str(err.value)
    assert "15 bytes" in msg and "40,728,226 bytes" in msg
    assert sha256_of(cached) in msg and RELEASE.sha256 in msg and "--checkpoint PATH" in msg


def test_a_given_checkpoint_is_not_compared_with_the_release(checkpoint: Path) -> None:
    assert resolve_checkpoint(checkpoint, allow_download=False) == checkpoint


def test_offline_without_file_names_both_ways_out(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_checkpoint(None, tmp_path, allow_download=False)
    assert "--checkpoint" in str(err.value) and "--weights random" in str(err.value)


def test_release_urls_point_at_the_official_file() -> None:
    assert all(u.startswith("https://") and u.endswith("/mobile_sam.pt") for u in RELEASE_URLS)


@pytest.fixture()
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    with serve_directory(root) as base:
        yield base, root


def test_download_verifies_and_caches(http_dir: tuple[str, Path], tmp_path: Path, checkpoint: Path) -> None:
    base, root = http_dir
    (root / "mobile_sam.pt").write_bytes(checkpoint.read_bytes())
    (root / "small.pt").write_bytes(b"x" * 1000)
    cache = tmp_path / "cache"
    # The first URL gives a file of the wrong size, the second one is missing, the third one is good.
    got = resolve_checkpoint(
        None,
        cache,
        urls=[f"{base}/small.pt", f"{base}/missing.pt", f"{base}/mobile_sam.pt"],
        release=_release_of(checkpoint),
    )
    assert got == cache / "mobile_sam.pt"
    assert got.read_bytes() == checkpoint.read_bytes()
    assert not list(cache.glob("*.part"))  # no partial file left behind


def test_download_of_a_wrong_file_names_both_hashes(
    http_dir: tuple[str, Path], tmp_path: Path, checkpoint: Path
) -> None:
    base, root = http_dir
    (root / "mobile_sam.pt").write_bytes(checkpoint.read_bytes())  # a MobileSAM, but not the release
    cache = tmp_path / "cache"
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_checkpoint(None, cache, urls=[f"{base}/mobile_sam.pt"])
    msg = str(err.value)
    assert sha256_of(checkpoint) in msg and RELEASE.sha256 in msg and "40,728,226 bytes" in msg
    assert "--checkpoint PATH" in msg
    assert not list(cache.iterdir())  # nothing cached, no partial file


def test_download_rejects_a_file_of_the_wrong_layout(http_dir: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_dir
    torch.save({"w": torch.zeros(10_300_000)}, root / "other.pt")  # wrong tensors, hash taken as good
    release = _release_of(root / "other.pt")
    with pytest.raises(WeightsUnavailableError, match="not in the MobileSAM"):
        download([f"{base}/other.pt"], tmp_path / "mobile_sam.pt", quiet=True, release=release)
    assert not (tmp_path / "mobile_sam.pt").exists()


def test_failed_download_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_checkpoint(None, tmp_path, urls=["http://127.0.0.1:9/mobile_sam.pt"])
    msg = str(err.value)
    assert "127.0.0.1:9" in msg and "--checkpoint" in msg and "--weights random" in msg


def test_the_cache_folder_is_the_users_choice_wherever_none_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.model.accelerate import packages_dir

    monkeypatch.delenv("SAMSTREAM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.default_cache_dir() == tmp_path / "xdg" / "samstream"
    assert weights.env_cache_dir() is None
    # $SAMSTREAM_CACHE_DIR: for the CLI's options (env_cache_dir) and for whatever takes the default (the
    # benchmark's models, the Python API without a cache_dir), packages included.
    monkeypatch.setenv("SAMSTREAM_CACHE_DIR", str(tmp_path / "chosen"))
    assert weights.default_cache_dir() == tmp_path / "chosen"
    assert weights.env_cache_dir() == tmp_path / "chosen"
    assert packages_dir(None) == tmp_path / "chosen" / "compiled"
