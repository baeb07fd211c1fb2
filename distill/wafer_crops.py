"""Training crops of made wafers: the data to fine-tune a model for tiled wafer segmentation.

``effvit-sam make-wafer-crops --out DIR --num-images N`` cuts ``N`` square windows at random
positions out of made wafers (:class:`distill.wafer.Wafer`, of seeds other than the
benchmark's unless asked) and writes the layout that ``effvit-sam make-shards --from-masks DIR``
reads: ``DIR/images/wafer_NNNN.png`` (RGB) and ``DIR/masks/wafer_NNNN.png`` (8-bit instance
labels: 0 background, 1..K the objects). The objects are those of the wafer's ground truth
clipped to the window: dies (their visible body), scratches, particles and blobs; a part of an
object with fewer than :data:`MIN_VISIBLE_AREA` pixels in the window is left out (it stays
background). A window therefore sees cut dies and cut defects, as a tile of a huge scan does.

Crop ``i`` of seed ``s`` comes from wafer ``s * 1000 + i // crops_per_wafer`` at a position drawn
from ``numpy.random.default_rng([s, i])``: the same arguments give the same files.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from effvit_sam.errors import UserError
from effvit_sam.io import atomic_write

from .wafer import Wafer, _overlaps

MIN_VISIBLE_AREA = 20
"""Pixels an object part needs inside a window to be labelled."""
MAX_LABELS = 255


def objects_in(wafer: Wafer, rect: tuple[int, int, int, int]) -> Iterator[tuple[str, np.ndarray]]:
    """``(category, mask)`` of every die and defect meeting ``rect = (x0, y0, x1, y1)``, each
    mask ``(y1 - y0) x (x1 - x0)`` in the window's frame (a die's mask is its visible body)."""
    x0, y0, x1, y1 = rect
    defects = [(wafer.defects[k].kind, wafer.defects[k].mask(rect))
               for k in wafer.defects_in(rect)]
    for die in wafer.layout.dies(wafer.height, wafer.width):
        if not _overlaps(die, rect):
            continue
        body = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        body[max(0, die[1] - y0): die[3] - y0, max(0, die[0] - x0): die[2] - x0] = True
        for _, mask in defects:
            body &= ~mask
        yield "die", body
    yield from defects


def wafer_crop(seed: int, index: int, *, size: int, wafer_size: int,
               crops_per_wafer: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``index`` of ``seed``: ``(size x size x 3 uint8 image, size x size uint8 labels)``."""
    wafer = Wafer(wafer_size, wafer_size, seed=seed * 1000 + index // crops_per_wafer)
    rng = np.random.default_rng([seed, index])
    x0, y0 = (int(v) for v in rng.integers(0, wafer_size - size + 1, size=2))
    rect = (x0, y0, x0 + size, y0 + size)
    labels = np.zeros((size, size), dtype=np.uint8)
    count = 0
    for _, mask in objects_in(wafer, rect):
        if mask.sum() < MIN_VISIBLE_AREA or count == MAX_LABELS:
            continue
        count += 1
        labels[mask] = count
    return wafer.read(*rect), labels


def write_crops(out: str | Path, *, num_images: int, size: int = 512, seed: int = 1,
                wafer_size: int = 4096, crops_per_wafer: int = 25) -> tuple[Path, int]:
    """Write ``out/images`` and ``out/masks``; returns ``(out, number of labelled objects)``."""
    if size > wafer_size:
        raise UserError(f"--crop-size {size} is larger than --wafer-size {wafer_size}")
    root, objects = Path(out), 0
    for index in range(num_images):
        image, labels = wafer_crop(seed, index, size=size, wafer_size=wafer_size,
                                   crops_per_wafer=crops_per_wafer)
        name = f"wafer_{index:04d}.png"
        atomic_write(root / "images" / name,
                     lambda tmp, a=image: Image.fromarray(a, mode="RGB").save(tmp, format="PNG"))
        atomic_write(root / "masks" / name,
                     lambda tmp, a=labels: Image.fromarray(a, mode="L").save(tmp, format="PNG"))
        objects += int(labels.max())
    return root, objects


def main(argv: list[str]) -> int:
    """``effvit-sam make-wafer-crops --out DIR --num-images N [--crop-size S] [--seed S]``."""
    parser = argparse.ArgumentParser(
        prog="effvit-sam make-wafer-crops",
        description="Write crops of made wafers with instance-label masks (DIR/images, "
                    "DIR/masks) for 'effvit-sam make-shards --from-masks DIR'.")
    parser.add_argument("--out", required=True, help="output folder (new or empty)")
    parser.add_argument("--num-images", type=int, required=True)
    parser.add_argument("--crop-size", type=int, default=512, help="side of the square crops")
    parser.add_argument("--seed", type=int, default=1,
                        help="crops of seed S come from wafers S*1000, S*1000+1, ... "
                             "(the benchmark wafer is seed 0: keep S >= 1 to hold it out)")
    parser.add_argument("--wafer-size", type=int, default=4096)
    parser.add_argument("--crops-per-wafer", type=int, default=25)
    args = parser.parse_args(argv)
    if args.num_images < 1 or args.crops_per_wafer < 1:
        raise UserError("--num-images and --crops-per-wafer must be >= 1")
    if args.crop_size < 64:
        raise UserError(f"--crop-size must be >= 64, got {args.crop_size}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty: choose a new folder")
    root, objects = write_crops(out, num_images=args.num_images, size=args.crop_size,
                                seed=args.seed, wafer_size=args.wafer_size,
                                crops_per_wafer=args.crops_per_wafer)
    print(f"wrote {args.num_images} wafer crops with {objects} objects to {root}/images and "
          f"{root}/masks")
    return 0
