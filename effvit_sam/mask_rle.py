"""Crop masks to whole-image RLEs, and ``MaskData`` concatenation without deep copies.

The everything mode's helpers (:mod:`effvit_sam.automatic`): crop masks become SAM's
uncompressed RLEs of the whole image without the uncropped ``K x H x W`` masks ever being made.
"""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.utils.amg import MaskData


def uncrop_rles(masks: torch.Tensor, crop_box: list[int], orig_size: tuple[int, int]) -> list:
    """SAM's uncompressed RLEs of ``K x h x w`` crop masks in the whole ``H x W`` image (what
    ``mask_to_rle_pytorch(uncrop_masks(...))`` gives); see :func:`uncrop_rles_transposed`."""
    return uncrop_rles_transposed(masks.transpose(1, 2), crop_box, orig_size)


def uncrop_rles_transposed(masks_t: torch.Tensor, crop_box: list[int],
                            orig_size: tuple[int, int]) -> list:
    """RLEs in the whole ``H x W`` image of crop masks given transposed, ``K x w x h`` (row i is
    the crop's column i: the column-major order of COCO's runs, so no transposing copy).

    The ``K x H x W`` uncropped masks are never made: the crop's columns are padded to ``H`` rows,
    then the zero columns left and right of the crop are added to the first and last run. All
    masks' run boundaries come from one comparison and one ``nonzero`` over the batch.
    """
    x0, y0, x1, y1 = crop_box
    h, w = orig_size
    if (y0, y1) != (0, h):
        masks_t = torch.nn.functional.pad(masks_t, (y0, h - y1))
    k = masks_t.shape[0]
    flat = masks_t.reshape(k, -1)
    length = flat.shape[1]
    changes = (flat[:, 1:] != flat[:, :-1]).nonzero()  # (mask, position) in row-major order
    per_mask = torch.bincount(changes[:, 0], minlength=k).tolist()
    positions = (changes[:, 1] + 1).cpu().numpy()
    starts_on = flat[:, 0].tolist()
    left, right = x0 * h, (w - x1) * h
    rles, offset = [], 0
    for i in range(k):
        bounds = np.concatenate([[0], positions[offset: offset + per_mask[i]], [length]])
        offset += per_mask[i]
        runs = np.diff(bounds).tolist()
        counts = [0, *runs] if starts_on[i] else runs  # counts start with a zero run
        counts[0] += left
        if len(counts) % 2:  # odd length: the last run is zeros
            counts[-1] += right
        elif right:
            counts.append(right)
        rles.append({"size": [h, w], "counts": counts})
    return rles


def extend_mask_data(data: MaskData, new: MaskData) -> None:
    """``data.cat(new)`` without MaskData's deep copies (slow for long RLE count lists)."""
    for key, value in new.items():
        try:
            old = data[key]
        except KeyError:
            data[key] = value
            continue
        if isinstance(value, torch.Tensor):
            data[key] = torch.cat([old, value])
        elif isinstance(value, np.ndarray):
            data[key] = np.concatenate([old, value])
        else:
            data[key] = [*old, *value]
