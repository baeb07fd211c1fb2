"""Masks of huge images kept as their bounding-box crop, and the seam merge of tiled masks.

A :class:`CroppedMask` is a bool mask of a whole ``H x W`` image (original frame) stored as the
``h x w`` crop of its bounding box and the crop's top-left pixel ``(x0, y0)``; it turns into a
COCO RLE of the whole image (:func:`effvit_sam.masks.cropped_mask_to_rle`) without ever making
the ``H x W`` array. :func:`merge_tile_masks` joins masks found in overlapping tiles: two masks of
different tiles are one object when they agree inside the two tiles' shared band.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .masks import cropped_mask_to_rle, rle_area, rle_to_box_xywh, rle_union

Rect = tuple[int, int, int, int]
"""``(x0, y0, x1, y1)`` in full-image pixels, ends exclusive."""


@dataclass(frozen=True)
class CroppedMask:
    """``mask``: ``h x w`` bool crop whose pixel ``(0, 0)`` is image pixel ``(x0, y0)``;
    ``image_size``: ``(H, W)`` of the whole image. An empty mask has a ``0 x 0`` crop."""

    mask: np.ndarray
    x0: int
    y0: int
    image_size: tuple[int, int]

    @classmethod
    def from_window(cls, mask: np.ndarray, x0: int, y0: int,
                    image_size: tuple[int, int]) -> CroppedMask:
        """The ``h x w`` bool ``mask`` of a window at ``(x0, y0)``, cropped to its pixels."""
        mask = np.asarray(mask, dtype=bool)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if rows.size == 0:
            return cls(np.zeros((0, 0), bool), 0, 0, tuple(image_size))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return cls(np.ascontiguousarray(mask[r0:r1, c0:c1]), int(x0 + c0), int(y0 + r0),
                   tuple(int(v) for v in image_size))

    @property
    def rect(self) -> Rect:
        """The crop's extent ``(x0, y0, x1, y1)`` (exclusive ends, whole-pixel XYXY box)."""
        h, w = self.mask.shape
        return self.x0, self.y0, self.x0 + w, self.y0 + h

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def bbox_xywh(self) -> list[float]:
        """Whole-pixel COCO box ``[x, y, w, h]`` (:mod:`effvit_sam.masks`' convention)."""
        if self.mask.size == 0:
            return [0.0, 0.0, 0.0, 0.0]
        h, w = self.mask.shape
        return [float(self.x0), float(self.y0), float(w), float(h)]

    def region(self, rect: Rect) -> np.ndarray:
        """The mask inside ``rect`` as a ``(y1 - y0) x (x1 - x0)`` bool array."""
        x0, y0, x1, y1 = rect
        out = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        ix = intersect(self.rect, rect) if self.mask.size else None
        if ix is not None:
            a0, b0, a1, b1 = ix
            out[b0 - y0: b1 - y0, a0 - x0: a1 - x0] = self.mask[b0 - self.y0: b1 - self.y0,
                                                                a0 - self.x0: a1 - self.x0]
        return out

    def downscaled(self, factor: int, size: tuple[int, int]) -> np.ndarray:
        """The mask on the grid of the image shrunk by ``factor`` (``size`` = its ``(h, w)``,
        ``ceil(H / factor) x ceil(W / factor)``): a pixel is set when any native pixel of its
        ``factor x factor`` block is, so one-pixel defects stay visible."""
        out = np.zeros(size, dtype=bool)
        if not self.mask.size:
            return out
        f = factor
        x0, y0, x1, y1 = self.rect
        bx0, by0, bx1, by1 = x0 // f, y0 // f, -(-x1 // f), -(-y1 // f)
        blocks = np.zeros(((by1 - by0) * f, (bx1 - bx0) * f), dtype=bool)
        blocks[y0 - by0 * f: y1 - by0 * f, x0 - bx0 * f: x1 - bx0 * f] = self.mask
        out[by0:by1, bx0:bx1] = blocks.reshape(by1 - by0, f, bx1 - bx0, f).any((1, 3))
        return out

    def to_rle(self) -> dict:
        """COCO compressed RLE of the whole ``H x W`` image."""
        height, width = self.image_size
        return cropped_mask_to_rle(self.mask, self.x0, self.y0, height, width)

    def to_dense(self) -> np.ndarray:
        """The whole ``H x W`` bool mask (only when asked for: it can be very large)."""
        height, width = self.image_size
        return self.region((0, 0, width, height))


