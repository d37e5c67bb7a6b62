"""COCO RLE in pipeline.masks.rle, checked against pycocotools (the reference implementation)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pycocotools.mask as coco
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.errors import InvalidInputError
from pipeline.masks.rle import (
    _counts_to_string,
    _string_to_counts,
    compress_rle,
    decode_rle,
    encode_rle,
    mask_bbox,
    rle_area,
    rle_bbox,
)

# pycocotools' decode trips a numpy 2 deprecation inside its own code; nothing to do with ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SHAPES = [(1, 1), (1, 9), (9, 1), (2, 3), (5, 5), (17, 31), (31, 17), (64, 48), (3, 101), (101, 3)]
SEEDS = range(8)


def coco_encode(mask: np.ndarray) -> dict[str, Any]:
    rle = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def random_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Noise of a random density, sometimes smoothed into blobs so runs get long."""
    density = rng.uniform(0.05, 0.95)
    mask = rng.random(shape) < density
    if rng.random() < 0.5:
        mask = np.cumsum(mask, axis=int(rng.integers(2))) % 7 < 3
    return mask


def blob_mask(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(n):
        cy, cx, r = rng.integers(h), rng.integers(w), rng.integers(10, h // 4)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    return mask


def assert_matches_coco(mask: np.ndarray) -> None:
    rle = encode_rle(mask)
    assert rle == coco_encode(mask)
    assert isinstance(rle["counts"], str)
    decoded = decode_rle(rle)
    assert decoded.dtype == np.bool_
    assert decoded.shape == mask.shape
    np.testing.assert_array_equal(decoded, mask != 0)
    assert rle_area(rle) == int(np.count_nonzero(mask))


# --- encode / decode against pycocotools ---------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_random_masks_match_pycocotools(shape: tuple[int, int], seed: int) -> None:
    assert_matches_coco(random_mask(np.random.default_rng(seed), shape))


@pytest.mark.parametrize("seed", SEEDS)
def test_decodes_rle_made_by_pycocotools(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    mask = random_mask(rng, (int(rng.integers(1, 80)), int(rng.integers(1, 80))))
    rle = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    np.testing.assert_array_equal(decode_rle(rle), mask)  # bytes counts
    np.testing.assert_array_equal(decode_rle({**rle, "counts": rle["counts"].decode()}), mask)
    assert rle_area(rle) == coco.area(rle)


@pytest.mark.parametrize(
    "mask",
    [
        pytest.param(np.zeros((4, 6), bool), id="empty"),
        pytest.param(np.ones((4, 6), bool), id="full"),
        pytest.param(np.zeros((1, 1), bool), id="1x1-off"),
        pytest.param(np.ones((1, 1), bool), id="1x1-on"),
        pytest.param(np.array([[1, 0, 0, 1, 1, 0, 1]], bool), id="1xN"),
        pytest.param(np.array([[1], [1], [0], [1], [0]], bool), id="Nx1"),
        pytest.param(np.eye(5, dtype=bool), id="first-pixel-foreground"),
        pytest.param(np.arange(35).reshape(5, 7) % 2 == 1, id="alternating"),
        pytest.param(np.zeros((0, 5), bool), id="0xW"),
        pytest.param(np.zeros((5, 0), bool), id="Hx0"),
    ],
)
def test_edge_cases_match_pycocotools(mask: np.ndarray) -> None:
    assert_matches_coco(mask)


def test_empty_and_full_counts() -> None:
    assert encode_rle(np.zeros((3, 4), bool)) == {"size": [3, 4], "counts": "<"}  # one run of 12
    full = encode_rle(np.ones((3, 4), bool))
    assert full["counts"] == "0<"  # a background run of 0, then 12 foreground


def test_large_mask_with_blobs() -> None:
    mask = blob_mask(np.random.default_rng(7), 1080, 1920, 5)
    assert_matches_coco(mask)


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int32, np.int64, np.uint16])
def test_dtypes_nonzero_is_foreground(dtype: type) -> None:
    rng = np.random.default_rng(3)
    mask: np.ndarray = (rng.integers(0, 3, size=(13, 11)) * rng.integers(0, 2, size=(13, 11))).astype(dtype)
    assert encode_rle(mask) == coco_encode(mask != 0)


def test_single_foreground_value_matches_pycocotools() -> None:
    mask = (random_mask(np.random.default_rng(4), (13, 11)) * 255).astype(np.uint8)
    assert encode_rle(mask) == coco_encode(mask)


def test_mixed_foreground_values_differ_from_pycocotools() -> None:
    # pycocotools starts a new run at every change of value, so 0, 1, 2, 2 reads as
    # background, foreground, background, background; here every nonzero value is foreground.
    mask = np.array([[0, 1, 2, 2]], np.uint8)
    assert coco_encode(mask)["counts"] == "112"
    assert encode_rle(mask)["counts"] == "13"


def test_memory_order_does_not_matter() -> None:
    mask = random_mask(np.random.default_rng(5), (23, 19))
    assert encode_rle(np.ascontiguousarray(mask)) == encode_rle(np.asfortranarray(mask))
    assert encode_rle(mask[::2, ::3]) == coco_encode(mask[::2, ::3])  # a strided view


def test_frame_sized_masks_with_runs_across_columns_match_pycocotools() -> None:
    # Runs that go on from the bottom of one column to the top of the next, and a first pixel
    # in the foreground, on C-ordered masks as the decoder gives them.
    mask = np.zeros((720, 1280), bool)
    mask[:, 100:300] = True
    mask[:50, 600] = mask[700:, 599] = True
    mask[0, 0] = True
    mask[200:500, 800:1100] = random_mask(np.random.default_rng(7), (300, 300))
    assert mask.flags.c_contiguous
    assert_matches_coco(mask)
    assert_matches_coco(~mask)


def test_decoded_mask_is_c_contiguous() -> None:
    mask = random_mask(np.random.default_rng(6), (9, 14))
    assert decode_rle(encode_rle(mask)).flags.c_contiguous


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40)))
def test_hypothesis_masks_match_pycocotools(mask: np.ndarray) -> None:
    assert_matches_coco(mask)


