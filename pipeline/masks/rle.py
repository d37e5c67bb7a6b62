"""COCO run-length encoding (RLE) of binary masks, byte-for-byte compatible with pycocotools.

An RLE is ``{"size": [H, W], "counts": ...}``. The mask is flattened in column-major (Fortran)
order, i.e. down the first column, then down the second, and cut into runs of equal value. Runs
alternate background / foreground and always start with background, so a mask whose first pixel
is foreground starts with a run of length 0. The run lengths sum to ``H * W``.

``counts`` is either the list of run lengths ("uncompressed", as accepted by pycocotools'
``frPyObjects``) or COCO's compressed string (``rleToString`` in ``maskApi.c``): each run length,
from the fourth on replaced by its difference to the run two places before it (same value, so the
difference is small), is written as a signed little-endian number in 5-bit groups, one ASCII
character per group: bit 0x20 says that another group follows, bit 0x10 of the last group is the
sign, and 48 (``"0"``) is added so every character lies in ``"0"`` to ``"o"``.

Everything here works on whole numpy arrays; no Python loop runs over pixels or characters.

RLEs come from untrusted clients (the API, prompts files), so reading one is bounded before it
starts: the size (H·W at most ``max_pixels``, :data:`MAX_RLE_PIXELS` unless a caller gives less)
is checked first, run lengths are checked in Python integers or against H·W before any sum, and
nothing is decoded to be re-encoded. Only :func:`decode_rle` makes a mask, of H·W bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.errors import InvalidInputError

_OFFSET = 48  # ord("0"): the compressed string's characters are 48 + a 6-bit group
_MORE = 0x20  # continuation bit of a group
_SIGN = 0x10  # sign bit of the last group of a number
_BITS = 5  # payload bits per group
# Counts are uint32 in pycocotools, so a difference needs at most 33 signed bits = 7 groups. Decoding
# rejects longer numbers, which also keeps the running sums far from int64 overflow.
_MAX_GROUPS = 7
# The most pixels an RLE may describe, whatever else limits it (a service passes its own, smaller
# --max-frame-pixels): 2**30 (32768 x 32768), far past any video frame. Checked before anything is
# read or decoded; it also keeps every sum of run lengths exact in int64 (see :func:`_parse`).
MAX_RLE_PIXELS = 1 << 30
# A non-negative y fits in n groups (as a signed number) iff y < 2**(5n - 1); encoding goes up to 12
# groups (60 bits) so that even counts beyond uint32 are written correctly.
_GROUP_LIMITS = np.array([1 << (_BITS * n - 1) for n in range(1, 13)], dtype=np.int64)


def encode_rle(mask: npt.NDArray[Any], bbox: tuple[int, int, int, int] | None = None) -> dict[str, Any]:
    """Encode a binary mask as a compressed COCO RLE.

    Args:
        mask: (H, W) bool or integer array, any memory order; nonzero is foreground.
        bbox: the mask's :func:`mask_bbox` when known (the caller vouches that no foreground lies
            outside it): only that box is scanned, which for an object over a tenth of the frame
            is several times faster.

    Returns:
        ``{"size": [H, W], "counts": str}``, equal to ``pycocotools.mask.encode`` of the same mask
        (as a Fortran-ordered uint8 array) with ``counts`` decoded from ASCII bytes to ``str``.
        pycocotools starts a new run at every change of value, so it agrees only for masks with
        one foreground value; a mask mixing, say, 1 and 255 is read here as all foreground.

    Raises:
        InvalidInputError: ``mask`` is not a 2-D bool or integer array.
    """
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        shape = getattr(mask, "shape", None)
        raise InvalidInputError(
            f"expected a 2-D (H, W) mask array, got {type(mask).__name__} of shape {shape}"
        )
    if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.integer):
        raise InvalidInputError(f"expected a bool or integer mask, got dtype {mask.dtype}")
    h, w = mask.shape
    counts = _runs(mask, bbox)
    return {"size": [int(h), int(w)], "counts": _counts_to_string(counts)}


def decode_rle(rle: Mapping[str, Any], max_pixels: int = MAX_RLE_PIXELS) -> npt.NDArray[np.bool_]:
    """Decode a COCO RLE into a binary mask.

    Args:
        rle: ``{"size": [H, W], "counts": c}`` where ``c`` is the compressed string (``str`` or
            ``bytes``) or the uncompressed list of run lengths.
        max_pixels: the most pixels (H·W) the mask may have; checked before anything is read.

    Returns:
        (H, W) bool array, C-contiguous.

    Raises:
        InvalidInputError: the size is not two non-negative integers, the counts string holds a
            character outside ``"0"``-``"o"`` or ends mid-number, a run length is negative, or the
            run lengths do not sum to ``H * W``; or H·W is over ``max_pixels``.
    """
    (h, w), counts = _parse(rle, max_pixels)
    values = np.zeros(counts.size, dtype=np.bool_)
    values[1::2] = True
    flat = np.repeat(values, counts)
    # The flat array is column-major: reshape to (W, H) and transpose; copy to C order for callers.
    return np.ascontiguousarray(flat.reshape(w, h).T)


def rle_area(rle: Mapping[str, Any], max_pixels: int = MAX_RLE_PIXELS) -> int:
    """Count the foreground pixels of a COCO RLE from its run lengths, without decoding the mask.

    Args:
        rle, max_pixels: as for :func:`decode_rle`.

    Returns:
        The number of foreground pixels, equal to ``pycocotools.mask.area``.

    Raises:
        InvalidInputError: as for :func:`decode_rle`.
    """
    _, counts = _parse(rle, max_pixels)
    return int(counts[1::2].sum())


def rle_bbox(rle: Mapping[str, Any], max_pixels: int = MAX_RLE_PIXELS) -> tuple[int, int, int, int] | None:
    """The tight bounding box of a COCO RLE's foreground, from its run lengths (no mask is decoded).

    Args:
        rle, max_pixels: as for :func:`decode_rle`.

    Returns:
        (x0, y0, x1, y1) in pixels, XYXY with x1 and y1 exclusive (as :func:`mask_bbox`), or None
        if the mask is empty.

    Raises:
        InvalidInputError: as for :func:`decode_rle`.
    """
    return rle_area_and_bbox(rle, max_pixels)[1]


def rle_area_and_bbox(
    rle: Mapping[str, Any], max_pixels: int = MAX_RLE_PIXELS
) -> tuple[int, tuple[int, int, int, int] | None]:
    """:func:`rle_area` and :func:`rle_bbox` of one RLE, read once."""
    (h, _), counts = _parse(rle, max_pixels)
    area = int(counts[1::2].sum())
    ends = np.cumsum(counts)
    starts = ends - counts
    fg = np.flatnonzero(counts[1::2]) * 2 + 1  # foreground runs that hold a pixel
    if fg.size == 0:
        return area, None
    first, last = starts[fg], ends[fg] - 1  # column-major positions of each run's first and last pixel
    col0, col1 = first // h, last // h
    # A run within one column covers its own rows; one that wraps into the next column reaches
    # the bottom of the first and the top of the next, so every row between.
    wraps = col1 > col0
    y0 = np.where(wraps, 0, first % h).min()
    y1 = np.where(wraps, h - 1, last % h).max() + 1
    return area, (int(col0.min()), int(y0), int(col1.max()) + 1, int(y1))


def compress_rle(rle: Mapping[str, Any], max_pixels: int = MAX_RLE_PIXELS) -> dict[str, Any]:
    """The same RLE with compressed string counts (uncompressed list counts are re-written).

    Args:
        rle, max_pixels: as for :func:`decode_rle`.

    Returns:
        ``{"size": [H, W], "counts": str}``, as :func:`encode_rle` writes for the same mask. No
        mask is decoded: the runs are rewritten from the runs.

    Raises:
        InvalidInputError: as for :func:`decode_rle`.
    """
    (h, w), counts = _parse(rle, max_pixels)
    return {"size": [h, w], "counts": _counts_to_string(_canonical_runs(counts))}


def mask_bbox(mask: npt.NDArray[Any]) -> tuple[int, int, int, int] | None:
    """The tight bounding box of a mask's foreground.

    Args:
        mask: (H, W) array; nonzero is foreground.

    Returns:
        (x0, y0, x1, y1) in pixels, XYXY with x1 and y1 exclusive, or None if the mask is empty.

    Raises:
        InvalidInputError: ``mask`` is not 2-D.
    """
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        shape = getattr(mask, "shape", None)
        raise InvalidInputError(
            f"expected a 2-D (H, W) mask array, got {type(mask).__name__} of shape {shape}"
        )
    rows = np.flatnonzero(np.any(mask, axis=1))
    if rows.size == 0:
        return None
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(np.any(mask[y0:y1], axis=0))
    return int(cols[0]), y0, int(cols[-1]) + 1, y1


def _runs(mask: npt.NDArray[Any], bbox: tuple[int, int, int, int] | None = None) -> npt.NDArray[np.int64]:
    """Run lengths of an (H, W) mask in column-major order, starting with background; int64."""
    binary = mask if mask.dtype == np.bool_ else mask != 0
    h, w = binary.shape
    n = h * w
    if bbox is not None and n:
        changes = _changes_in_box(binary, bbox)
    elif binary.flags.f_contiguous or n == 0:
        # np.diff of a bool array is a bool "value changed" array; flatnonzero has a fast path for bool.
        changes = np.flatnonzero(np.diff(binary.ravel(order="F"))) + 1
    else:
        # A C-ordered mask: the column-major copy would cost more than all the rest (~1 ms for
        # 720p), so find the changes in place. Column-major position c*h + r starts a run where
        # pixel (r, c) differs from the one above it, or (r = 0) from the bottom of column c - 1.
        rows, cols = np.divmod(np.flatnonzero(binary[1:] != binary[:-1]), w)  # 2-D nonzero is slow
        wraps = np.flatnonzero(binary[0, 1:] != binary[-1, :-1]) + 1
        changes = np.sort(np.concatenate((cols * h + rows + 1, wraps * h)))
    bounds = np.concatenate(([0], changes, [n]))
    counts = np.diff(bounds)
    if n and binary.flat[0]:
        counts = np.concatenate(([0], counts))
    return counts.astype(np.int64, copy=False)


def _canonical_runs(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Valid run lengths with every zero-length run after the first merged away, as :func:`_runs`
    writes them for the same mask (pycocotools never writes a zero run but the leading one).

    A zero run joins its two neighbours, which have the same value: runs alternate background and
    foreground, so a run's value is its index's parity. Drop the empty runs, then add up each
    stretch of neighbours of one value; a mask that starts with foreground keeps its leading 0.
    """
    if counts.size and counts[1:].all():
        return counts
    index = np.flatnonzero(counts)
    if index.size == 0:  # an empty (0-pixel) mask: one empty background run, as _runs writes it
        return np.zeros(1, np.int64)
    value = index & 1
    starts = np.concatenate(([0], np.flatnonzero(value[1:] != value[:-1]) + 1))
    merged = np.add.reduceat(counts[index], starts)
    return np.concatenate(([0], merged)) if value[0] else merged


