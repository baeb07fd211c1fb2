"""RLE and polygon validation (masks.py): the compressed-counts parser against pycocotools, and
every kind of bad input rejected with its reason before pycocotools decodes it."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from effvit_sam.masks import (
    decode_compressed_counts,
    mask_to_rle,
    rle_to_mask,
    segmentation_to_rle,
    validate_polygons,
    validate_rle,
)


def column_runs(mask: np.ndarray) -> list[int]:
    """COCO run lengths of a mask computed directly: column-major, zeros first."""
    flat = mask.flatten(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def test_parser_matches_pycocotools_encoder_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        mask = rng.random((h, w)) < rng.random()
        if rng.random() < 0.3:  # blocky masks: long runs, so multi-char and negative deltas
            mask = np.kron(rng.random((h, w)) < 0.5, np.ones((9, 13), bool))
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert decode_compressed_counts(rle["counts"]).tolist() == column_runs(mask)


def test_parser_matches_pycocotools_on_random_run_lists():
    """pycocotools' own string for arbitrary runs (zeros inside, long runs) parses back exactly."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        runs = rng.integers(0, rng.choice([3, 300, 3_000_000]), rng.integers(1, 40)).tolist()
        total = sum(runs)
        if total == 0:
            continue
        rle = mask_utils.frPyObjects({"size": [1, total], "counts": runs}, 1, total)
        assert decode_compressed_counts(rle["counts"]).tolist() == runs
        assert decode_compressed_counts(rle["counts"].decode()).tolist() == runs


def test_valid_rles_pass_and_decode_like_pycocotools():
    mask = np.zeros((30, 40), bool)
    mask[3:17, 5:31] = True
    compressed = mask_to_rle(mask)
    checked = validate_rle(compressed, 30, 40)
    assert checked == {"size": [30, 40], "counts": compressed["counts"].encode()}
    np.testing.assert_array_equal(rle_to_mask(compressed), mask)
    uncompressed = {"size": [30, 40], "counts": column_runs(mask)}
    assert validate_rle(uncompressed)["counts"] == checked["counts"]
    full = np.ones((4, 5), bool)  # first run 0: starts with a set pixel
    np.testing.assert_array_equal(rle_to_mask({"size": [4, 5], "counts": [0, 20]}), full)


@pytest.mark.parametrize("counts, message", [
    ("0", "too short: the runs sum to 0, not H\\*W = 128\\*128 = 16384"),
    ("", "too short: the runs sum to 0"),
    (mask_utils.frPyObjects({"size": [1, 9000], "counts": [8000, 1000]}, 1, 9000)["counts"],
     "too short: the runs sum to 9000"),
    (mask_utils.frPyObjects({"size": [1, 16385], "counts": [16000, 385]}, 1, 16385)["counts"],
     "too long: the runs sum to 16385"),
    ("O", "run 0 is negative \\(-1\\)"),
    ("0O", "run 1 is negative"),
    ("ab~", "'~' at 2, outside the alphabet"),
    ("00 ", "' ' at 2, outside the alphabet"),
    ("0Pl", "end inside a value"),
    ("0ooooooooo1", "10 characters long"),
    ("0\u00e9", "non-ASCII character at 1"),
    (b"\xff\x00", "outside the alphabet"),
])
def test_bad_compressed_counts_rejected_with_reason(counts, message):
    with pytest.raises(ValueError, match=message):
        validate_rle({"size": [128, 128], "counts": counts})
    with pytest.raises(ValueError, match=message):
        rle_to_mask({"size": [128, 128], "counts": counts})


def test_hand_computed_values_of_the_parser():
    # 'P' = 48 + 0x20: data 0 and more to come; 'l' = 48 + 0x3c: data 28 (0x1c) and more;
    # '0': data 0, last, sign bit clear. 28 << 5 = 896
    assert decode_compressed_counts("Pl0").tolist() == [896]
    assert decode_compressed_counts("1").tolist() == [1]
    assert decode_compressed_counts("O").tolist() == [-1]  # 0x1f with the sign bit 0x10
    # from the 4th value on, each adds to the run two before: 1, 2, 3, 2+4 = 6, 3-1 = 2
    assert decode_compressed_counts("1234O").tolist() == [1, 2, 3, 6, 2]


@pytest.mark.parametrize("rle, message", [
    ({"size": [4, 4], "counts": [3, 14]}, "too long: the runs sum to 17, not H\\*W"),
    ({"size": [4, 4], "counts": [3, 12]}, "too short: the runs sum to 15"),
    ({"size": [4, 4], "counts": [20, -4]}, "run 1 is negative \\(-4\\)"),
    ({"size": [4, 4], "counts": [8, 8.0]}, "must be ints, got 8.0"),
    ({"size": [4, 4], "counts": [True, 15]}, "must be ints, got True"),
    ({"size": [4, 4], "counts": [2**70, 1]}, "beyond int64"),
    ({"size": [0, 4], "counts": []}, "two positive ints"),
    ({"size": [4], "counts": [16]}, "two positive ints"),
    ({"size": [4.0, 4], "counts": [16]}, "two positive ints"),
    ({"size": "4x4", "counts": [16]}, "two positive ints"),
    ({"size": [1 << 16, 1 << 16], "counts": [1 << 32]}, "more pixels than COCO RLE can count"),
    ({"counts": "0"}, "'size'"),
    ("0", "must be a dict"),
])
def test_bad_rles_rejected_with_reason(rle, message):
    with pytest.raises(ValueError, match=message):
        validate_rle(rle)


def test_counts_of_another_type_and_size_of_another_image():
    with pytest.raises(TypeError, match="str, bytes or a list of ints, got int"):
        validate_rle({"size": [2, 2], "counts": 4})
    good = mask_to_rle(np.ones((8, 6), bool))
    with pytest.raises(ValueError, match="rle size 8x6 is not the image's size 6x8"):
        validate_rle(good, 6, 8)
    with pytest.raises(ValueError, match="not the image's size"):
        segmentation_to_rle(good, 8, 7)


@pytest.mark.parametrize("polygons, message", [
    ([[1, 1, 5, 1, 5]], "polygon 0 has 5 coordinates; a polygon needs an even number"),
    ([[1, 1, 5, 1, 5, 5], [1, 1, 2, 2]], "polygon 1 has 4 coordinates"),
    ([[1, 1, 5, float("nan"), 5, 5]], "polygon 0 has a NaN or infinite coordinate"),
    ([[1, 1, 5, float("inf"), 5, 5]], "NaN or infinite"),
    ([[1, 1, "5", 1, 5, 5]], "polygon 0 must be a list of numbers"),
    ([5, 6, 7, 8, 9, 10], "polygon 0 must be a list of numbers"),
    ([], "non-empty list"),
])
def test_bad_polygons_rejected_with_reason(polygons, message):
    with pytest.raises(ValueError, match=message):
        validate_polygons(polygons)
    with pytest.raises(ValueError, match=message):
        segmentation_to_rle(polygons, 10, 10)


def test_polygons_become_one_checked_rle():
    parts = [[1, 1, 6, 1, 6, 6, 1, 6], [7, 2, 11, 2, 11, 8]]
    rle = segmentation_to_rle(parts, 10, 12)
    assert rle["size"] == [10, 12]
    assert sum(decode_compressed_counts(rle["counts"]).tolist()) == 120
    each = mask_utils.decode(mask_utils.frPyObjects(parts, 10, 12)).astype(bool)  # H x W x 2
    np.testing.assert_array_equal(rle_to_mask(rle), each.any(2))  # the parts' union
    assert rle_to_mask(rle)[1:6, 1:6].all() and each[..., 1].sum() > 0
