"""Simulated clicks for the interactive (point-prompt) evaluation.

The protocol is the one of the interactive-segmentation literature (RITM's clicker, used by the
official EfficientViT-SAM and SAM evaluations):

* the first click is positive, at the pixel of the object farthest from its boundary;
* each next click goes into the error region whose interior point lies farther from its own
  boundary (the distance-transform maxima are compared): a false-negative region gets a
  positive click, a false-positive region a negative one; the click is positive only when the
  false negatives are strictly farther (RITM's rule, so ties go to the false positives).

Distances are Euclidean, measured with the image border counted as boundary (the masks are
zero-padded by one pixel first), so a click never hugs the frame. Clicks are ``(x, y)`` integer
pixel indices in the original image; among equally distant pixels the first in row-major
order wins, which makes the clicks deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt


@dataclass(frozen=True)
class Click:
    """A click at pixel ``(x, y)`` of the original image; ``positive`` = foreground."""

    x: int
    y: int
    positive: bool


def farthest_from_boundary(region: np.ndarray) -> tuple[int, int, float]:
    """The pixel of ``region`` (``H x W`` bool) farthest from its boundary.

    Returns ``(x, y, distance)``; distance 0 (and ``(0, 0)``) when the region is empty.
    """
    if region.ndim != 2:
        raise ValueError(f"region must be H x W, got shape {region.shape}")
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    if len(rows) == 0:
        return 0, 0, 0.0
    # Only the region's bounding box (plus a background ring) can hold its nearest background
    # pixels, and row-major argmax order is kept, so the crop gives the whole image's answer.
    y0, x0 = rows[0], cols[0]
    crop = region[y0: rows[-1] + 1, x0: cols[-1] + 1]
    dist = distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]
    y, x = divmod(int(np.argmax(dist)), crop.shape[1])
    return int(x + x0), int(y + y0), float(dist[y, x])


def first_click(gt: np.ndarray) -> Click:
    """A positive click at the point of ``gt`` farthest from its boundary."""
    if not gt.any():
        raise ValueError("cannot click on an empty ground-truth mask")
    x, y, _ = farthest_from_boundary(gt)
    return Click(x, y, True)


def next_click(gt: np.ndarray, pred: np.ndarray) -> Click | None:
    """The correcting click for prediction ``pred`` of ``gt`` (both ``H x W`` bool).

    ``None`` when the prediction is already exact (no error region to click in).
    """
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and prediction {pred.shape} differ in shape")
    fn_x, fn_y, fn_dist = farthest_from_boundary(gt & ~pred)
    fp_x, fp_y, fp_dist = farthest_from_boundary(pred & ~gt)
    if fn_dist == 0 and fp_dist == 0:
        return None
    if fn_dist > fp_dist:
        return Click(fn_x, fn_y, True)
    return Click(fp_x, fp_y, False)


PAD_LABEL = -1
"""SAM's label for a padding point: the prompt encoder gives it the "not a point" embedding."""


def clicks_to_arrays(clicks: list[list[Click | None]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-instance click lists (all the same length) to ``K x N x 2`` (x, y) and ``K x N``.

    ``None`` (no click needed: the mask was already exact) becomes a padding point, so every
    instance of an image keeps the same number of points and they share one decoder call.
    """
    coords = np.array([[(c.x, c.y) if c else (0, 0) for c in row] for row in clicks],
                      dtype=np.float64)
    labels = np.array([[int(c.positive) if c else PAD_LABEL for c in row] for row in clicks],
                      dtype=np.int64)
    return coords.reshape(len(clicks), -1, 2), labels.reshape(len(clicks), -1)
