"""The load test's made images and its leak checks (pure: files in, list of problems out).

Each simulated user has its own image from :func:`made_image` (a size and colours no other user
has), so any answer carrying another session's image, mask or prompts fails these checks. The
checks redraw what the page should show with the demo's own :func:`demo.render.render_overlay`
and compare pixels exactly (the overlay travels as PNG, so nothing is lost on the way).
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
from PIL import Image

from effvit_sam.masks import rle_to_mask
from effvit_sam.visualize import BACKGROUND, BOX_COLOR, FOREGROUND, OUTLINE, distinct_colors

from .prompts import Point, Prompts
from .render import label_map, render_overlay

MARKER_COLORS = np.array([FOREGROUND, BACKGROUND, BOX_COLOR, OUTLINE], dtype=np.uint8)


def made_image(index: int) -> np.ndarray:
    """User ``index``'s image, ``H x W x 3`` uint8: ``(120 + 8i) x (90 + 5i)`` pixels (W x H),
    a dark background and a bright rectangle covering the middle half, hues set by ``index``."""
    w, h = 120 + 8 * index, 90 + 5 * index
    hue = (index * 0.618033988749895) % 1.0
    dark = [round(c * 255) for c in colorsys.hsv_to_rgb(hue, 0.8, 0.35)]
    bright = [round(c * 255) for c in colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.6, 0.9)]
    image = np.empty((h, w, 3), np.uint8)
    image[:] = dark
    image[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = bright
    return image


def _read_rgb(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _shape_problem(name: str, got: tuple[int, ...], image: np.ndarray) -> list[str]:
    h, w = image.shape[:2]
    if tuple(got[:2]) != (h, w):
        return [f"{name} is {got[1]}x{got[0]}, the user's image is {w}x{h}"]
    return []


def check_overlay(path: str | Path, image: np.ndarray, *, exact: bool) -> list[str]:
    """Problems with an overlay answered for ``image`` (``H x W x 3``): ``exact`` when nothing
    may be drawn on it; else every pixel must be the image's own, its 50% blend with the first
    mask colour, that colour (the outline) or a prompt marker's colour."""
    overlay = _read_rgb(path)
    problems = _shape_problem("overlay", overlay.shape, image)
    if problems:
        return problems
    if exact:
        bad = (overlay != image).any(-1)
    else:
        color = distinct_colors(1)[0].astype(np.float32)
        blend = np.rint(0.5 * image.astype(np.float32) + 0.5 * color).astype(np.uint8)
        ok = (overlay == image).all(-1) | (overlay == blend).all(-1)
        ok |= (overlay == distinct_colors(1)[0]).all(-1)
        ok |= (overlay[:, :, None, :] == MARKER_COLORS[None, None]).all(-1).any(-1)
        bad = ~ok
    if bad.any():
        problems.append(f"{int(bad.sum())} overlay pixels are not the user's image")
    return problems


def check_point_export(png: str, js: str, image: np.ndarray, points: list[tuple[int, int, int]],
                       overlay: str | Path) -> list[str]:
    """Problems with a point-mode export: its size, its prompts (``points``: the user's own
    ``(x, y, label)`` clicks) and its mask, which redrawn with those prompts on ``image`` must
    give exactly the last ``overlay`` the user was shown."""
    doc = json.loads(Path(js).read_text())
    h, w = image.shape[:2]
    problems = [] if doc["image_size"] == [h, w] else [f"export image_size {doc['image_size']}"]
    if len(doc["annotations"]) != 1:
        return problems + [f"{len(doc['annotations'])} annotations, expected 1"]
    (rec,) = doc["annotations"]
    if rec["point_coords"] != [[float(x), float(y)] for x, y, _ in points] or \
            rec["point_labels"] != [lab for *_, lab in points]:
        problems.append(f"exported prompts {rec['point_coords']} {rec['point_labels']} are not "
                        f"the user's clicks {points}")
    mask = rle_to_mask(rec["segmentation"]).astype(bool)
    problems += _shape_problem("exported mask", mask.shape, image)
    if problems:
        return problems
    with Image.open(png) as im:
        if not np.array_equal(np.asarray(im) > 0, mask):
            problems.append("mask.png differs from the JSON's mask")
    prompts = Prompts(points=tuple(Point(float(x), float(y), lab) for x, y, lab in points))
    if not np.array_equal(render_overlay(image, mask[None], prompts), _read_rgb(overlay)):
        problems.append("the exported mask and prompts do not redraw into the shown overlay")
    return problems


def check_everything(overlay: str | Path, png: str, js: str, image: np.ndarray) -> list[str]:
    """Problems with an "everything" answer: the exported masks (all of the user's size) must
    redraw on ``image`` into exactly the shown ``overlay``, and the label PNG must match them."""
    doc = json.loads(Path(js).read_text())
    h, w = image.shape[:2]
    problems = [] if doc["image_size"] == [h, w] else [f"export image_size {doc['image_size']}"]
    masks = np.zeros((0, h, w), bool)
    if doc["annotations"]:
        stack = [rle_to_mask(a["segmentation"]).astype(bool) for a in doc["annotations"]]
        for m in stack:
            problems += _shape_problem("an exported mask", m.shape, image)
        if problems:
            return problems
        masks = np.stack(stack)
    with Image.open(png) as im:
        labels = np.asarray(im)
    if labels.shape != (h, w) or not np.array_equal(labels, label_map(masks)):
        problems.append("the label PNG does not match the exported masks")
    if not np.array_equal(render_overlay(image, masks, Prompts()), _read_rgb(overlay)):
        problems.append("the exported masks do not redraw into the shown overlay")
    return problems