def _changes_in_box(binary: npt.NDArray[np.bool_], bbox: tuple[int, int, int, int]) -> npt.NDArray[np.int64]:
    """Column-major positions (> 0) where a run starts, for a mask whose foreground lies in ``bbox``.

    Each column's slice of the box is read between two background sentinels: the pixels just above
    and below it, which lie outside the box (so are background) unless the box spans the full
    height. Then one column's bottom sentinel and the next one's top stand for the same position,
    the top of the next column: a change there is reported once per side that is foreground, so a
    position reported twice (foreground on both sides) is no change.
    """
    h, w = binary.shape
    x0, y0, x1, y1 = (max(0, int(v)) for v in bbox)
    x1, y1 = min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return np.zeros(0, np.int64)
    padded = np.zeros((y1 - y0 + 2, x1 - x0), np.bool_)
    padded[1:-1] = binary[y0:y1, x0:x1]
    rows, cols = np.divmod(np.flatnonzero(padded[1:] != padded[:-1]), x1 - x0)
    positions = np.sort((cols + x0) * h + y0 + rows)
    if y0 == 0 and y1 == h and positions.size:
        twice = np.flatnonzero(positions[1:] == positions[:-1])
        positions = np.delete(positions, np.concatenate((twice, twice + 1)))
    return positions[(positions > 0) & (positions < h * w)]


