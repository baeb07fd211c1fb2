"""Crop masks to whole-image RLEs, and ``MaskData`` concatenation without deep copies.

The everything mode's helpers (:mod:`effvit_sam.automatic`): crop masks become SAM's
uncompressed RLEs of the whole image without the uncropped ``K x H x W`` masks ever being made.
"""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.utils.amg import MaskData, batched_mask_to_box

from .inference.mask_runs import MaskRuns, mask_runs


def uncrop_rles(masks: torch.Tensor, crop_box: list[int], orig_size: tuple[int, int]) -> list:
    """SAM's uncompressed RLEs of ``K x h x w`` crop masks in the whole ``H x W`` image (what
    ``mask_to_rle_pytorch(uncrop_masks(...))`` gives); see :func:`uncrop_rles_transposed`."""
    return uncrop_rles_transposed(masks.transpose(1, 2), crop_box, orig_size)


def uncrop_rles_transposed(masks_t: torch.Tensor, crop_box: list[int],
                            orig_size: tuple[int, int]) -> list:
    """RLEs in the whole ``H x W`` image of crop masks given transposed, ``K x w x h`` (row i is
    the crop's column i: the column-major order of COCO's runs, so no transposing copy)."""
    return rles_from_runs(crop_runs_transposed(masks_t, crop_box, orig_size), crop_box,
                          orig_size)


def crop_runs_transposed(masks_t: torch.Tensor, crop_box: list[int],
                         orig_size: tuple[int, int], *, boxes: bool = False) -> MaskRuns:
    """The runs of transposed crop masks (``K x w x h``) with each crop column padded to the
    image's ``H`` rows, and with ``boxes`` their boxes in the transposed crop frame (SAM's
    ``batched_mask_to_box``; always there on the compiled path).

    The ``K x H x W`` uncropped masks are never made. On the CPU one compiled pass per mask
    (:mod:`effvit_sam.inference.mask_runs`); elsewhere all masks' run boundaries come from one
    comparison and one ``nonzero`` over the batch.
    """
    _, y0, _, y1 = crop_box
    h = orig_size[0]
    fused = mask_runs(masks_t, y0, h - y1)
    if fused is not None:
        return fused
    box = batched_mask_to_box(masks_t).cpu() if boxes else None
    if (y0, y1) != (0, h):
        masks_t = torch.nn.functional.pad(masks_t, (y0, h - y1))
    k = masks_t.shape[0]
    flat = masks_t.reshape(k, -1)
    changes = (flat[:, 1:] != flat[:, :-1]).nonzero()  # (mask, position) in row-major order
    per_mask = torch.bincount(changes[:, 0], minlength=k).tolist()
    positions = (changes[:, 1] + 1).cpu().numpy()
    return MaskRuns(np.split(positions, np.cumsum(per_mask)[:-1]) if k else [],
                    flat[:, 0].tolist() if flat.shape[1] else [False] * k, box, flat.shape[1])


def rles_from_runs(runs: MaskRuns, crop_box: list[int], orig_size: tuple[int, int]) -> list:
    """SAM's uncompressed RLEs of the whole ``H x W`` image from :func:`crop_runs_transposed`:
    the zero columns left and right of the crop are added to the first and last run."""
    x0, _, x1, _ = crop_box
    h, w = orig_size
    left, right = x0 * h, (w - x1) * h
    rles = []
    for changes, starts_on in zip(runs.changes, runs.starts_on, strict=True):
        bounds = np.concatenate([[0], changes, [runs.length]])
        runs_i = np.diff(bounds).tolist()
        counts = [0, *runs_i] if starts_on else runs_i  # counts start with a zero run
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
