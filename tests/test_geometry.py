"""The geometry module: shapes, frames and SAM's own arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from effvit_sam import geometry


@pytest.mark.parametrize("hw", [(400, 600), (600, 400), (1024, 1024), (1, 3000), (683, 1023)])
def test_preprocess_shape_matches_sam(hw) -> None:
    assert geometry.preprocess_shape(*hw, 1024) == ResizeLongestSide.get_preprocess_shape(*hw, 1024)


def test_coords_and_boxes_match_sam() -> None:
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 600, size=(5, 2))
    boxes = rng.uniform(0, 400, size=(3, 4))
    sam = ResizeLongestSide(1024)
    np.testing.assert_allclose(geometry.apply_coords(coords, (400, 600)),
                               sam.apply_coords(coords, (400, 600)))
    np.testing.assert_allclose(geometry.apply_boxes(boxes, (400, 600)),
                               sam.apply_boxes(boxes, (400, 600)))
    t = geometry.apply_coords(torch.from_numpy(coords), (400, 600))
    np.testing.assert_allclose(t.numpy(), sam.apply_coords(coords, (400, 600)), rtol=1e-6)


def test_preprocess_image_pads_with_zero_after_normalising() -> None:
    image = np.full((100, 50, 3), 255, dtype=np.uint8)
    x = geometry.preprocess_image(image, 64)
    assert x.shape == (1, 3, 64, 64)
    expected = (255 - np.array(geometry.PIXEL_MEAN)) / np.array(geometry.PIXEL_STD)
    np.testing.assert_allclose(x[0, :, 10, 10].numpy(), expected, rtol=1e-5)
    assert (x[..., 32:] == 0).all()
    with pytest.raises(ValueError, match="does not fit"):
        geometry.normalize_and_pad(torch.zeros(1, 3, 70, 10), 64)


def test_postprocess_masks_crops_then_resizes() -> None:
    low = torch.zeros(1, 1, 256, 256)
    low[..., :64, :64] = 1.0  # top-left quarter of the 1024 frame
    out = geometry.postprocess_masks(low, (512, 1024), (100, 200))
    assert out.shape == (1, 1, 100, 200)
    # 256 px of the 1024 frame = 50 px of the 200-px-wide original; 256/512 of the height = 50
    assert (out[0, 0, :45, :45] > 0.5).all() and (out[0, 0, 55:, 55:] < 0.5).all()


@pytest.mark.parametrize("original", [(768, 1024), (1024, 768), (1024, 1024), (333, 517),
                                      (2000, 1500), (1000, 1), (3, 1024), (7, 5)])
@pytest.mark.parametrize("frame, low", [(1024, 256), (512, 128), (1024, 128), (1000, 256)])
def test_lean_postprocess_is_sams_bit_for_bit(original, frame, low) -> None:
    """The fast path's upscaling reads fewer low-res rows/columns and skips a same-size resize;
    every output value equals SAM's two-interpolation computation exactly (not just closely)."""
    masks = torch.randn(2, 3, low, low, generator=torch.Generator().manual_seed(low)) * 5
    input_size = geometry.preprocess_shape(*original, frame)
    want = geometry.postprocess_masks(masks, input_size, original, frame)
    got = geometry.postprocess_masks_lean(masks, input_size, original, frame)
    assert got.shape == want.shape == (2, 3, *original)
    assert torch.equal(got, want)
    channels_last = masks.contiguous(memory_format=torch.channels_last)
    assert torch.equal(geometry.postprocess_masks_lean(channels_last, input_size, original,
                                                       frame), want)


def test_masks_to_boxes() -> None:
    masks = torch.zeros(2, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    boxes = geometry.masks_to_boxes_xyxy(masks)
    assert boxes.tolist() == [[3, 2, 8, 4], [0, 0, 0, 0]]