def _counts_to_string(counts: npt.NDArray[np.int64]) -> str:
    """COCO's ``rleToString``: run lengths (1-D int64) to the compressed ASCII string."""
    x = counts.copy()
    x[3:] -= counts[1:-2]  # COCO differences from the fourth count on (``i > 2``), not the third
    # Groups per number: the fewest that hold x as a signed number (~x maps negatives to >= 0).
    groups = np.searchsorted(_GROUP_LIMITS, np.where(x < 0, ~x, x), side="right") + 1
    owner = np.repeat(np.arange(x.size), groups)
    first = np.cumsum(groups) - groups
    k = np.arange(owner.size) - first[owner]  # index of each group within its number
    chars = (x[owner] >> (_BITS * k)) & 0x1F
    chars |= np.where(k < groups[owner] - 1, _MORE, 0)
    return (chars + _OFFSET).astype(np.uint8).tobytes().decode("ascii")


def _string_to_counts(s: str | bytes) -> npt.NDArray[np.int64]:
    """COCO's ``rleFrString``: the compressed string to run lengths (1-D int64, not yet validated)."""
    if isinstance(s, str):
        try:
            s = s.encode("ascii")
        except UnicodeEncodeError as e:
            raise InvalidInputError(
                f"RLE counts string must be ASCII, got non-ASCII character at {e.start}"
            ) from e
    c = np.frombuffer(s, dtype=np.uint8).astype(np.int64) - _OFFSET
    bad = np.flatnonzero((c < 0) | (c > 0x3F))
    if bad.size:
        i = int(bad[0])
        raise InvalidInputError(
            f"RLE counts string may only hold characters '0' to 'o', got {chr(s[i])!r} at position {i}"
        )
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    last = (c & _MORE) == 0  # the last group of each number
    if not last[-1]:
        raise InvalidInputError(
            "RLE counts string ends in the middle of a number (last character has bit 0x20)"
        )
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    groups = ends - starts + 1
    if groups.max() > _MAX_GROUPS:
        raise InvalidInputError(f"RLE counts string holds a number longer than {_MAX_GROUPS} characters")
    owner = np.repeat(np.arange(ends.size), groups)
    k = np.arange(c.size) - starts[owner]
    x = np.add.reduceat((c & 0x1F) << (_BITS * k), starts)
    negative = (c[ends] & _SIGN) != 0
    x[negative] -= np.left_shift(1, _BITS * groups[negative], dtype=np.int64)  # sign-extend
    # Undo the differencing: odd and even positions from 1 and 2 on are separate running sums.
    counts = x.copy()
    counts[1::2] = np.cumsum(x[1::2])
    counts[2::2] = np.cumsum(x[2::2])
    return counts


