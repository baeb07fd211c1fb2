"""The one geometry module: every coordinate frame and resize in the package lives here.

Frames used throughout the package:

* **original frame** - pixels of the image the user gave, ``(x, y)``, ``H x W``.
* **prompt frame** - SAM's 1024 frame: the image resized so its long side is
  :data:`PROMPT_FRAME` (1024) pixels. Points, boxes and the mask decoder's output live here for
  *every* variant, also the L models whose encoder sees 512 pixels.
* **encoder frame** - the image resized so its long side is the encoder's input size
  (512 for L models, 1024 for XL models), normalised and zero-padded bottom/right to a square.

The model, predictor, training, evaluation, demo and export all import these functions, so the
arithmetic exists once. The numpy core (sizes, resizes, point/box transforms, the numpy encoder
input and mask upscaling the onnxruntime predictor uses) needs no torch: this module imports
torch only inside the functions that take or return tensors.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

PROMPT_FRAME = 1024
"""Long side, in pixels, of SAM's prompt frame (points, boxes, mask post-processing)."""

LOW_RES_MASK_SIZE = 256
"""Side of the mask decoder's low-resolution logits."""

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Size ``(h, w)`` of an ``height x width`` image resized so its long side is ``long_side``."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if long_side < 1:
        raise ValueError(f"long_side must be >= 1, got {long_side}")
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize an ``H x W x 3`` uint8 image so its long side is ``long_side`` (PIL bilinear).

    PIL's bilinear filter is what the official code uses (it antialiases when shrinking), so the
    encoder sees exactly the official pixels.
    """
    h, w = image.shape[:2]
    new_h, new_w = preprocess_shape(h, w, long_side)
    if (new_h, new_w) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def normalize_and_pad(image: torch.Tensor, size: int) -> torch.Tensor:
    """Normalise a ``B x 3 x h x w`` float image in [0, 1] and zero-pad it to ``size x size``.

    Padding goes at the bottom and right, after normalisation (so padded pixels are 0).
    """
    import torch
    import torch.nn.functional as F

    mean = torch.tensor(PIXEL_MEAN, dtype=image.dtype, device=image.device).view(1, 3, 1, 1) / 255
    std = torch.tensor(PIXEL_STD, dtype=image.dtype, device=image.device).view(1, 3, 1, 1) / 255
    h, w = image.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"image of {h}x{w} does not fit the {size}x{size} encoder input")
    x = (image - mean) / std
    return F.pad(x, (0, size - w, 0, size - h))


def preprocess_image(image: np.ndarray, encoder_size: int) -> torch.Tensor:
    """Turn an ``H x W x 3`` uint8 RGB image into the ``1 x 3 x S x S`` encoder input (CPU)."""
    import torch

    resized = resize_longest_side(image, encoder_size)
    x = torch.from_numpy(np.array(resized, copy=True)).permute(2, 0, 1).float().div(255)
    return normalize_and_pad(x.unsqueeze(0), encoder_size)


def preprocess_image_numpy(image: np.ndarray, encoder_size: int) -> np.ndarray:
    """:func:`preprocess_image` in numpy: the ``1 x 3 x S x S`` float32 encoder input."""
    resized = resize_longest_side(image, encoder_size)
    new_h, new_w = resized.shape[:2]
    x = resized.astype(np.float32).transpose(2, 0, 1) / np.float32(255)
    mean = np.asarray(PIXEL_MEAN, dtype=np.float32).reshape(3, 1, 1) / np.float32(255)
    std = np.asarray(PIXEL_STD, dtype=np.float32).reshape(3, 1, 1) / np.float32(255)
    out = np.zeros((1, 3, encoder_size, encoder_size), dtype=np.float32)
    out[0, :, :new_h, :new_w] = (x - mean) / std
    return out


def is_tensor(x) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch."""
    torch = sys.modules.get("torch")  # no tensor can exist before torch is imported
    return torch is not None and isinstance(x, torch.Tensor)


