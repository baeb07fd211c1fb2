"""How well a tiled everything-mode result matches a made wafer's ground truth (bench-tiled):
per category, the objects one merged mask recovers, and the merged masks no object explains.

Masks are compressed COCO RLEs of the whole image (pycocotools, on the runs); only pairs whose
boxes meet are compared, so a wafer of thousands of objects is scored in seconds.
"""

from __future__ import annotations

from ..tiled_masks import CroppedMask

SEAM_IOU = 0.9
"""IoU from which a merged mask recovers an object (issue #16's target)."""
FOUND_IOU = 0.5
"""IoU from which a mask has found an object, if imprecisely."""


def rle_iou(a: dict, b: dict) -> float:
    """IoU of two compressed RLEs of one image."""
    from pycocotools import mask as mask_utils

    code = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in (a, b)]
    return float(mask_utils.iou(code[:1], code[1:], [0])[0][0])


def boxes_meet(a: list[float], b: list[float]) -> bool:
    """Whether two XYWH boxes overlap."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def recall(objects: list[tuple[str, CroppedMask]], merged: list, key: str = "iou",
           iou: float = SEAM_IOU) -> tuple[dict[str, int], dict[str, int]]:
    """Per category: how many ``objects`` one merged mask recovers (``key`` "iou": mask IoU >=
    ``iou``; "exact": the same RLE), and how many there are. ``merged``: anything with ``rle``
    and ``bbox_xywh``."""
    hits: dict[str, int] = {}
    totals: dict[str, int] = {}
    for kind, obj in objects:
        rle = obj.to_rle()
        near = [m for m in merged if boxes_meet(obj.bbox_xywh, m.bbox_xywh)]
        if key == "exact":
            hit = any(m.rle == rle for m in near)
        else:
            hit = max((rle_iou(rle, m.rle) for m in near), default=0.0) >= iou
        hits[kind] = hits.get(kind, 0) + int(hit)
        totals[kind] = totals.get(kind, 0) + 1
    return hits, totals


def unmatched(merged: list, objects: list[tuple[str, CroppedMask]],
              iou: float = FOUND_IOU) -> int:
    """How many merged masks reach IoU ``iou`` with no object: background, a street, a piece of
    an object too small to count, two objects in one mask (the precision side of
    :func:`recall`)."""
    rles = [(obj.bbox_xywh, obj.to_rle()) for _, obj in objects]
    return sum(not any(boxes_meet(box, m.bbox_xywh) and rle_iou(rle, m.rle) >= iou
                       for box, rle in rles) for m in merged)