def intersect(a: Rect, b: Rect) -> Rect | None:
    """The overlap of two rectangles, or None when they share no pixel."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def band_iou(a: CroppedMask, b: CroppedMask, band: Rect) -> float:
    """IoU of ``a`` and ``b`` restricted to ``band`` (0 when neither has a pixel there)."""
    if not a.mask.size or not b.mask.size:
        return 0.0
    near_a, near_b = intersect(a.rect, band), intersect(b.rect, band)
    if near_a is None or near_b is None or intersect(near_a, near_b) is None:
        return 0.0
    # Only the part of the band either mask reaches matters.
    rect = (min(near_a[0], near_b[0]), min(near_a[1], near_b[1]),
            max(near_a[2], near_b[2]), max(near_a[3], near_b[3]))
    ra, rb = a.region(rect), b.region(rect)
    inter = np.count_nonzero(ra & rb)
    return inter / max(1, np.count_nonzero(ra | rb))


@dataclass(frozen=True)
class TileMask:
    """One mask found in tile ``tile``: the crop in the full frame and the generator's scores."""

    mask: CroppedMask
    tile: int
    predicted_iou: float
    stability_score: float


@dataclass(frozen=True)
class MergedMask:
    """One object of the whole image: the union of the tile masks judged to be it.

    The union is kept as its ``parts`` (the tiles' crops) and as the whole-image RLE ``rle``
    (pycocotools' run-length union), never as one array: an object crossing the whole image,
    such as a wafer's street grid, costs its runs, not ``H x W`` pixels.
    """

    parts: tuple[CroppedMask, ...]
    tiles: tuple[int, ...]
    predicted_iou: float
    stability_score: float
    rle: dict
    area: int
    bbox_xywh: list[float]

    @classmethod
    def of(cls, masks: list[TileMask]) -> MergedMask:
        rle = rle_union([m.mask.to_rle() for m in masks])
        return cls(tuple(m.mask for m in masks), tuple(sorted({m.tile for m in masks})),
                   max(m.predicted_iou for m in masks), max(m.stability_score for m in masks),
                   rle, rle_area(rle), rle_to_box_xywh(rle))

    def downscaled(self, factor: int, size: tuple[int, int]) -> np.ndarray:
        """:meth:`CroppedMask.downscaled` of the union (the union of the parts')."""
        out = np.zeros(size, dtype=bool)
        for part in self.parts:
            out |= part.downscaled(factor, size)
        return out


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def grid_cores(windows: list[Rect]) -> list[Rect]:
    """Each window's core: its part of the image when every seam is cut at the middle of the
    two neighbours' overlap (the cores of a :func:`effvit_sam.tiled.tile_grid` partition the
    image). A tile's pixels far from its edges see the most context, so inside another tile's
    core that tile's mask is the one to believe."""
    def cuts(spans: list[tuple[int, int]]) -> dict[tuple[int, int], tuple[int, int]]:
        spans = sorted(set(spans))
        out = {}
        for k, (lo, hi) in enumerate(spans):
            a = lo if k == 0 else max(lo, (spans[k - 1][1] + lo) // 2)
            b = hi if k == len(spans) - 1 else min(hi, (hi + spans[k + 1][0]) // 2)
            out[(lo, hi)] = (a, b) if a < b else (lo, hi)
        return out

    xs = cuts([(w[0], w[2]) for w in windows])
    ys = cuts([(w[1], w[3]) for w in windows])
    out = []
    for w in windows:
        (cx0, cx1), (cy0, cy1) = xs[(w[0], w[2])], ys[(w[1], w[3])]
        out.append((cx0, cy0, cx1, cy1))
    return out


def _clipped(mask: CroppedMask, cores: list[Rect]) -> CroppedMask:
    """``mask`` without its pixels inside ``cores`` (other tiles' cores), cropped again."""
    out = None
    for core in cores:
        ix = intersect(mask.rect, core) if mask.mask.size else None
        if ix is None:
            continue
        if out is None:
            out = mask.mask.copy()
        out[ix[1] - mask.y0: ix[3] - mask.y0, ix[0] - mask.x0: ix[2] - mask.x0] = False
    if out is None:
        return mask
    return CroppedMask.from_window(out, mask.x0, mask.y0, mask.image_size)


def _distinct(masks: list[TileMask], duplicate_iou: float) -> list[TileMask]:
    """``masks`` without near-copies (mask IoU >= ``duplicate_iou`` with a better-scored one).
    The generator's box NMS misses them when a few stray pixels stretch one copy's box."""
    kept: list[TileMask] = []
    for m in sorted(masks, key=lambda m: -m.predicted_iou):
        height, width = m.mask.image_size
        whole = (0, 0, width, height)  # band_iou over the whole image: the masks' IoU
        if all(band_iou(m.mask, k.mask, whole) < duplicate_iou for k in kept):
            kept.append(m)
    return kept


def merge_tile_masks(tile_masks: list[list[TileMask]], windows: list[Rect], *,
                     merge_iou: float = 0.5, duplicate_iou: float = 0.8) -> list[MergedMask]:
    """Join masks of overlapping tiles into objects; every mask ends in at most one object.

    ``tile_masks[i]`` are the masks found in tile ``i`` (window ``windows[i]``); of two masks of
    one tile with mask IoU >= ``duplicate_iou`` only the better-scored is used. For every pair
    of tiles whose windows overlap, two masks (one from each) are the same object when their
    IoU inside the shared band is at least ``merge_iou``: an object cut by a seam is seen alike
    by both tiles in the band, and an object inside the band is seen twice. Matching is one to
    one per pair of tiles (best band IoU first), so a tile's second, looser mask of an object
    (the object with some background) does not join it too. Joins are transitive
    (union-find): an object crossing several seams becomes one. Where an object still holds
    two masks of one tile, the one agreeing best with its neighbours is kept (the others are
    duplicates). The object is the union of its tiles' masks, each believed only outside the
    cores of the object's other tiles (:func:`grid_cores`): near a tile's edge its mask lacks
    context, and a stray edge response no longer grows the object. Each object is a
    :class:`MergedMask` with the best ``predicted_iou`` / ``stability_score`` of its masks.
    Objects are returned largest first.
    """
    if len(tile_masks) != len(windows):
        raise ValueError(f"{len(tile_masks)} tiles of masks for {len(windows)} windows")
    tile_masks = [_distinct(masks, duplicate_iou) for masks in tile_masks]
    flat = [m for masks in tile_masks for m in masks]
    first = np.cumsum([0] + [len(masks) for masks in tile_masks])
    parent = list(range(len(flat)))
    agreement = [0.0] * len(flat)
    rects = np.asarray(windows, dtype=np.int64).reshape(-1, 4)
    for i in range(len(windows)):
        x0, y0, x1, y1 = rects[i]
        later = rects[i + 1:]
        neighbours = np.flatnonzero((later[:, 0] < x1) & (x0 < later[:, 2])
                                    & (later[:, 1] < y1) & (y0 < later[:, 3])) + i + 1
        for j in neighbours:
            band = intersect(windows[i], windows[j])
            pairs = [(iou, a, b) for a in range(first[i], first[i + 1])
                     for b in range(first[j], first[j + 1])
                     if (iou := band_iou(flat[a].mask, flat[b].mask, band)) >= merge_iou]
            taken: set[int] = set()
            for iou, a, b in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
                if a in taken or b in taken:
                    continue
                taken.update((a, b))
                agreement[a] += iou
                agreement[b] += iou
                parent[_find(parent, a)] = _find(parent, b)
    groups: dict[int, dict[int, int]] = {}  # root -> tile -> the tile's kept mask
    tile_of = np.repeat(np.arange(len(windows)), np.diff(first))
    for k, m in enumerate(flat):
        kept = groups.setdefault(_find(parent, k), {})
        best = kept.get(int(tile_of[k]))
        if best is None or (agreement[k], m.predicted_iou) > (agreement[best],
                                                              flat[best].predicted_iou):
            kept[int(tile_of[k])] = k
    cores = grid_cores(list(windows))
    merged = []
    for kept in groups.values():
        parts = []
        for tile, k in kept.items():
            others = [cores[t] for t in kept if t != tile]
            part = _clipped(flat[k].mask, others)
            if part.mask.size:
                parts.append(TileMask(part, tile, flat[k].predicted_iou,
                                      flat[k].stability_score))
        if parts:
            merged.append(MergedMask.of(parts))
    return sorted(merged, key=lambda m: -m.area)