def apply_coords(coords: np.ndarray | torch.Tensor, original_size: tuple[int, int],
                 long_side: int = PROMPT_FRAME) -> np.ndarray | torch.Tensor:
    """Map ``... x 2`` points ``(x, y)`` from the original frame to the prompt frame."""
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    scale = (new_w / old_w, new_h / old_h)
    if is_tensor(coords):
        import torch

        return coords.float() * torch.tensor(scale, dtype=torch.float32, device=coords.device)
    return np.asarray(coords, dtype=np.float64) * np.asarray(scale)


def apply_boxes(boxes: np.ndarray | torch.Tensor, original_size: tuple[int, int],
                long_side: int = PROMPT_FRAME) -> np.ndarray | torch.Tensor:
    """Map ``... x 4`` XYXY boxes from the original frame to the prompt frame."""
    shape = boxes.shape
    return apply_coords(boxes.reshape(-1, 2, 2), original_size, long_side).reshape(shape)


def xywh_to_xyxy(box) -> np.ndarray:
    """COCO ``[x, y, w, h]`` (``... x 4``) to ``[x0, y0, x1, y1]`` in the same pixel frame."""
    box = np.asarray(box, dtype=np.float64)
    return np.concatenate([box[..., :2], box[..., :2] + box[..., 2:]], -1)


def xyxy_to_xywh(box) -> np.ndarray:
    """``[x0, y0, x1, y1]`` (``... x 4``) to COCO ``[x, y, w, h]`` in the same pixel frame."""
    box = np.asarray(box, dtype=np.float64)
    return np.concatenate([box[..., :2], box[..., 2:] - box[..., :2]], -1)


def postprocess_masks(masks: torch.Tensor, input_size: tuple[int, int],
                      original_size: tuple[int, int], frame: int = PROMPT_FRAME) -> torch.Tensor:
    """Upscale ``B x C x 256 x 256`` decoder logits to the original ``H x W`` frame.

    ``input_size`` is the image's size in the prompt frame (see :func:`preprocess_shape`). The
    logits are upscaled to the whole ``frame x frame`` square, cropped to the image and resized
    to the original size, as SAM does (the official computation; the fast path uses
    :func:`postprocess_masks_lean`, bit for bit the same).
    """
    import torch.nn.functional as F

    masks = F.interpolate(masks, (frame, frame), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)


def postprocess_masks_lean(masks: torch.Tensor, input_size: tuple[int, int],
                           original_size: tuple[int, int],
                           frame: int = PROMPT_FRAME) -> torch.Tensor:
    """:func:`postprocess_masks` bit for bit, with less work: only the low-res rows and columns
    the crop reads are upscaled (an integer factor gives the same source index and weights for
    every output pixel; one more row/column keeps bilinear's second tap), and a resize to the
    same size (weights 1 and 0: the identity) is skipped. For a 1024 x 768 photo that is 0.38x
    the interpolated pixels."""
    import torch.nn.functional as F

    low = masks.shape[-1]
    if masks.shape[-2] != low or frame % low or low < 2:
        return postprocess_masks(masks, input_size, original_size, frame)
    factor = frame // low
    rows, cols = (min(low, int(max(0.0, (n - 0.5) / factor - 0.5)) + 2) for n in input_size)
    masks = F.interpolate(masks[..., :rows, :cols], scale_factor=(factor, factor),
                          mode="bilinear", align_corners=False, recompute_scale_factor=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    if tuple(masks.shape[-2:]) == tuple(original_size):
        return masks
    return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)


def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``out x in`` weights of torch's bilinear resize (``align_corners=False``, no antialias)."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = src - i0
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, i0), 1.0 - frac)
    np.add.at(weights, (rows, i1), frac)
    return weights.astype(np.float32)


