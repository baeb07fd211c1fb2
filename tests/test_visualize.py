"""overlay_masks pixels (hand-computed blends, prompt marks) and the COCO RLE helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from effvit_sam.masks import mask_to_rle, rle_to_mask
from effvit_sam.visualize import BACKGROUND, BOX_COLOR, FOREGROUND, distinct_colors, overlay_masks


def _masks() -> np.ndarray:
    masks = np.zeros((2, 60, 80), bool)
    masks[0, 10:30, 10:40] = True
    masks[1, 20:50, 30:70] = True  # overlaps mask 0 on rows 20..29, columns 30..39
    return masks


def test_blend_is_hand_computed():
    image = np.full((60, 80, 3), 100, np.uint8)
    colors = np.array([[200, 0, 50], [0, 255, 0]], np.uint8)
    out = overlay_masks(image, _masks(), alpha=0.5, colors=colors)
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    assert out[15, 20].tolist() == [150, 50, 75]  # 0.5 * 100 + 0.5 * colour 0
    assert out[40, 50].tolist() == [50, 178, 50]  # 0.5 * 100 + 0.5 * colour 1 (177.5 rounds up)
    # Overlap: mask 1 blended over mask 0's result: 0.5 * (150, 50, 75) + 0.5 * (0, 255, 0).
    assert out[25, 35].tolist() == [75, 152, 38]
    assert out[5, 5].tolist() == [100, 100, 100]  # outside every mask: unchanged
    assert out[10, 20].tolist() == [200, 0, 50]  # outline pixels take the mask colour
    assert np.array_equal(image, np.full((60, 80, 3), 100, np.uint8))  # input untouched


def test_alpha_extremes_and_default_colours():
    image = np.full((60, 80, 3), 100, np.uint8)
    masks = _masks()
    assert np.array_equal(overlay_masks(image, masks[:1] & False), image)
    full = overlay_masks(image, masks[0], alpha=1.0, colors=[[1, 2, 3]])
    assert full[15, 20].tolist() == [1, 2, 3]
    colors = distinct_colors(12)
    assert len({tuple(c) for c in colors.tolist()}) == 12
    out = overlay_masks(image, torch.from_numpy(masks), alpha=1.0)
    assert out[15, 20].tolist() == colors[0].tolist()


def test_prompts_are_drawn():
    image = np.zeros((100, 120, 3), np.uint8)
    out = overlay_masks(image, None, points=[[30, 40], [90, 60]], labels=[1, 0],
                        boxes=[[10, 10, 110, 90]])
    assert out[40, 30].tolist() == list(FOREGROUND)  # star centre
    assert out[60, 90].tolist() == list(BACKGROUND)
    assert out[10, 60].tolist() == list(BOX_COLOR)  # top edge of the box
    assert out[50, 60].tolist() == [0, 0, 0]  # inside the box, away from the stars


@pytest.mark.parametrize("kwargs, message", [
    (dict(masks=np.zeros((2, 10, 10), bool)), "image size"),
    (dict(masks=np.zeros((60, 80), bool), alpha=1.5), "alpha"),
    (dict(masks=np.zeros((2, 60, 80), bool), colors=[[1, 2, 3]]), "colors"),
    (dict(masks=None, points=[[1, 1], [2, 2]], labels=[1]), "labels"),
])
def test_bad_overlay_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        overlay_masks(np.zeros((60, 80, 3), np.uint8), **kwargs)


def test_rle_round_trip_and_pycocotools_agreement():
    mask = _masks()[0]
    rle = mask_to_rle(mask)
    assert rle["size"] == [60, 80] and isinstance(rle["counts"], str)
    assert np.array_equal(rle_to_mask(rle), mask)
    assert mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}) == 600
    # Uncompressed counts (column-major runs starting with zeros), as SAM writes them.
    tiny = np.array([[0, 1], [1, 1]], bool)
    assert np.array_equal(rle_to_mask({"size": [2, 2], "counts": [1, 3]}), tiny)
    assert np.array_equal(rle_to_mask({"size": [2, 2], "counts": mask_to_rle(tiny)["counts"]
                                       .encode()}), tiny)


@pytest.mark.parametrize("rle, error, message", [
    ({"counts": "abc"}, ValueError, "size"),
    ({"size": [2, 2], "counts": [1, 2]}, ValueError, "sum to 3"),
    ({"size": [2, 2], "counts": 5}, TypeError, "counts"),
])
def test_bad_rle(rle, error, message):
    with pytest.raises(error, match=message):
        rle_to_mask(rle)
    with pytest.raises(ValueError, match="H x W"):
        mask_to_rle(np.zeros((1, 2, 2), bool))
