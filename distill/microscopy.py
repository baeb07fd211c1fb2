"""Made fluorescence-microscopy-like images with instance masks: the fine-tuning worked example.

Their look differs from the made training scenes of :mod:`distill.synthetic` (colourful
textured objects on textured backgrounds): greyscale, a dark noisy background under uneven
illumination, and blurred bright cells of varied size and brightness, each with a brighter
nucleus, many of them touching or overlapping their neighbours.

``effvit-sam make-microscopy --out DIR --num-images N`` writes the layout that
``effvit-sam make-shards --from-masks DIR`` reads: ``DIR/images/cell_NNNN.png`` (8-bit
greyscale) and ``DIR/masks/cell_NNNN.png`` (8-bit instance labels: 0 background, 1..K the
cells). Cells are painted in order, so a later cell occludes an earlier one; each label is the
cell's *visible* region (the ground truth an annotator would draw), and a cell left with fewer
than :data:`MIN_VISIBLE_AREA` pixels is dropped and the labels renumbered 1..K.

Frames: ``H x W`` arrays in the image's pixel frame, ``(x, y) = (col, row)``. Image ``i`` of
seed ``s`` is drawn from ``numpy.random.default_rng([s, i])``: the same arguments always give
the same files, and one image does not depend on how many others are drawn.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from effvit_sam.errors import UserError
from effvit_sam.io import atomic_write

MIN_IMAGE_SIZE = 64
MIN_CELLS, MAX_CELLS = 6, 28
MAX_LABELS = 255
"""Labels are written as 8-bit PNGs; :data:`MAX_CELLS` keeps every image far below this."""
MIN_VISIBLE_AREA = 20
TOUCH_PROBABILITY = 0.45
"""Share of cells placed against an earlier cell (touching or overlapping it)."""
RADIUS_RANGE = (0.025, 0.09)
"""Cell radii as fractions of the image side."""
HARMONICS = 3
"""Low-frequency radius harmonics that make each cell's outline irregular."""
EDGE_BLUR_PX = 1.2
NOISE_STD = 10.0
BACKGROUND_LEVEL = (12.0, 35.0)


@dataclass(frozen=True)
class MicroscopyImage:
    """``image``: ``H x W`` uint8 greyscale; ``labels``: ``H x W`` uint8, 0 = background and
    ``1..K`` the visible region of each cell, in painting order."""

    image: np.ndarray
    labels: np.ndarray

    @property
    def num_cells(self) -> int:
        return int(self.labels.max())


def _cell_shape(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float,
                radius: float) -> tuple[np.ndarray, np.ndarray]:
    """A cell's outline and its nucleus as ``H x W`` bool masks: an ellipse of random axis
    ratio and angle whose radius wobbles with a few low-frequency harmonics."""
    angle = rng.uniform(0, np.pi)
    ratio = rng.uniform(0.6, 1.0)
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ratio
    theta = np.arctan2(v, u)
    wobble = np.ones_like(theta)
    for k in range(2, 2 + HARMONICS):
        wobble += rng.uniform(0, 0.08) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    rho = np.hypot(u, v) / wobble
    cell = rho <= radius
    nucleus_scale = rng.uniform(0.3, 0.55)
    ncx, ncy = (rng.uniform(-0.2, 0.2, 2) * radius)
    nucleus = np.hypot(u - ncx, v - ncy) <= radius * nucleus_scale
    return cell, nucleus & cell


def _centre(rng: np.random.Generator, size: int, radius: float,
            placed: list[tuple[float, float, float]]) -> tuple[float, float]:
    """A cell centre: free, or (with :data:`TOUCH_PROBABILITY`) against an earlier cell, at a
    distance of 0.75..1.05 times the two radii (overlapping to just touching)."""
    if placed and rng.random() < TOUCH_PROBABILITY:
        px, py, pr = placed[int(rng.integers(len(placed)))]
        angle = rng.uniform(0, 2 * np.pi)
        dist = (pr + radius) * rng.uniform(0.75, 1.05)
        cx, cy = px + dist * np.cos(angle), py + dist * np.sin(angle)
        return float(np.clip(cx, 0, size - 1)), float(np.clip(cy, 0, size - 1))
    return float(rng.uniform(0, size)), float(rng.uniform(0, size))


