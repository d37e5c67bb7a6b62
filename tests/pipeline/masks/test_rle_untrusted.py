"""Untrusted COCO RLE: whatever a client sends gives a clear error or the right mask, in bounded
time and memory, and never takes the process down.

The oracle here reads an RLE the way COCO defines it, in Python integers (no overflow, no limit),
and decodes it pixel by pixel. samstream's parser may refuse more than the oracle does (a mask over
its pixel limit, a number longer than any uint32), but whatever it accepts must be exactly the
oracle's mask, and whatever the oracle calls malformed it must refuse.

With the parser before this test (int64 sums, decode-to-re-encode of zero runs), the int64 wrap
case killed the test process with SIGSEGV, and the huge sizes took gigabytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as coco
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.errors import InvalidInputError
from pipeline.masks.mask_prompt import MaskPrompt
from pipeline.masks.rle import MAX_RLE_PIXELS, compress_rle, decode_rle, encode_rle, rle_area_and_bbox
from pipeline.prompts import load_prompts_file

MEMORY_BOUND = 16 * 2**20  # what reading one small untrusted RLE may allocate at its peak
ORACLE_PIXELS = 4096  # the oracle decodes masks up to this size to compare them


def oracle_counts(counts: Any) -> list[int] | None:
    """COCO's run lengths of ``counts`` in Python integers, or None when malformed."""
    if isinstance(counts, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            return None
        return list(counts)
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(counts, str):
        return None
    out: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                return None  # ends in the middle of a number
            c = ord(counts[p]) - 48
            if not 0 <= c <= 63:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x -= 1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def oracle(rle: Any) -> tuple[tuple[int, int], list[int]] | None:
    """((H, W), runs) of a well-formed RLE, or None."""
    if not isinstance(rle, dict) or set(rle) != {"size", "counts"}:
        return None
    size = rle["size"]
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size):
        return None
    runs = oracle_counts(rle["counts"])
    if runs is None or any(r < 0 for r in runs) or sum(runs) != size[0] * size[1]:
        return None
    return (size[0], size[1]), runs


def oracle_mask(size: tuple[int, int], runs: list[int]) -> np.ndarray:
    h, w = size
    flat = np.zeros(h * w, bool)
    at = 0
    for i, r in enumerate(runs):
        flat[at : at + r] = i % 2 == 1
        at += r
    return flat.reshape(w, h).T


def peak_bytes(fn: Any) -> tuple[Any, int]:
    """``fn()``'s result (or the InvalidInputError it raised) and the peak bytes it allocated."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except InvalidInputError as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def check_untrusted(rle: Any) -> None:
    """The property: a clear error or the oracle's mask, in bounded memory."""
    want = oracle(rle)
    got, peak = peak_bytes(lambda: MaskPrompt.from_rle(rle))
    assert peak < MEMORY_BOUND, f"reading {rle!r:.200} allocated {peak} bytes"
    if isinstance(got, InvalidInputError):
        assert str(got).startswith("bad mask RLE") or "mask" in str(got)
        return
    assert want is not None, f"accepted a malformed RLE {rle!r:.200}"
    size, runs = want
    assert got.size == size
    assert got.area == sum(runs[1::2])
    if size[0] * size[1] <= ORACLE_PIXELS:
        expected = oracle_mask(size, runs)
        np.testing.assert_array_equal(got.array(), expected)
        assert got.to_rle() == encode_rle(expected)  # canonical: zero runs merged as pycocotools writes


WRAP = {"size": [1, 2], "counts": [2**63 - 1, 2**63 - 1, 0, 4]}  # the int64 sum wraps round to 2

# Numbers a client may send that sit on a boundary of some integer type.
EDGES = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -1, -(2**63), 2**100]

sizes = st.one_of(
    st.tuples(st.integers(0, 12), st.integers(0, 12)).map(list),
    st.tuples(st.sampled_from([*EDGES, 20_000, 100_000]), st.sampled_from([*EDGES, 1, 2, 20_000])).map(list),
    st.sampled_from([[1.0, 2.0], [True, 2], "12", [1, 2, 3], [], None, [[1], 2]]),
)
list_counts = st.lists(
    st.one_of(st.integers(0, 20), st.sampled_from(EDGES), st.integers(-(2**70), 2**70)), max_size=12
)
odd_counts = st.one_of(
    st.lists(st.sampled_from([1.5, True, "3", None, [1], float("nan")]), min_size=1, max_size=4),
    st.integers(),
    st.none(),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
string_counts = st.one_of(
    st.text(alphabet=[chr(c) for c in range(48, 112)], max_size=40),
    st.text(max_size=12),
    st.binary(max_size=20),
)


@st.composite
def valid_with_zero_runs(draw: st.DrawFn) -> dict[str, Any]:
    """A small valid RLE as a list, with zero-length runs inserted anywhere (they merge away)."""
    h, w = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    mask = np.array(draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w)), bool).reshape(h, w)
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    runs = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    runs = [0, *runs] if flat[0] else runs
    for at in draw(st.lists(st.integers(0, 50), max_size=4)):
        i = at % (len(runs) + 1)
        runs[i:i] = [0, 0]
    return {"size": [h, w], "counts": runs}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.fixed_dictionaries({"size": sizes, "counts": st.one_of(list_counts, odd_counts, string_counts)}),
        valid_with_zero_runs(),
    )
)
@example(WRAP)
@example({"size": [20_000, 20_000], "counts": [0, 1, 0, 20_000 * 20_000 - 1]})
@example({"size": [100_000, 100_000], "counts": [0, 1, 0, 100_000 * 100_000 - 1]})
@example({"size": [2**32, 2**32], "counts": []})  # H·W wraps to 0 in int64
@example({"size": [1, 4], "counts": [0, 0, 0, 0, 0, 4]})  # only zero runs before the object
@example({"size": [0, 0], "counts": [0]})
@example({"size": [2, 2], "counts": [2**64 - 4, 4]})  # uint64 that wraps to -4 as int64
@example({"size": [32_768, 32_768], "counts": "0" + "o" * 5 + "1"})  # expands to 2**30 pixels
@example({"size": [32_768, 32_769], "counts": [0, 32_768 * 32_769]})  # one pixel row over the cap
def test_any_rle_is_a_clear_error_or_the_right_mask(rle: dict[str, Any]) -> None:
    check_untrusted(rle)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=[chr(c) for c in range(48, 112)], min_size=1, max_size=60), st.integers(1, 64))