# --- the counts string, with counts far beyond small masks ---------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**24 - 1), min_size=1, max_size=40))
def test_counts_string_matches_pycocotools(counts: list[int]) -> None:
    # frPyObjects compresses an uncompressed RLE without looking at a mask, so large counts are cheap.
    # Counts stay below 2**24 (at most 5 characters each): pycocotools' rleToString allocates only 6
    # bytes per count, so longer numbers overflow its buffer and can crash the test process.
    total = sum(counts)
    expected = coco.frPyObjects({"size": [1, total], "counts": counts}, 1, total)["counts"].decode()
    assert _counts_to_string(np.array(counts, dtype=np.int64)) == expected
    # ...and reading it back gives the counts: rle_area never builds the (huge) mask.
    assert rle_area({"size": [1, total], "counts": expected}) == sum(counts[1::2])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=40))
def test_counts_string_round_trip_up_to_uint32(counts: list[int]) -> None:
    string = _counts_to_string(np.array(counts, dtype=np.int64))
    np.testing.assert_array_equal(_string_to_counts(string), counts)


def test_counts_string_known_values() -> None:
    # Worked by hand from maskApi.c. 2**32 - 1 needs 33 signed bits: six groups of 31 with the
    # continuation bit ("o" = 48 + 63), then 3 ("3").
    assert _counts_to_string(np.array([2**32 - 1], dtype=np.int64)) == "oooooo3"
    # From the fourth count on the difference to two before is written: 2 - 5 = -3 -> 29 -> "M".
    assert _counts_to_string(np.array([0, 5, 3, 2], dtype=np.int64)) == "053M"
    assert coco.frPyObjects({"size": [1, 10], "counts": [0, 5, 3, 2]}, 1, 10)["counts"] == b"053M"
    np.testing.assert_array_equal(_string_to_counts("053M"), [0, 5, 3, 2])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=30), st.integers(1, 5))
def test_uncompressed_counts_decode_like_pycocotools(counts: list[int], h: int) -> None:
    counts[-1] += (-sum(counts)) % h  # make the total a multiple of h
    w = sum(counts) // h
    uncompressed = {"size": [h, w], "counts": counts}
    expected = coco.decode(coco.frPyObjects(uncompressed, h, w)).astype(bool)
    np.testing.assert_array_equal(decode_rle(uncompressed), expected)
    np.testing.assert_array_equal(decode_rle({"size": (h, w), "counts": np.array(counts)}), expected)
    assert rle_area(uncompressed) == int(expected.sum())


def test_size_may_be_numpy_ints() -> None:
    rle = {"size": np.array([2, 3]), "counts": "06"}
    np.testing.assert_array_equal(decode_rle(rle), np.ones((2, 3), bool))