def draw_microscopy(rng: np.random.Generator, size: int) -> MicroscopyImage:
    """One ``size x size`` image and its instance labels (see the module docstring)."""
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size must be at least {MIN_IMAGE_SIZE}, got {size}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    labels = np.zeros((size, size), np.int32)
    signal = np.zeros((size, size), np.float64)
    placed: list[tuple[float, float, float]] = []
    for index in range(1, int(rng.integers(MIN_CELLS, MAX_CELLS + 1)) + 1):
        radius = rng.uniform(*RADIUS_RANGE) * size
        cx, cy = _centre(rng, size, radius, placed)
        cell, nucleus = _cell_shape(rng, xx, yy, cx, cy, radius)
        if not cell.any():
            continue
        placed.append((cx, cy, radius))
        labels[cell] = index
        # a later cell lies on top: its brightness replaces what is under it
        body = rng.uniform(70, 170)
        signal[cell] = body * rng.uniform(0.85, 1.0, int(cell.sum()))
        signal[nucleus] = min(255.0, body * rng.uniform(1.25, 1.6))
    labels = _renumber(labels)
    background = rng.uniform(*BACKGROUND_LEVEL)
    # uneven illumination: a broad gradient across the field
    gx, gy = rng.uniform(-0.3, 0.3, 2)
    illumination = 1.0 + gx * (xx / size - 0.5) + gy * (yy / size - 0.5)
    image = gaussian_filter(signal, EDGE_BLUR_PX) * illumination + background
    image += gaussian_filter(rng.normal(0, NOISE_STD, (size, size)), 0.7) * 1.5
    image += rng.normal(0, NOISE_STD * 0.5, (size, size))
    return MicroscopyImage(np.clip(image, 0, 255).astype(np.uint8), labels.astype(np.uint8))


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Drop cells with fewer than :data:`MIN_VISIBLE_AREA` visible pixels; labels 1..K in
    painting order."""
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    kept = values[counts >= MIN_VISIBLE_AREA]
    lookup = np.zeros(int(labels.max()) + 1, np.int32)
    lookup[kept] = np.arange(1, len(kept) + 1)
    out = lookup[labels]
    if out.max() > MAX_LABELS:  # cannot happen with MAX_CELLS; checked for the 8-bit format
        raise ValueError(f"{out.max()} cells do not fit an 8-bit label image")
    return out


def microscopy_for(seed: int, index: int, *, size: int) -> MicroscopyImage:
    """Image ``index`` of the set drawn with ``seed``."""
    return draw_microscopy(np.random.default_rng([seed, index]), size)


def _write_png(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(array, mode="L").save(tmp, format="PNG"))


def write_microscopy_folder(out: str | Path, *, num_images: int, size: int = 256,
                            seed: int = 0) -> tuple[Path, int]:
    """Write ``out/images/cell_NNNN.png`` and ``out/masks/cell_NNNN.png`` for ``num_images``
    images; returns ``(out, number of cells)``."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    root = Path(out)
    cells = 0
    for index in range(num_images):
        drawn = microscopy_for(seed, index, size=size)
        name = f"cell_{index:04d}.png"
        _write_png(root / "images" / name, drawn.image)
        _write_png(root / "masks" / name, drawn.labels)
        cells += drawn.num_cells
    return root, cells


def main(argv: list[str]) -> int:
    """``effvit-sam make-microscopy --out DIR --num-images N [--image-size S] [--seed S]``."""
    parser = argparse.ArgumentParser(
        prog="effvit-sam make-microscopy",
        description="Write made microscopy-like greyscale images and instance-label masks "
                    "(DIR/images, DIR/masks) for 'effvit-sam make-shards --from-masks DIR'.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-images", type=int, required=True)
    parser.add_argument("--image-size", type=int, default=256, help="side of the square images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.num_images < 1:
        raise UserError(f"--num-images must be >= 1, got {args.num_images}")
    if args.image_size < MIN_IMAGE_SIZE:
        raise UserError(f"--image-size must be at least {MIN_IMAGE_SIZE}, got {args.image_size}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0 (a NumPy seed), got {args.seed}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty: choose a new folder")
    root, cells = write_microscopy_folder(out, num_images=args.num_images,
                                          size=args.image_size, seed=args.seed)
    print(f"wrote {args.num_images} images with {cells} cells to {root}/images and "
          f"{root}/masks")
    return 0