def resize_bilinear_numpy(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize the last two axes of ``x`` to ``size`` like ``F.interpolate(mode="bilinear")``."""
    wy = _bilinear_matrix(x.shape[-2], size[0])
    wx = _bilinear_matrix(x.shape[-1], size[1])
    return np.einsum("oh,...hw,pw->...op", wy, x.astype(np.float32), wx, optimize=True)


def postprocess_masks_numpy(masks: np.ndarray, input_size: tuple[int, int],
                            original_size: tuple[int, int],
                            frame: int = PROMPT_FRAME) -> np.ndarray:
    """:func:`postprocess_masks` in numpy, for ``... x 256 x 256`` logits."""
    masks = resize_bilinear_numpy(masks, (frame, frame))
    masks = masks[..., : input_size[0], : input_size[1]]
    return resize_bilinear_numpy(masks, tuple(original_size))


def masks_to_boxes_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """``N x H x W`` boolean masks to ``N x 4`` XYXY boxes (inclusive pixel extents; 0 if empty)."""
    import torch

    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, device=masks.device)
    h, w = masks.shape[-2:]
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    rows = masks.any(-1)
    cols = masks.any(-2)
    big = max(h, w)
    y0 = torch.where(rows, ys, big).amin(-1)
    y1 = torch.where(rows, ys, -1).amax(-1)
    x0 = torch.where(cols, xs, big).amin(-1)
    x1 = torch.where(cols, xs, -1).amax(-1)
    boxes = torch.stack([x0, y0, x1, y1], -1)
    empty = ~rows.any(-1)
    return torch.where(empty[..., None], torch.zeros_like(boxes), boxes)


def mask_to_low_res(masks: np.ndarray | torch.Tensor, frame: int = PROMPT_FRAME,
                    low_res: int = LOW_RES_MASK_SIZE) -> torch.Tensor:
    """Original-frame ``... x H x W`` bool masks to the decoder's ``... x 256 x 256`` frame.

    The inverse of :func:`postprocess_masks`: low-res cell ``(i, j)`` covers prompt-frame
    pixels ``[4i, 4i + 4) x [4j, 4j + 4)`` of the image resized to ``(h, w) =
    preprocess_shape(H, W, frame)`` and zero-padded bottom/right to ``frame x frame``. A cell is
    set when the mask covers at least half of its area (an exact box-filter area average, for
    up- and downscaling alike; padding counts as uncovered). Computed from each mask's integral
    image over its bounding box, so small masks in large photos are cheap. Returns bool on the
    input's device.
    """
    import torch
    import torch.nn.functional as F

    masks = torch.as_tensor(masks)
    if masks.ndim < 2:
        raise ValueError(f"masks must be ... x H x W, got shape {tuple(masks.shape)}")
    lead, (height, width) = masks.shape[:-2], masks.shape[-2:]
    h, w = preprocess_shape(height, width, frame)
    cell = frame / low_res
    # Cell edges mapped back to the original frame; clipped, as the padding holds no mask.
    grid = torch.arange(low_res + 1, dtype=torch.float64, device=masks.device) * cell
    y_edges = grid.clamp(max=h) * (height / h)
    x_edges = grid.clamp(max=w) * (width / w)
    to_fraction = (h / height) * (w / width) / cell**2  # original pixels -> share of a cell
    flat = masks.reshape(-1, height, width).bool()
    out = torch.zeros(flat.shape[0], low_res, low_res, dtype=torch.bool, device=masks.device)
    for k, mask in enumerate(flat):
        rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
        if rows.numel() == 0:
            continue
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        crop = mask[r0:r1, c0:c1].to(torch.float64)
        # Integral image read at the cell edges: exact, since the integral of a pixel-constant
        # mask is linear between pixel edges.
        integral = F.pad(crop.cumsum(0), (0, 0, 1, 0))
        integral = _lerp_rows(integral, y_edges - r0)
        integral = _lerp_rows(F.pad(integral.cumsum(1), (1, 0)).T, x_edges - c0).T
        area = (integral[1:, 1:] - integral[:-1, 1:] - integral[1:, :-1]
                + integral[:-1, :-1])
        out[k] = area * to_fraction >= 0.5
    return out.reshape(*lead, low_res, low_res)


def _lerp_rows(table: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rows of an ``(n + 1) x m`` table read at fractional ``pos`` (clamped to ``[0, n]``)."""
    n = table.shape[0] - 1
    pos = pos.clamp(0, n)
    lo = pos.floor().long().clamp(max=max(n - 1, 0))
    hi = (lo + 1).clamp(max=n)
    t = (pos - lo)[:, None]
    return table[lo] * (1 - t) + table[hi] * t
