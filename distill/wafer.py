"""Made wafer-like test images of any size, with exact COCO ground truth of dies and defects.

A wafer scan is a grid of identical dies (a light body with a darker core and a ring of bond
pads) separated by dark streets, with small defects on top: **scratches** (thin line segments,
up to a few hundred pixels long), **particles** (discs of 3 to 8 pixels radius) and **blobs**
(wobbly discs of 10 to 40 pixels). Defects never touch each other; a share of them is centred
on the seams of a tile grid (``seam_tile`` / ``seam_overlap``) so that they are cut by tile
edges. Each die's mask is its visible body (the die minus the defects on it).

The image is written as a tiled BigTIFF one TIFF tile at a time (tifffile), and every object's
mask is made on its own bounding box, so a 20000 x 20000 wafer needs tens of MB of memory.
Ground truth is COCO JSON with whole-image compressed RLEs and whole-pixel boxes
(:mod:`effvit_sam.masks`); annotations carry ``crosses_seam`` (an edge of a tile of the seam
grid cuts them: some tile sees only part of them).

    effvit-sam make-wafer wafer.tif --size 20000 --json wafer.json --seam-tile 512

Frames: full-image pixels, ``(x, y) = (col, row)``, pixel centres at ``+0.5``.
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effvit_sam.errors import UserError
from effvit_sam.io import atomic_write, write_json
from effvit_sam.masks import cropped_mask_to_rle
from effvit_sam.tiled import tile_grid

logger = logging.getLogger(__name__)

CATEGORIES = ("die", "scratch", "particle", "blob")
STREET = (55, 58, 66)
DIE = (150, 160, 178)
CORE = (126, 134, 150)
PAD = (205, 190, 110)
DEFECT_COLOURS = {"scratch": (245, 245, 250), "particle": (22, 20, 18), "blob": (120, 62, 30)}
NOISE = 3
"""Uniform pixel noise amplitude (grey levels) on dies and streets; defects are flat."""
PAD_SIZE, PAD_STEP, PAD_INSET = 10, 36, 8
_BUCKET = 256
"""Side of the spatial buckets that find the defects of a tile."""


@dataclass(frozen=True)
class Defect:
    """One defect: ``kind`` in :data:`DEFECT_COLOURS`, centre ``(cx, cy)`` and shape
    parameters: ``radius`` (particle, blob), ``wobble`` (blob: amplitudes and phases of two
    radial harmonics), ``end`` and ``half_width`` (scratch: the segment runs from the centre
    minus ``end`` to the centre plus ``end``)."""

    kind: str
    cx: float
    cy: float
    radius: float = 0.0
    wobble: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    end: tuple[float, float] = (0.0, 0.0)
    half_width: float = 0.0

    def reach(self) -> float:
        if self.kind == "scratch":
            return float(np.hypot(*self.end)) + self.half_width
        return self.radius * (1.0 + abs(self.wobble[0]) + abs(self.wobble[2])) + 1.0

    def rect(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Pixels that may hold the defect, ``(x0, y0, x1, y1)`` clipped to the image."""
        r = self.reach() + 1.0
        return (max(0, int(self.cx - r)), max(0, int(self.cy - r)),
                min(width, int(np.ceil(self.cx + r)) + 1),
                min(height, int(np.ceil(self.cy + r)) + 1))

    def mask(self, rect: tuple[int, int, int, int]) -> np.ndarray:
        """The defect's pixels inside ``rect`` as a ``(y1 - y0) x (x1 - x0)`` bool array."""
        x0, y0, x1, y1 = rect
        dy = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5 - self.cy
        dx = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5 - self.cx
        if self.kind == "scratch":
            ex, ey = self.end
            t = np.clip((dx * ex + dy * ey) / (ex * ex + ey * ey), -1.0, 1.0)
            return np.hypot(dx - t * ex, dy - t * ey) <= self.half_width
        r = np.hypot(dx, dy)
        a1, p1, a2, p2 = self.wobble
        theta = np.arctan2(dy, dx)
        limit = self.radius * (1.0 + a1 * np.sin(3 * theta + p1) + a2 * np.sin(5 * theta + p2))
        return r <= limit


