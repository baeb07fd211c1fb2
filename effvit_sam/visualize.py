"""Overlay pictures of masks and prompts (pure numpy / PIL, no windows).

``overlay_masks`` paints masks in distinct colours over an image and draws the prompts: green
stars for foreground points, red stars for background points, box rectangles. (COCO RLE lives
in :mod:`effvit_sam.masks`.)
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

from .predictor_inputs import as_rgb_image, to_numpy

FOREGROUND = (0, 220, 0)
BACKGROUND = (230, 0, 0)
BOX_COLOR = (30, 144, 255)
OUTLINE = (255, 255, 255)
_GOLDEN = 0.618033988749895


def distinct_colors(n: int) -> np.ndarray:
    """``n x 3`` uint8 colours with well separated hues (golden-ratio steps), deterministic."""
    hues = (np.arange(n) * _GOLDEN + 0.1) % 1.0
    return np.array([[round(c * 255) for c in colorsys.hsv_to_rgb(h, 0.75, 0.95)] for h in hues],
                    dtype=np.uint8).reshape(n, 3)


def _as_masks(masks, size: tuple[int, int]) -> np.ndarray:
    """Masks ``H x W`` / ``N x H x W`` / ``... x H x W`` (bool or 0/1) to ``N x H x W`` bool."""
    array = to_numpy(masks, "masks", np.bool_)
    if array.ndim < 2 or tuple(array.shape[-2:]) != tuple(size):
        raise ValueError(f"masks must be ... x {size[0]} x {size[1]} (the image size), got "
                         f"shape {array.shape}")
    return array.reshape(-1, *size)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the outline)."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _star(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    """Vertices of a five-pointed star centred on ``(cx, cy)``."""
    vertices = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * 0.45
        angle = -math.pi / 2 + i * math.pi / 5
        vertices.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return vertices


def overlay_masks(image, masks, *, points=None, labels=None, boxes=None, alpha: float = 0.5,
                  colors=None) -> np.ndarray:
    """Paint ``masks`` over ``image`` and draw the prompts; returns a new ``H x W x 3`` uint8.

    image: ``H x W x 3`` uint8 RGB (or grayscale / RGBA / PIL, see ``predictor_inputs``).
    masks: ``N x H x W`` (or ``H x W``, or any ``... x H x W``) bool; mask i is blended as
    ``(1 - alpha) * pixel + alpha * colors[i]`` (later masks over earlier ones) and outlined in
    its colour. points: ``K x 2`` (x, y) pixels, labels ``K`` (1 green star, 0 red star; default
    1). boxes: ``J x 4`` XYXY pixels, drawn as rectangles. colors: ``N x 3`` uint8 (default
    :func:`distinct_colors`).
    """
    rgb = as_rgb_image(image)
    h, w = rgb.shape[:2]
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    stack = _as_masks(masks, (h, w)) if masks is not None else np.zeros((0, h, w), bool)
    if colors is None:
        palette = distinct_colors(len(stack))
    else:
        palette = to_numpy(colors, "colors").reshape(-1, 3)
        if len(palette) < len(stack) or palette.min() < 0 or palette.max() > 255:
            raise ValueError(f"colors must be N x 3 values in 0..255 with N >= {len(stack)} "
                             f"masks, got shape {palette.shape}")
        palette = palette.round().astype(np.uint8)
    out = rgb.astype(np.float32)
    for mask, color in zip(stack, palette, strict=False):
        out[mask] = (1.0 - alpha) * out[mask] + alpha * color.astype(np.float32)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    for mask, color in zip(stack, palette, strict=False):
        out[_boundary(mask)] = color
    if points is None and boxes is None:
        return out
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(max(h, w) / 300))
    if boxes is not None:
        for x0, y0, x1, y1 in to_numpy(boxes, "boxes").reshape(-1, 4):
            draw.rectangle((x0, y0, x1, y1), outline=BOX_COLOR, width=line)
    if points is not None:
        xy = to_numpy(points, "points").reshape(-1, 2)
        lab = np.ones(len(xy)) if labels is None else to_numpy(labels, "labels").reshape(-1)
        if len(lab) != len(xy):
            raise ValueError(f"{len(lab)} labels for {len(xy)} points")
        radius = max(5.0, max(h, w) / 60)
        for (x, y), label in zip(xy, lab, strict=True):
            fill = FOREGROUND if label > 0 else BACKGROUND
            draw.polygon(_star(float(x), float(y), radius), fill=fill, outline=OUTLINE)
    return np.asarray(canvas)
