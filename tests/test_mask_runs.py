"""Everything mode's compiled runs and boxes (``effvit_sam.inference.mask_runs``) against SAM's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.utils.amg import batched_mask_to_box, mask_to_rle_pytorch, uncrop_masks

from effvit_sam import mask_rle
from effvit_sam.inference import mask_runs, mask_upscale

pytestmark = pytest.mark.skipif(not mask_upscale.available(),
                                reason=f"numba: {mask_upscale.unavailable_reason()}")


def _masks(k: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Blobs, plus an empty, a full, a one-pixel and a last-pixel-only mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    masks = []
    for _ in range(k):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, max(h, w) / 2)
        masks.append((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
    empty, full, dot, last = (np.zeros((h, w), bool) for _ in range(4))
    full[:] = True
    dot[h // 2, w // 3] = True
    last[-1, -1] = True
    return torch.from_numpy(np.stack(masks + [empty, full, dot, last]))


@pytest.mark.parametrize("h,w", [(37, 53), (29, 64), (8, 8), (3, 5)])  # whole words or not
def test_boxes_are_sams(h: int, w: int) -> None:
    masks = _masks(20, h, w)
    runs = mask_runs.mask_runs(masks)
    assert torch.equal(runs.boxes, batched_mask_to_box(masks))
    assert runs.boxes[-4].tolist() == [0, 0, 0, 0]
    assert runs.boxes[-3].tolist() == [0, 0, w - 1, h - 1]
    want = mask_rle.rles_from_runs(mask_rle.crop_runs_transposed(
        masks.transpose(1, 2), [0, 0, w, h], (h, w)), [0, 0, w, h], (h, w))
    assert want == mask_to_rle_pytorch(masks)


@pytest.mark.parametrize("crop_box,orig_size", [
    ([0, 0, 53, 37], (37, 53)),        # the crop is the image
    ([10, 5, 63, 42], (50, 70)),       # a crop inside: padded above and below, columns aside
    ([0, 13, 53, 50], (50, 60)),       # padded above only, columns to the right
])
def test_rles_are_sams_for_crops(crop_box, orig_size) -> None:
    masks = _masks(12, 37, 53, seed=1)
    want = mask_to_rle_pytorch(uncrop_masks(masks, crop_box, *orig_size))
    masks_t = masks.transpose(1, 2).contiguous()
    runs = mask_rle.crop_runs_transposed(masks_t, crop_box, orig_size, boxes=True)
    assert mask_rle.rles_from_runs(runs, crop_box, orig_size) == want
    assert torch.equal(runs.boxes, batched_mask_to_box(masks_t))
    kept = runs.select(torch.tensor([i % 3 == 0 for i in range(len(masks))]))
    assert mask_rle.rles_from_runs(kept, crop_box, orig_size) == want[::3]


def test_the_torch_path_gives_the_same_runs(monkeypatch) -> None:
    masks_t = _masks(8, 30, 41, seed=2)
    crop_box, orig_size = [3, 4, 33, 45], (52, 40)
    fused = mask_rle.crop_runs_transposed(masks_t, crop_box, orig_size, boxes=True)
    monkeypatch.setattr(mask_rle, "mask_runs", lambda *a, **k: None)
    plain = mask_rle.crop_runs_transposed(masks_t, crop_box, orig_size, boxes=True)
    assert fused.starts_on == plain.starts_on and fused.length == plain.length
    assert all(np.array_equal(a, b) for a, b in zip(fused.changes, plain.changes, strict=True))
    assert torch.equal(fused.boxes, plain.boxes)


def test_no_masks_and_other_tensors() -> None:
    runs = mask_runs.mask_runs(torch.zeros(0, 5, 6, dtype=torch.bool))
    assert runs.changes == [] and runs.boxes.shape == (0, 4)
    assert mask_runs.mask_runs(torch.zeros(2, 5, 6)) is None  # float: not masks