@dataclass(frozen=True)
class WaferLayout:
    """Die grid: ``die`` pixels square, ``street`` pixels between dies, first die at
    ``(origin, origin)``."""

    die: int = 600
    street: int = 40
    origin: int = 20

    @property
    def pitch(self) -> int:
        return self.die + self.street

    def dies(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """Rectangles of the dies (clipped to the image; dies fully outside are left out)."""
        out = []
        for y in range(self.origin, height, self.pitch):
            for x in range(self.origin, width, self.pitch):
                out.append((x, y, min(width, x + self.die), min(height, y + self.die)))
        return out


def seam_lines(height: int, width: int, tile: int, overlap: int) -> tuple[list[int], list[int]]:
    """Inner tile edges ``(xs, ys)`` of the grid of :func:`effvit_sam.tiled.tile_grid`."""
    windows = tile_grid(height, width, tile, overlap)
    xs = sorted({v for w in windows for v in (w.x0, w.x1) if 0 < v < width})
    ys = sorted({v for w in windows for v in (w.y0, w.y1) if 0 < v < height})
    return xs, ys


def sample_defects(rng: np.random.Generator, height: int, width: int, count: int, *,
                   seams: tuple[list[int], list[int]], seam_fraction: float) -> list[Defect]:
    """``count`` non-touching defects (fewer if the image is too crowded to place them)."""
    taken: dict[tuple[int, int], list[tuple[int, int, int, int]]] = defaultdict(list)
    defects: list[Defect] = []
    xs, ys = seams
    for _ in range(count * 20):
        if len(defects) == count:
            break
        kind = ("scratch", "particle", "blob")[int(rng.integers(3))]
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        if rng.random() < seam_fraction and (xs or ys):
            if xs and (not ys or rng.random() < 0.5):
                cx = float(xs[int(rng.integers(len(xs)))]) + rng.uniform(-2, 2)
            else:
                cy = float(ys[int(rng.integers(len(ys)))]) + rng.uniform(-2, 2)
        if kind == "particle":
            d = Defect(kind, cx, cy, radius=rng.uniform(3, 8))
        elif kind == "blob":
            d = Defect(kind, cx, cy, radius=rng.uniform(10, 40),
                       wobble=(rng.uniform(-0.2, 0.2), rng.uniform(0, 6.3),
                               rng.uniform(-0.1, 0.1), rng.uniform(0, 6.3)))
        else:
            length, angle = rng.uniform(30, 300), rng.uniform(0, np.pi)
            d = Defect(kind, cx, cy, end=(length * np.cos(angle), length * np.sin(angle)),
                       half_width=rng.uniform(1.0, 2.5))
        x0, y0, x1, y1 = d.rect(height, width)
        if x1 - x0 < 3 or y1 - y0 < 3:
            continue
        grown = (x0 - 2, y0 - 2, x1 + 2, y1 + 2)  # a gap of 2 pixels at least
        cells = [(bx, by) for by in range(max(0, grown[1]) // _BUCKET, grown[3] // _BUCKET + 1)
                 for bx in range(max(0, grown[0]) // _BUCKET, grown[2] // _BUCKET + 1)]
        if any(_overlaps(grown, other) for c in cells for other in taken[c]):
            continue
        for c in cells:
            taken[c].append((x0, y0, x1, y1))
        defects.append(d)
    return defects


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _die_pixels(xs: np.ndarray, ys: np.ndarray, layout: WaferLayout) -> np.ndarray:
    """``h x w x 3`` float32 die/street pattern at pixel columns ``xs`` and rows ``ys``."""
    u = ((xs - layout.origin) % layout.pitch)[None, :]
    v = ((ys - layout.origin) % layout.pitch)[:, None]
    inside = (u < layout.die) & (v < layout.die) & (xs >= layout.origin)[None, :] & \
        (ys >= layout.origin)[:, None]
    edge_u, edge_v = np.minimum(u, layout.die - 1 - u), np.minimum(v, layout.die - 1 - v)
    ring_u = (edge_u >= PAD_INSET) & (edge_u < PAD_INSET + PAD_SIZE)
    ring_v = (edge_v >= PAD_INSET) & (edge_v < PAD_INSET + PAD_SIZE)
    pad = inside & ((ring_u & (v % PAD_STEP < PAD_SIZE)) | (ring_v & (u % PAD_STEP < PAD_SIZE)))
    core = inside & (edge_u > layout.die // 4) & (edge_v > layout.die // 4)
    out = np.empty((len(ys), len(xs), 3), dtype=np.float32)
    out[:] = STREET
    out[inside] = DIE
    out[core] = CORE
    out[pad] = PAD
    return out


def _noise(xs: np.ndarray, ys: np.ndarray, seed: int) -> np.ndarray:
    """``h x w`` float32 noise in ``[-NOISE, NOISE]``, an integer hash of ``(x, y, seed)``."""
    mask = np.uint64(0xFFFFFFFF)
    h = (xs.astype(np.uint64)[None, :] * np.uint64(0x9E3779B1)
         + ys.astype(np.uint64)[:, None] * np.uint64(0x85EBCA77)
         + np.uint64(seed % (1 << 32)) * np.uint64(0xC2B2AE3D)) & mask
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x2C1B3C6D)) & mask
    h ^= h >> np.uint64(12)
    return (h % np.uint64(2 * NOISE + 1)).astype(np.float32) - NOISE


class Wafer:
    """A wafer of ``height x width`` pixels: layout, defects and the pixels of any window."""

    def __init__(self, height: int, width: int, *, seed: int = 0, layout: WaferLayout =
                 WaferLayout(), defects_per_mpx: float = 4.0, seam_tile: int = 512,
                 seam_overlap: int = 64, seam_fraction: float = 0.35) -> None:
        if height < 64 or width < 64:
            raise UserError(f"wafer must be at least 64 x 64 pixels, got {height}x{width}")
        if defects_per_mpx < 0:
            raise UserError(f"defects_per_mpx must be >= 0, got {defects_per_mpx}")
        self.height, self.width, self.seed, self.layout = height, width, seed, layout
        self.seam_tile, self.seam_overlap = seam_tile, seam_overlap
        rng = np.random.default_rng(seed)
        count = max(3, round(defects_per_mpx * height * width / 1e6))
        self.defects = sample_defects(rng, height, width, count,
                                      seams=seam_lines(height, width, seam_tile, seam_overlap),
                                      seam_fraction=seam_fraction)
        self._buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        for k, d in enumerate(self.defects):
            x0, y0, x1, y1 = d.rect(height, width)
            for by in range(y0 // _BUCKET, (y1 - 1) // _BUCKET + 1):
                for bx in range(x0 // _BUCKET, (x1 - 1) // _BUCKET + 1):
                    self._buckets[(bx, by)].append(k)

    def defects_in(self, rect: tuple[int, int, int, int]) -> list[int]:
        x0, y0, x1, y1 = rect
        found = {k for by in range(y0 // _BUCKET, (y1 - 1) // _BUCKET + 1)
                 for bx in range(x0 // _BUCKET, (x1 - 1) // _BUCKET + 1)
                 for k in self._buckets.get((bx, by), ())}
        return sorted(k for k in found
                      if _overlaps(rect, self.defects[k].rect(self.height, self.width)))

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Pixels ``[y0, y1) x [x0, x1)`` as ``h x w x 3`` uint8 (any window of the same
        pixels gives the same values: the noise is a hash of the pixel position)."""
        xs, ys = np.arange(x0, x1), np.arange(y0, y1)
        out = _die_pixels(xs, ys, self.layout)
        out += _noise(xs, ys, self.seed)[..., None]
        for k in self.defects_in((x0, y0, x1, y1)):
            d = self.defects[k]
            out[d.mask((x0, y0, x1, y1))] = DEFECT_COLOURS[d.kind]
        return np.clip(out, 0, 255).astype(np.uint8)

    def tiles(self, tile: int) -> Iterator[np.ndarray]:
        """Row-major ``tile x tile x 3`` tiles (edge tiles zero-padded), as TIFF stores them."""
        for y in range(0, self.height, tile):
            for x in range(0, self.width, tile):
                pixels = self.read(x, y, min(self.width, x + tile), min(self.height, y + tile))
                if pixels.shape[:2] != (tile, tile):
                    pixels = np.pad(pixels, ((0, tile - pixels.shape[0]),
                                             (0, tile - pixels.shape[1]), (0, 0)))
                yield pixels

    def write_tiff(self, path: str | Path, *, tile: int = 256) -> None:
        """The image as a tiled, uncompressed BigTIFF at ``path`` (atomically)."""
        import tifffile

        if tile % 16:
            raise UserError(f"TIFF tile size must be a multiple of 16, got {tile}")
        atomic_write(path, lambda tmp: tifffile.imwrite(
            tmp, self.tiles(tile), shape=(self.height, self.width, 3), dtype=np.uint8,
            tile=(tile, tile), bigtiff=True, photometric="rgb"))

    def crosses_seam(self, rect: tuple[int, int, int, int]) -> bool:
        """Whether a tile edge of the seam grid cuts ``rect`` (some tile sees only part of
        it: the merge must join that part with the rest)."""
        windows = tile_grid(self.height, self.width, self.seam_tile, self.seam_overlap)
        x0, y0, x1, y1 = rect
        return any(w.x0 < x1 and x0 < w.x1 and w.y0 < y1 and y0 < w.y1  # overlaps the tile
                   and not (w.x0 <= x0 and w.y0 <= y0 and x1 <= w.x1 and y1 <= w.y1)
                   for w in windows)

    def objects(self) -> Iterator[tuple[str, np.ndarray, int, int]]:
        """``(category, crop mask, x0, y0)`` of every die (visible body) and defect."""
        for x0, y0, x1, y1 in self.layout.dies(self.height, self.width):
            body = np.ones((y1 - y0, x1 - x0), dtype=bool)
            for k in self.defects_in((x0, y0, x1, y1)):
                body &= ~self.defects[k].mask((x0, y0, x1, y1))
            yield "die", body, x0, y0
        for d in self.defects:
            rect = d.rect(self.height, self.width)
            yield d.kind, d.mask(rect), rect[0], rect[1]

    def coco(self, file_name: str) -> dict:
        """The ground truth as a COCO document (one image, id 1)."""
        annotations = []
        for category, crop, x0, y0 in self.objects():
            rows, cols = np.flatnonzero(crop.any(1)), np.flatnonzero(crop.any(0))
            if rows.size == 0:
                continue
            crop = crop[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
            x0, y0 = x0 + int(cols[0]), y0 + int(rows[0])
            rect = (x0, y0, x0 + crop.shape[1], y0 + crop.shape[0])
            annotations.append({
                "id": len(annotations) + 1, "image_id": 1,
                "category_id": CATEGORIES.index(category) + 1,
                "segmentation": cropped_mask_to_rle(crop, x0, y0, self.height, self.width),
                "area": int(crop.sum()),
                "bbox": [float(x0), float(y0), float(crop.shape[1]), float(crop.shape[0])],
                "iscrowd": 0, "crosses_seam": self.crosses_seam(rect)})
        return {"info": {"description": "made wafer", "seed": self.seed,
                         "seam_tile": self.seam_tile, "seam_overlap": self.seam_overlap},
                "images": [{"id": 1, "file_name": file_name, "height": self.height,
                            "width": self.width}],
                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CATEGORIES)],
                "annotations": annotations}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="effvit-sam make-wafer",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="image to write (.tif: tiled BigTIFF)")
    parser.add_argument("--size", type=int, default=4096, help="side in pixels (default 4096)")
    parser.add_argument("--height", type=int, help="height (default: --size)")
    parser.add_argument("--width", type=int, help="width (default: --size)")
    parser.add_argument("--json", type=Path, help="ground truth (default: OUTPUT with .json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--die", type=int, default=600, help="die side in pixels")
    parser.add_argument("--street", type=int, default=40, help="gap between dies in pixels")
    parser.add_argument("--defects-per-mpx", type=float, default=4.0)
    parser.add_argument("--seam-tile", type=int, default=512,
                        help="tile grid whose seams defects are put on (default 512)")
    parser.add_argument("--seam-overlap", type=int, default=64)
    parser.add_argument("--tiff-tile", type=int, default=256, help="TIFF tile side")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``effvit-sam make-wafer``."""
    args = build_parser().parse_args(argv)
    if args.output.suffix.lower() not in (".tif", ".tiff"):
        raise UserError(f"output {args.output} must be a .tif/.tiff file (tiled BigTIFF)")
    if args.die < 16 or args.street < 0:
        raise UserError(f"--die must be >= 16 and --street >= 0, got {args.die}, {args.street}")
    wafer = Wafer(args.height or args.size, args.width or args.size, seed=args.seed,
                  layout=WaferLayout(args.die, args.street), defects_per_mpx=args.defects_per_mpx,
                  seam_tile=args.seam_tile, seam_overlap=args.seam_overlap)
    wafer.write_tiff(args.output, tile=args.tiff_tile)
    gt = args.json or args.output.with_suffix(".json")
    doc = wafer.coco(args.output.name)
    write_json(gt, doc, indent=None)
    print(f"{wafer.height}x{wafer.width} wafer with {len(wafer.defects)} defects written to "
          f"{args.output}; {len(doc['annotations'])} annotations to {gt}")
    return 0