def _parse(
    rle: Mapping[str, Any], max_pixels: int = MAX_RLE_PIXELS
) -> tuple[tuple[int, int], npt.NDArray[np.int64]]:
    """Validate an RLE mapping; return ((H, W), run lengths as 1-D int64 summing to H * W).

    The size is checked first, against ``max_pixels``, before the counts are looked at. Every run
    is then checked to lie in [0, H·W] (list counts as Python integers, so no value wraps round in
    a conversion); with H·W <= 2**30 and each compressed number under 2**34 in magnitude, the
    running sums that undo the differencing cannot overflow int64 before an out-of-range run shows,
    and the total of runs that each lie in [0, 2**30] is exact for any input that fits in memory.
    """
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise InvalidInputError(f"expected an RLE mapping with 'size' and 'counts', got {rle!r:.100}")
    h, w = _parse_size(rle["size"])
    limit = min(int(max_pixels), MAX_RLE_PIXELS)
    if h * w > limit:
        raise InvalidInputError(
            f"RLE size {h}x{w} is {h * w} pixels, more than the {limit} a mask may have here"
        )
    raw = rle["counts"]
    if isinstance(raw, str | bytes):
        counts = _string_to_counts(raw)
    elif isinstance(raw, np.ndarray):
        if raw.ndim != 1 or (raw.size and not np.issubdtype(raw.dtype, np.integer)):
            raise InvalidInputError(
                f"uncompressed RLE counts must be a flat list of ints, got {raw.dtype} of shape {raw.shape}"
            )
        if raw.size and (raw.min() < 0 or raw.max() > h * w):
            _out_of_range(raw.tolist(), h * w)
        counts = raw.astype(np.int64)
    elif isinstance(raw, Sequence):
        counts = _list_counts(raw, h * w)
    else:
        raise InvalidInputError(
            f"RLE counts must be a str, bytes or a list of ints, got {type(raw).__name__}"
        )
    if counts.size and (counts.min() < 0 or counts.max() > h * w):
        _out_of_range(counts.tolist(), h * w)
    total = int(counts.sum())
    if total != h * w:
        raise InvalidInputError(f"RLE run lengths sum to {total}, expected H * W = {h} * {w} = {h * w}")
    return (h, w), counts


def _list_counts(raw: Sequence[Any], pixels: int) -> npt.NDArray[np.int64]:
    """Uncompressed counts (a list) as int64, each checked as a Python integer in [0, ``pixels``]."""
    for i, v in enumerate(raw):
        if isinstance(v, bool) or not isinstance(v, Integral):
            raise InvalidInputError(
                f"uncompressed RLE counts must be a flat list of ints, got {type(v).__name__} at run {i}"
            )
    if not all(0 <= v <= pixels for v in raw):
        _out_of_range(raw, pixels)
    return np.array(raw, dtype=np.int64)


def _out_of_range(counts: Sequence[Any], pixels: int) -> None:
    """Raise for the first negative run of ``counts``, else the first one longer than ``pixels``."""
    values = [int(v) for v in counts]
    for i, v in enumerate(values):
        if v < 0:
            raise InvalidInputError(f"RLE run lengths must be non-negative, got {v} at run {i}")
    i, v = next((i, v) for i, v in enumerate(values) if v > pixels)
    raise InvalidInputError(f"RLE run {i} is {v} pixels long, more than the mask's H * W = {pixels}")


def _parse_size(size: Any) -> tuple[int, int]:
    """Validate an RLE's ``size``; return (H, W)."""
    is_pair = isinstance(size, Sequence | np.ndarray) and not isinstance(size, str | bytes) and len(size) == 2
    if is_pair and all(isinstance(v, Integral) and not isinstance(v, bool) for v in size):
        h, w = int(size[0]), int(size[1])
        if h >= 0 and w >= 0:
            return h, w
    raise InvalidInputError(f"RLE size must be [H, W], two non-negative integers, got {size!r:.100}")
