"""Masks as COCO run-length encodings and boxes: one convention for the whole package.

* RLE: COCO compressed RLE ``{"size": [H, W], "counts": str}`` (what pycocotools and the COCO
  JSON format use); uncompressed ``list`` counts and polygons are accepted on input.
* Boxes of a mask cover whole pixels, as COCO's do: a mask whose pixels span columns
  ``x0..x1`` and rows ``y0..y1`` (inclusive) has XYWH box ``[x0, y0, x1 - x0 + 1, y1 - y0 + 1]``
  and XYXY box ``[x0, y0, x1 + 1, y1 + 1]`` (what :func:`effvit_sam.geometry.xywh_to_xyxy` gives).
  An empty mask has box ``[0, 0, 0, 0]``.

Torch-free: numpy and pycocotools only.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def mask_to_rle(mask: np.ndarray) -> dict:
    """``H x W`` bool mask to COCO compressed RLE ``{"size": [H, W], "counts": str}``."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {array.shape}")
    rle = mask_utils.encode(np.asfortranarray(array.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict) -> np.ndarray:
    """COCO RLE (compressed ``str``/``bytes`` counts, or uncompressed list counts) to ``H x W``
    bool."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("rle must be a dict with 'size' [H, W] and 'counts'")
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        if sum(counts) != h * w:
            raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, not H*W = {h * w}")
        compressed = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    elif isinstance(counts, str | bytes):
        compressed = {"size": [h, w],
                      "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise TypeError(f"rle counts must be str, bytes or a list, got {type(counts).__name__}")
    return mask_utils.decode(compressed).astype(bool)


def segmentation_to_rle(segmentation: list | dict, height: int, width: int) -> dict:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as one compressed RLE."""
    if isinstance(segmentation, list):  # polygons: one RLE per part, merged
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        return segmentation
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")


def mask_to_box_xywh(mask: np.ndarray) -> list[float]:
    """The whole-pixel XYWH box of an ``H x W`` mask (``[0, 0, 0, 0]`` if empty)."""
    array = np.asarray(mask, dtype=bool)
    if array.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {array.shape}")
    rows, cols = np.flatnonzero(array.any(1)), np.flatnonzero(array.any(0))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = int(cols[0]), int(rows[0])
    return [float(x0), float(y0), float(cols[-1] - x0 + 1), float(rows[-1] - y0 + 1)]


def inclusive_box_to_xywh(box) -> list[float]:
    """An XYXY box of inclusive pixel extents (``x1`` = last column, as SAM's
    ``batched_mask_to_box`` gives) as the whole-pixel XYWH box of this module."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 < x0 or y1 < y0:  # an empty mask's box
        return [0.0, 0.0, 0.0, 0.0]
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def rle_area(rle: dict) -> int:
    """Pixels set in a compressed RLE."""
    return int(mask_utils.area(rle))


def rle_to_box_xywh(rle: dict) -> list[float]:
    """The whole-pixel XYWH box of a compressed RLE (pycocotools' ``toBbox``)."""
    return [float(v) for v in mask_utils.toBbox(rle)]


def cropped_mask_to_rle(mask: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict:
    """The compressed RLE, in a whole ``height x width`` image, of an ``h x w`` bool ``mask``
    whose top-left pixel is ``(x0, y0)`` in that image, without making the ``height x width``
    array: run boundaries are computed in the crop and mapped to the image's column-major
    pixel order, so a small mask in a 20000 x 20000 image costs only its own pixels."""
    crop = np.asarray(mask, dtype=bool)
    if crop.ndim != 2:
        raise ValueError(f"mask must be h x w, got shape {crop.shape}")
    h, w = crop.shape
    if x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height:
        raise ValueError(f"a {h}x{w} mask at (x0, y0) = ({x0}, {y0}) does not fit a "
                         f"{height}x{width} image")
    # Column-major crop with one zero row above and below, so no run crosses a column.
    padded = np.zeros((w, h + 2), dtype=np.int8)
    padded[:, 1:-1] = crop.T
    flips = np.flatnonzero(np.diff(padded.ravel()))  # index before each 0->1 / 1->0 change
    col, row = np.divmod(flips + 1, h + 2)  # pixel after the change, in the padded column
    # Full-image column-major index of that pixel (a run end maps to one past its last pixel).
    index = (x0 + col.astype(np.int64)) * height + (y0 + row.astype(np.int64) - 1)
    starts, ends = index[0::2], index[1::2]
    if len(starts) > 1:  # a crop as tall as the image: a run may continue into the next column
        joined = starts[1:] == ends[:-1]
        starts = np.concatenate([starts[:1], starts[1:][~joined]])
        ends = np.concatenate([ends[:-1][~joined], ends[-1:]])
    bounds = np.empty(2 * len(starts) + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, height * width
    bounds[1:-1:2], bounds[2:-1:2] = starts, ends
    counts = np.diff(bounds).tolist()
    if len(counts) > 1 and counts[-1] == 0:  # the mask reaches the last pixel
        counts.pop()
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def rle_union(rles: list[dict]) -> dict:
    """The pixel union of compressed RLEs of one image, as a compressed RLE (pycocotools'
    ``merge``, computed on the runs: no ``H x W`` array is made)."""
    if not rles:
        raise ValueError("rle_union of no masks")
    sizes = {tuple(int(v) for v in r["size"]) for r in rles}
    if len(sizes) != 1:
        raise ValueError(f"rle_union of masks of different image sizes: {sorted(sizes)}")
    coded = [{"size": list(r["size"]), "counts": r["counts"].encode("ascii")
              if isinstance(r["counts"], str) else r["counts"]} for r in rles]
    merged = mask_utils.merge(coded, intersect=False) if len(coded) > 1 else coded[0]
    counts = merged["counts"]
    return {"size": [int(v) for v in merged["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
