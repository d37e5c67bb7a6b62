"""Float32 arrays in tracking snapshots: base64 in JSON, or raw bytes where the store keeps bytes."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.errors import InvalidInputError


def encode_array(array: np.ndarray | None, binary: bool = False) -> dict[str, Any] | None:
    """``{"shape", "dtype": "float32", "data"}``: ``data`` the little-endian bytes, as base64 text
    (JSON) or, with ``binary``, as they are."""
    if array is None:
        return None
    raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    data: bytes | str = raw if binary else base64.b64encode(raw).decode("ascii")
    return {"shape": list(array.shape), "dtype": "float32", "data": data}


def decode_array(data: Mapping[str, Any] | None, max_shape: tuple[int, ...]) -> np.ndarray | None:
    """Inverse of :func:`encode_array`: a read-only float32 array, or None.

    Raises:
        InvalidInputError: not float32, a shape of another rank than ``max_shape`` or larger
            than it on some axis (checked before any memory is taken), or data of another length.
    """
    if data is None:
        return None
    if data.get("dtype") != "float32":
        raise InvalidInputError(f"a snapshot's array must be float32, got {data.get('dtype')!r}")
    shape = tuple(int(v) for v in data["shape"])
    if len(shape) != len(max_shape) or not all(0 < v <= m for v, m in zip(shape, max_shape, strict=True)):
        raise InvalidInputError(f"a snapshot's array must be of shape up to {max_shape}, got {shape}")
    encoded = data["data"]
    raw = encoded if isinstance(encoded, bytes) else base64.b64decode(encoded, validate=True)
    if len(raw) != 4 * math.prod(shape):
        raise InvalidInputError(
            f"an array of shape {shape} needs {4 * math.prod(shape)} bytes, got {len(raw)}"
        )
    out = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)
    out.setflags(write=False)
    return out


def resize_square(array: np.ndarray, side: int) -> np.ndarray:
    """A (n, n) float32 array resampled bilinearly to (side, side), read-only (pixel centres at
    half-integers, edges clamped, as ``F.interpolate(..., mode="bilinear", align_corners=False)``).

    Low-resolution logits live in the padded, square encoder-input frame, whose content keeps its
    place whatever the encoder size: moving a track's logits to another size is this resampling.
    """
    n = array.shape[0]
    if array.ndim != 2 or array.shape[1] != n or n < 1 or side < 1:
        raise InvalidInputError(
            f"expected a square (n, n) array and a side >= 1, got {array.shape} and {side}"
        )
    if side == n:
        out = np.array(array, dtype=np.float32)
        out.setflags(write=False)
        return out
    pos = np.clip((np.arange(side, dtype=np.float64) + 0.5) * (n / side) - 0.5, 0, n - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    w = (pos - lo).astype(np.float32)
    a = np.asarray(array, dtype=np.float32)
    rows = a[lo] * (1 - w)[:, None] + a[hi] * w[:, None]
    out = rows[:, lo] * (1 - w)[None, :] + rows[:, hi] * w[None, :]
    out = np.ascontiguousarray(out, dtype=np.float32)
    out.setflags(write=False)
    return out
