"""MobileSAM weights: find, download once, verify, load strictly.

The released checkpoint (``mobile_sam.pt``, 40.7 MB, 439 tensors) is a plain state dict in the
layout of the official ``vit_t`` model, which kornia's MobileSAM takes without renaming.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import CheckpointError, WeightsUnavailableError

if TYPE_CHECKING:
    import torch

CHECKPOINT_NAME = "mobile_sam.pt"
RELEASE_URLS: tuple[str, ...] = (
    "https://github.com/ChaoningZhang/MobileSAM/raw/a509aac54fdd7af59f843135f2f7cee307283c88/weights/mobile_sam.pt",
    "https://huggingface.co/kornia/mobile_sam/resolve/main/mobile_sam.pt",
)
DOWNLOAD_TIMEOUT_S = 30.0
# Next to the cached file: its SHA-256 and the (size, mtime, ctime, inode) it was computed for, so a
# start hashes 40 MB only when the file changed. A write changes ctime, which no user can set back.
DIGEST_SUFFIX = ".sha256.json"


@dataclass(frozen=True)
class Release:
    """The released checkpoint: its exact size and SHA-256 (lowercase hex)."""

    size: int
    sha256: str


# mobile_sam.pt as released (commit a509aac of ChaoningZhang/MobileSAM; the same bytes on Hugging Face).
RELEASE = Release(size=40_728_226, sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f")


def sha256_of(path: Path) -> str:
    """SHA-256 of the file at ``path``, lowercase hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _recorded_digest(path: Path) -> str:
    """The SHA-256 of ``path``: from its sidecar if the file has not changed since, else computed (and recorded)."""
    sidecar = path.with_name(path.name + DIGEST_SUFFIX)
    stamp = _stamp(path)
    try:
        record = json.loads(sidecar.read_text())
        if record["stamp"] == stamp and isinstance(record["sha256"], str):
            return record["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = sha256_of(path)
    if _stamp(path) == stamp:  # not changed while it was read
        try:
            tmp = sidecar.with_suffix(".tmp")
            tmp.write_text(json.dumps({"stamp": stamp, "sha256": digest}) + "\n")
            tmp.replace(sidecar)
        except OSError:
            pass  # a read-only cache: hashed again at the next start, still checked
    return digest


def check_release(path: Path, release: Release | None = None) -> None:
    """Raise :class:`CheckpointError` unless the cached ``path`` has the release's size and SHA-256.

    The message names both hashes and both ways out: delete the file (it is downloaded again), or
    pass ``--checkpoint PATH`` for weights of one's own.
    """
    want = release or RELEASE
    size = path.stat().st_size
    got = _recorded_digest(path) if size == want.size else sha256_of(path)
    if size == want.size and got == want.sha256:
        return
    raise CheckpointError(
        f"cached weights {path} are not the MobileSAM release: {size:,} bytes, SHA-256 {got}; the release is "
        f"{want.size:,} bytes, SHA-256 {want.sha256}. Delete {path} to download it again, "
        "or pass --checkpoint PATH to use weights of your own"
    )


CACHE_ENV = "SAMSTREAM_CACHE_DIR"


def env_cache_dir() -> Path | None:
    """``$SAMSTREAM_CACHE_DIR``, the cache folder the user chose (None: not set)."""
    value = os.environ.get(CACHE_ENV)
    return Path(value) if value else None


def default_cache_dir() -> Path:
    """Where the weights and compiled packages are cached when no folder is given: the user's
    ``$SAMSTREAM_CACHE_DIR``, else ``$XDG_CACHE_HOME/samstream`` or ``~/.cache/samstream``."""
    chosen = env_cache_dir()
    if chosen is not None:
        return chosen
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "samstream"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint file with ``weights_only=True`` and return its state dict.

    Raises:
        CheckpointError: the file is missing, unreadable, or not a state dict of tensors.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        reason = _first_line(exc)
        if "Weights only load failed" in reason or "invalid load key" in reason:
            reason = "not a PyTorch file of tensors (a state dict is expected)"
        raise CheckpointError(f"cannot load checkpoint {p}: {reason}") from None
    if isinstance(data, Mapping):
        for wrapper in ("model", "state_dict"):
            inner = data.get(wrapper)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                data = inner
                break
    if (
        not isinstance(data, Mapping)
        or not data
        or not all(isinstance(v, torch.Tensor) for v in data.values())
    ):
        raise CheckpointError(f"checkpoint {p} is not a state dict of tensors (got {type(data).__name__})")
    return dict(data)


def _listed(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, … ({len(keys)} in all)" if len(keys) > limit else shown


def check_layout(
    state_dict: Mapping[str, Any], expected: Mapping[str, Any], source: str = "checkpoint"
) -> None:
    """Raise :class:`CheckpointError` unless keys and shapes equal those of ``expected`` exactly.

    The message lists the missing keys, the unexpected keys and the shape mismatches.
    """
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listed(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {_listed(mismatched)}")
        raise CheckpointError(f"{source} is not in the MobileSAM (vit_t) layout; " + "; ".join(parts))


def verify_release(path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` loads strictly into MobileSAM."""
    from pipeline.model.architecture import build_mobile_sam

    check_layout(load_state_dict(path), build_mobile_sam(1024).state_dict(), f"downloaded file {path}")


def download(
    urls: Sequence[str],
    dest: Path,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    quiet: bool = False,
    release: Release | None = None,
) -> Path:
    """Download the first URL that answers to ``dest`` (atomically), checking size, SHA-256 and layout.

    Raises:
        WeightsUnavailableError: no URL gave the release's bytes; the message names each failure
            (for a wrong file, its SHA-256 and the release's).
    """
    want = release or RELEASE
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                total = int(resp.headers.get("Content-Length") or 0)
                done = 0
                digest = hashlib.sha256()
                if not quiet:
                    print(f"downloading MobileSAM weights from {url}", file=sys.stderr)
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if not quiet and total:
                        print(f"\r  {done / 1e6:6.1f} / {total / 1e6:.1f} MB", end="", file=sys.stderr)
                if not quiet and total:
                    print(file=sys.stderr)
            got = digest.hexdigest()
            if done != want.size or got != want.sha256:
                raise CheckpointError(
                    f"got {done:,} bytes with SHA-256 {got}, the release is {want.size:,} bytes "
                    f"with SHA-256 {want.sha256}"
                )
            verify_release(Path(tmp))
            os.replace(tmp, dest)
            return dest
        except (OSError, urllib.error.URLError, ValueError, CheckpointError) as exc:
            failures.append(f"{url}: {_first_line(exc)}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise WeightsUnavailableError(
        f"no MobileSAM weights: nothing cached at {dest} and the download failed ({'; '.join(failures)}). "
        f"Download {CHECKPOINT_NAME} by hand and pass --checkpoint PATH (or save it as {dest}), "
        "or run with --weights random for a smoke test with random weights."
    )


def resolve_checkpoint(
    checkpoint: str | Path | None,
    cache_dir: Path | None = None,
    urls: Sequence[str] = RELEASE_URLS,
    allow_download: bool = True,
    release: Release | None = None,
) -> Path:
    """The checkpoint to load: ``checkpoint`` if given, else the cached release, downloaded once if needed.

    A given ``checkpoint`` is the user's own and is not compared with the release. The cached
    release is checked (size and SHA-256) at every call; its hash is recomputed only when the
    file changed since it was last hashed.

    Raises:
        CheckpointError: ``checkpoint`` is missing, or the cached file is not the release.
        WeightsUnavailableError: nothing cached and the download failed (or is not allowed).
    """
    if checkpoint is not None:
        p = Path(checkpoint).expanduser()
        if not p.is_file():
            raise CheckpointError(f"checkpoint not found: {p}")
        return p
    cached = (cache_dir or default_cache_dir()) / CHECKPOINT_NAME
    if cached.is_file():
        check_release(cached, release)
        return cached
    if not allow_download:
        raise WeightsUnavailableError(
            f"no MobileSAM weights: no --checkpoint given and none cached at {cached}. "
            f"Pass --checkpoint PATH to a {CHECKPOINT_NAME}, or run with --weights random for a smoke test."
        )
    return download(urls, cached, release=release)
