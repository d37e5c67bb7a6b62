"""MobileSAM weights: find, download once, verify, load strictly.

The released checkpoint (``mobile_sam.pt``, 40.7 MB, 439 tensors) is a plain state dict in the
layout of the official ``vit_t`` model, which kornia's MobileSAM takes without renaming.
"""

from __future__ import annotations

import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
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
# The release is 40.7 MB of float32 tensors (10,140,231 values); anything far off is not it.
RELEASE_SIZE_RANGE = (39_000_000, 43_000_000)
DOWNLOAD_TIMEOUT_S = 30.0


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/samstream`` or ``~/.cache/samstream``."""
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
    size_range: tuple[int, int] = RELEASE_SIZE_RANGE,
) -> Path:
    """Download the first URL that answers to ``dest`` (atomically), checking size and layout.

    Raises:
        WeightsUnavailableError: no URL gave a file of the released size; the message names each failure.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                total = int(resp.headers.get("Content-Length") or 0)
                done = 0
                if not quiet:
                    print(f"downloading MobileSAM weights from {url}", file=sys.stderr)
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    if not quiet and total:
                        print(f"\r  {done / 1e6:6.1f} / {total / 1e6:.1f} MB", end="", file=sys.stderr)
                if not quiet and total:
                    print(file=sys.stderr)
            lo, hi = size_range
            if not lo <= done <= hi:
                raise CheckpointError(f"got {done} bytes, the release has {lo}-{hi}")
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
) -> Path:
    """The checkpoint to load: ``checkpoint`` if given, else the cached release, downloaded once if needed."""
    if checkpoint is not None:
        p = Path(checkpoint).expanduser()
        if not p.is_file():
            raise CheckpointError(f"checkpoint not found: {p}")
        return p
    cached = (cache_dir or default_cache_dir()) / CHECKPOINT_NAME
    if cached.is_file():
        return cached
    if not allow_download:
        raise WeightsUnavailableError(
            f"no MobileSAM weights: no --checkpoint given and none cached at {cached}. "
            f"Pass --checkpoint PATH to a {CHECKPOINT_NAME}, or run with --weights random for a smoke test."
        )
    return download(urls, cached)