# --- malformed input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rle", "match"),
    [
        pytest.param([2, 3], "mapping", id="not-a-mapping"),
        pytest.param({"counts": "6"}, "mapping", id="no-size"),
        pytest.param({"size": [2, 3]}, "mapping", id="no-counts"),
        pytest.param({"size": [6], "counts": "6"}, "size", id="size-one-number"),
        pytest.param({"size": [1, 2, 3], "counts": "6"}, "size", id="size-three-numbers"),
        pytest.param({"size": [-2, -3], "counts": "6"}, "size", id="size-negative"),
        pytest.param({"size": [2.0, 3.0], "counts": "6"}, "size", id="size-float"),
        pytest.param({"size": [True, 3], "counts": "3"}, "size", id="size-bool"),
        pytest.param({"size": "23", "counts": "6"}, "size", id="size-string"),
        pytest.param({"size": [2, 3], "counts": 6}, "counts must be", id="counts-int"),
        pytest.param({"size": [2, 3], "counts": [1.5, 4.5]}, "flat list of ints", id="counts-floats"),
        pytest.param({"size": [2, 3], "counts": [[1, 5]]}, "flat list of ints", id="counts-nested"),
        pytest.param({"size": [2, 3], "counts": [[1], [2, 3]]}, "flat list of ints", id="counts-ragged"),
        pytest.param({"size": [2, 3], "counts": ["1", "5"]}, "flat list of ints", id="counts-strings"),
        pytest.param({"size": [2, 3], "counts": "6 "}, "' '", id="char-space"),
        pytest.param({"size": [2, 3], "counts": "6p"}, "'p'", id="char-above-o"),
        pytest.param({"size": [2, 3], "counts": "6é"}, "ASCII", id="char-non-ascii"),
        pytest.param({"size": [2, 3], "counts": b"6\x00"}, "position 1", id="char-nul"),
        pytest.param({"size": [2, 3], "counts": "1P"}, "middle of a number", id="truncated"),
        pytest.param({"size": [2, 3], "counts": "PPPPPPPP0"}, "longer than 7", id="overlong-number"),
        pytest.param({"size": [2, 3], "counts": "O7"}, "non-negative", id="negative-run-string"),
        pytest.param({"size": [2, 3], "counts": [7, -1]}, "non-negative", id="negative-run-list"),
        pytest.param({"size": [2, 3], "counts": "5"}, "sum to 5, expected", id="too-few-pixels"),
        pytest.param({"size": [2, 3], "counts": "16"}, "sum to 7, expected", id="too-many-pixels"),
        pytest.param({"size": [2, 3], "counts": []}, "sum to 0", id="no-runs"),
    ],
)
def test_malformed_rle_raises(rle: Any, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        decode_rle(rle)
    with pytest.raises(InvalidInputError, match=match):
        rle_area(rle)


@pytest.mark.parametrize(
    "mask",
    [
        pytest.param(np.zeros(5, bool), id="1-D"),
        pytest.param(np.zeros((2, 3, 1), bool), id="3-D"),
        pytest.param([[0, 1], [1, 0]], id="list"),
        pytest.param(np.zeros((2, 3), np.float32), id="float"),
    ],
)
def test_encode_rejects_bad_masks(mask: Any) -> None:
    with pytest.raises(InvalidInputError):
        encode_rle(mask)


# --- area and bounding box -----------------------------------------------------------------------


def test_area_does_not_decode() -> None:
    # 2**30 pixels, the most an RLE may have: decoding would need 1 GB.
    assert rle_area({"size": [32_768, 32_768], "counts": [2**30 - 5, 5]}) == 5
    # 10**10 pixels (10 GB decoded) is refused from its size alone.
    with pytest.raises(InvalidInputError, match="more than the 1073741824"):
        rle_area({"size": [100_000, 100_000], "counts": [10**10 - 5, 5]})


def reference_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(3))
def test_bbox_matches_reference_and_pycocotools(shape: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    mask = rng.random(shape) < rng.uniform(0.0, 0.05)  # sparse, so boxes vary and some are empty
    box = mask_bbox(mask)
    assert box == reference_bbox(mask)
    x, y, w, h = coco.toBbox(coco.encode(np.asfortranarray(mask.astype(np.uint8))))
    assert (box or (0, 0, 0, 0)) == (x, y, x + w, y + h)


def test_bbox_cases() -> None:
    assert mask_bbox(np.zeros((4, 5), bool)) is None
    assert mask_bbox(np.zeros((0, 5), bool)) is None
    assert mask_bbox(np.ones((4, 5), np.uint8)) == (0, 0, 5, 4)
    one = np.zeros((4, 5), bool)
    one[2, 3] = True
    assert mask_bbox(one) == (3, 2, 4, 3)
    with pytest.raises(InvalidInputError):
        mask_bbox(np.zeros(5, bool))


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40)))
def test_rle_bbox_reads_the_box_from_the_runs(mask: np.ndarray) -> None:
    rle = encode_rle(mask)
    assert rle_bbox(rle) == reference_bbox(mask)
    assert rle_bbox(
        {"size": rle["size"], "counts": _string_to_counts(rle["counts"]).tolist()}
    ) == reference_bbox(mask)


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=30)),
    st.lists(st.integers(1, 200), max_size=3),
)
def test_compress_rle_writes_what_pycocotools_writes(mask: np.ndarray, zeros_at: list[int]) -> None:
    counts = _string_to_counts(encode_rle(mask)["counts"]).tolist()
    want = coco_encode(mask)
    size = list(mask.shape)
    assert compress_rle({"size": size, "counts": counts}) == {"size": size, "counts": want["counts"]}
    # Runs of length 0 inside the list (pycocotools never writes them) are merged away.
    for at in zeros_at:
        i = 1 + at % len(counts)
        counts[i:i] = [0, 0]
    assert compress_rle({"size": size, "counts": counts})["counts"] == want["counts"]