def test_compressed_strings_agree_with_the_oracle(counts: str, h: int) -> None:
    runs = oracle_counts(counts)
    assert runs is not None or counts  # every string of this alphabet is read or refused
    total = sum(runs) if runs and all(r >= 0 for r in runs) else 0
    size = [h, total // h] if total and total % h == 0 else [1, max(total, 0)]
    check_untrusted({"size": size, "counts": counts})


def test_the_int64_wrap_is_refused_not_a_crash() -> None:
    with pytest.raises(InvalidInputError, match="RLE run 0 is 9223372036854775807 pixels long"):
        MaskPrompt.from_rle(WRAP)


def test_a_size_over_the_limit_is_refused_before_the_counts_are_read() -> None:
    huge = {"size": [20_000, 20_000], "counts": "not even read"}
    with pytest.raises(InvalidInputError, match="400000000 pixels, more than the 35389440"):
        MaskPrompt.from_rle(huge, max_pixels=8192 * 4320)
    with pytest.raises(InvalidInputError, match=f"more than the {MAX_RLE_PIXELS}"):
        decode_rle({"size": [100_000, 100_000], "counts": [10**10]})
    # A limit above the library's own cap does not lift it.
    with pytest.raises(InvalidInputError, match=f"more than the {MAX_RLE_PIXELS}"):
        rle_area_and_bbox({"size": [100_000, 100_000], "counts": [10**10]}, max_pixels=10**12)


def test_zero_runs_merge_without_decoding() -> None:
    # A 2**30-pixel mask with zero runs: merged from the runs alone (decoding would take 1 GB).
    rle = {"size": [32_768, 32_768], "counts": [5, 0, 0, 7, 0, 0, 2**30 - 12, 0]}
    got, peak = peak_bytes(lambda: compress_rle(rle))
    assert peak < MEMORY_BOUND
    merged = [5, 7, 2**30 - 12]  # what pycocotools compresses without a mask either
    want = coco.frPyObjects({"size": [32_768, 32_768], "counts": merged}, 32_768, 32_768)["counts"].decode()
    assert got == {"size": [32_768, 32_768], "counts": want}
    # Only zero runs after the first background run: the object starts at pixel 0.
    assert compress_rle({"size": [1, 4], "counts": [0, 0, 0, 0, 0, 4]}) == encode_rle(np.ones((1, 4), bool))


def test_the_crashing_inputs_leave_a_fresh_process_alive() -> None:
    # In a child process, so that a native fault shows as its exit status, not as this run's death.
    code = textwrap.dedent(
        """
        from pipeline.masks.mask_prompt import MaskPrompt
        from pipeline.errors import InvalidInputError
        cases = [
            {"size": [1, 2], "counts": [2**63 - 1, 2**63 - 1, 0, 4]},
            {"size": [1, 2], "counts": [2**64 - 1, 3, 0, 0]},
            {"size": [20000, 20000], "counts": [0, 1, 0, 20000 * 20000 - 1]},
            {"size": [100000, 100000], "counts": [0, 1, 0, 100000 * 100000 - 1]},
            {"size": [2**32, 2**32], "counts": [0, 2**64]},
            {"size": [1, 2], "counts": "oooooo3oooooo3" * 50},
        ]
        for rle in cases:
            try:
                MaskPrompt.from_rle(rle, max_pixels=8192 * 4320)
                print("accepted")
            except InvalidInputError as exc:
                print("refused:", str(exc)[:60])
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("refused:") == 6, done.stdout


@pytest.mark.parametrize(
    ("size", "counts", "error"),
    [
        ([1, 2], WRAP["counts"], "RLE run 0 is 9223372036854775807 pixels long"),
        ([100_000, 100_000], [0, 1, 0, 100_000 * 100_000 - 1], "more than the 1073741824"),
        ([20_000, 20_000], "0" + "o" * 7 + "3", "longer than 7 characters"),
        ([20_000, 20_000], [0, 1, 0, 20_000 * 20_000 - 1], None),  # well formed: kept compact
    ],
)
def test_a_prompts_file_with_a_bad_rle_is_one_clear_error(
    tmp_path: Path, size: list[int], counts: Any, error: str | None
) -> None:
    path = tmp_path / "tracks.json"
    path.write_text(json.dumps({"tracks": [{"id": 1, "mask": {"size": size, "counts": counts}}]}))
    if error is None:
        # Within the library's cap, and a frame of another size refuses it before it is decoded.
        mask, peak = peak_bytes(lambda: load_prompts_file(path)[0].prompt.mask)
        assert peak < MEMORY_BOUND and mask.size == (20_000, 20_000) and mask.area == 20_000**2
        return
    with pytest.raises(InvalidInputError, match=f"prompts file .*: track #1: bad mask RLE: .*{error}"):
        load_prompts_file(path)
