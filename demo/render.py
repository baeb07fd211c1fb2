"""What the demo shows and exports: overlays, mask PNGs and COCO-RLE JSON (no browser needed).

Masks are ``H x W`` (or ``N x H x W``) boolean arrays in the original frame; prompts are in the
same frame (see :mod:`demo.prompts`). Colours and mask drawing come from
:func:`effvit_sam.visualize.overlay_masks` so the demo and the ``segment`` command look alike.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from effvit_sam.io import atomic_write
from effvit_sam.masks import mask_to_box_xywh, mask_to_rle
from effvit_sam.visualize import overlay_masks

from .prompts import Prompts

PENDING_CORNER_COLOR = (255, 215, 0)
"""Yellow: the first corner of a box still waiting for its second click."""


def _marker_radius(image_size: tuple[int, int]) -> int:
    # Scale markers with the image so they stay visible on large photos and small on thumbnails.
    return max(3, round(max(image_size) / 120))


def render_overlay(image: np.ndarray, masks: np.ndarray | None, prompts: Prompts, *,
                   alpha: float = 0.5) -> np.ndarray:
    """Draw ``masks`` (``N x H x W`` bool or ``None``) and the prompts on ``image`` (``H x W x 3``).

    Points are drawn by label (foreground/background colours of ``overlay_masks``), the box as a
    rectangle and a pending box corner as a yellow cross. Returns a new ``H x W x 3`` uint8 image.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H x W x 3 uint8, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    if masks is None:
        masks = np.zeros((0, h, w), dtype=bool)
    points = labels = boxes = None
    if prompts.points:
        points = np.array([[p.x, p.y] for p in prompts.points], dtype=np.float32)
        labels = np.array([p.label for p in prompts.points], dtype=np.int64)
    if prompts.box is not None:
        boxes = prompts.box.as_array()[None]
    out = overlay_masks(image, masks, points=points, labels=labels, boxes=boxes, alpha=alpha)
    if prompts.corner is not None:
        pil = Image.fromarray(np.ascontiguousarray(out))
        draw = ImageDraw.Draw(pil)
        x, y = prompts.corner
        r = _marker_radius((h, w)) * 2
        width = max(1, r // 3)
        draw.line([(x - r, y), (x + r, y)], fill=PENDING_CORNER_COLOR, width=width)
        draw.line([(x, y - r), (x, y + r)], fill=PENDING_CORNER_COLOR, width=width)
        out = np.asarray(pil)
    return out


def mask_png_bytes(mask: np.ndarray) -> bytes:
    """One ``H x W`` boolean mask as an 8-bit greyscale PNG (255 inside, 0 outside)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {mask.shape}")
    buf = io.BytesIO()
    Image.fromarray(mask.astype(bool).astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def label_map(masks: np.ndarray) -> np.ndarray:
    """``N x H x W`` masks to an ``H x W`` label image: 0 background, ``i + 1`` for mask ``i``.

    Where masks overlap the later one wins; the automatic generator's records are drawn largest
    first, so small parts stay visible on top of the objects containing them. uint8 when it fits,
    uint16 otherwise (PNG stores both).
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be N x H x W, got shape {masks.shape}")
    dtype = np.uint8 if len(masks) < 256 else np.uint16
    if len(masks) >= 65536:
        raise ValueError(f"{len(masks)} masks do not fit a 16-bit label image")
    out = np.zeros(masks.shape[1:], dtype=dtype)
    for i, m in enumerate(masks):
        out[m] = i + 1
    return out


def label_png_bytes(masks: np.ndarray) -> bytes:
    """:func:`label_map` of ``N x H x W`` masks as a greyscale PNG (8- or 16-bit)."""
    labels = label_map(masks)
    buf = io.BytesIO()
    Image.fromarray(labels).save(buf, format="PNG")
    return buf.getvalue()


def coco_records(masks: np.ndarray, scores: np.ndarray | None = None, *,
                 prompts: Prompts | None = None) -> list[dict[str, Any]]:
    """COCO-style annotation dicts for ``N x H x W`` masks.

    Each record has ``segmentation`` (COCO RLE: ``{"size": [H, W], "counts": str}``), ``area``
    (pixels), ``bbox`` (XYWH pixels), ``score`` (the decoder's predicted IoU, when given) and,
    when ``prompts`` is given, the ``point_coords``/``point_labels``/``box`` that produced it
    (original-image pixels, SAM's keyword names).
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be N x H x W, got shape {masks.shape}")
    if scores is not None and len(scores) != len(masks):
        raise ValueError(f"{len(scores)} scores for {len(masks)} masks")
    records = []
    for i, mask in enumerate(masks):
        rle = dict(mask_to_rle(mask))
        if isinstance(rle.get("counts"), bytes):
            rle["counts"] = rle["counts"].decode("ascii")  # JSON needs text
        record: dict[str, Any] = {
            "id": i + 1,
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"]},
            "area": int(mask.sum()),
            "bbox": mask_to_box_xywh(mask),
        }
        if scores is not None:
            record["score"] = float(scores[i])
        if prompts is not None:
            record["point_coords"] = [[p.x, p.y] for p in prompts.points]
            record["point_labels"] = [p.label for p in prompts.points]
            record["box"] = None if prompts.box is None else prompts.box.as_array().tolist()
        records.append(record)
    return records


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` atomically (a download is never a half-written file)."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return Path(path)
