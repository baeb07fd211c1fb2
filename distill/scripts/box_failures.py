"""Where a model's box masks go wrong: ``python distill/scripts/box_failures.py MODEL_DIR
ANNOTATIONS IMAGES N [OVERLAY.jpg]``, run with ``PYTHONPATH=.`` from the checkout's root.

On the first N images of a COCO-format set each GT box is decoded as ``eval box`` does
(multimask, the best-scored mask). Printed as JSON: the mIoU by object area (COCO's small /
medium / large), the false-positive and missed pixels per GT pixel, the share of false-positive
pixels that lie outside the prompt box, what the mIoU would be with every mask cut to its box,
and with the best of the three masks by true IoU (an oracle). With OVERLAY, the worst large
objects (at least 96 x 96 pixels) are drawn, each row the image and the same image with the
mask (red), the GT outline (green) and the box (yellow)."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw
from pycocotools.coco import COCO

from effvit_sam import from_pretrained
from eval.metrics import mask_iou
from eval.predictors import SamBatchPredictor, best_masks

SIZES = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, float("inf"))}


def _in_box(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """``K x H x W``: the pixels each ``x0 y0 x1 y1`` box covers (edges rounded outwards)."""
    ys, xs = np.arange(height)[:, None], np.arange(width)[None, :]
    x0, y0 = np.floor(boxes[:, 0]), np.floor(boxes[:, 1])
    x1, y1 = np.ceil(boxes[:, 2]), np.ceil(boxes[:, 3])
    return ((xs >= x0[:, None, None]) & (xs < x1[:, None, None])
            & (ys >= y0[:, None, None]) & (ys < y1[:, None, None]))


def _overlay(image: np.ndarray, mask: np.ndarray, gt: np.ndarray, box: np.ndarray) -> Image.Image:
    drawn = image.astype(np.float32)
    drawn[mask] = drawn[mask] * 0.5 + np.array([255.0, 0.0, 0.0]) * 0.5
    edge = (gt ^ np.roll(gt, 1, 0)) | (gt ^ np.roll(gt, 1, 1))
    drawn[edge] = (0, 255, 0)
    right = Image.fromarray(drawn.astype(np.uint8))
    ImageDraw.Draw(right).rectangle(box.tolist(), outline=(255, 255, 0))
    row = Image.new("RGB", (image.shape[1] * 2, image.shape[0]))
    row.paste(Image.fromarray(image), (0, 0))
    row.paste(right, (image.shape[1], 0))
    return row


@torch.no_grad()
def main(model_dir: str, annotations: str, images: str, num_images: int,
         overlay: str | None = None, worst: int = 5, min_area: float = SIZES["large"][0]) -> dict:
    """The figures (module docstring); ``overlay``: the ``worst`` objects of at least
    ``min_area`` pixels drawn there."""
    predictor = SamBatchPredictor(from_pretrained(model_dir).eval())
    coco = COCO(annotations)
    rows: dict[str, list] = {k: [] for k in ("area", "iou", "fp", "fn", "fp_out", "clip",
                                             "oracle")}  # fp, fn, fp_out: pixel counts
    drawable: list[tuple[float, int, int]] = []  # (IoU, image id, annotation index)
    for img_id in coco.getImgIds()[:num_images]:
        info = coco.loadImgs(img_id)[0]
        image = np.asarray(Image.open(f"{images}/{info['file_name']}").convert("RGB"))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        gts = np.stack([coco.annToMask(a).astype(bool) for a in anns])
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                         dtype=np.float32)
        predictor.set_image(image)
        masks, scores, _ = predictor.predict_batch(boxes=boxes, multimask_output=True)
        pred = best_masks(masks, scores)
        inside = _in_box(boxes, *gts.shape[1:])
        area = gts.sum((1, 2))
        fp = pred & ~gts
        iou = [mask_iou(p, g) for p, g in zip(pred, gts, strict=True)]
        rows["area"] += area.tolist()
        rows["iou"] += iou
        rows["fp"] += fp.sum((1, 2)).tolist()
        rows["fn"] += (gts & ~pred).sum((1, 2)).tolist()
        rows["fp_out"] += (fp & ~inside).sum((1, 2)).tolist()
        rows["clip"] += [mask_iou(p & b, g) for p, b, g in zip(pred, inside, gts, strict=True)]
        rows["oracle"] += [max(mask_iou(m, g) for m in three)
                           for three, g in zip(masks, gts, strict=True)]
        drawable += [(iou[k], img_id, k) for k in np.flatnonzero(area >= min_area)]
    r = {k: np.asarray(v, dtype=float) for k, v in rows.items()}
    out: dict = {"instances": len(r["iou"]), "mIoU": 100 * r["iou"].mean(),
                 "mIoU_masks_cut_to_box": 100 * r["clip"].mean(),
                 "mIoU_best_of_three_by_true_iou": 100 * r["oracle"].mean(),
                 "share_of_false_positive_pixels_outside_box":
                     float(r["fp_out"].sum() / max(r["fp"].sum(), 1))}
    for name, (lo, hi) in SIZES.items():
        s = (r["area"] >= lo) & (r["area"] < hi)
        if not s.any():
            out[name] = {"instances": 0}
            continue
        out[name] = {"instances": int(s.sum()), "mIoU": 100 * r["iou"][s].mean(),
                     "false_positive_per_gt_pixel": (r["fp"][s] / r["area"][s]).mean(),
                     "missed_per_gt_pixel": (r["fn"][s] / r["area"][s]).mean(),
                     "share_under_iou_0.5": float((r["iou"][s] < 0.5).mean())}
    if overlay and drawable:  # the few worst decoded again rather than every mask kept
        drawn = []
        for _, img_id, k in sorted(drawable)[:worst]:
            info = coco.loadImgs(img_id)[0]
            image = np.asarray(Image.open(f"{images}/{info['file_name']}").convert("RGB"))
            ann = coco.loadAnns(coco.getAnnIds(imgIds=img_id))[k]
            x, y, w, h = ann["bbox"]
            box = np.array([x, y, x + w, y + h], dtype=np.float32)
            predictor.set_image(image)
            masks, scores, _ = predictor.predict_batch(boxes=box[None], multimask_output=True)
            drawn.append(_overlay(image, best_masks(masks, scores)[0],
                                  coco.annToMask(ann).astype(bool), box))
        sheet = Image.new("RGB", (max(d.width for d in drawn), sum(d.height for d in drawn)))
        top = 0
        for d in drawn:
            sheet.paste(d, (0, top))
            top += d.height
        sheet.save(overlay, quality=85)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]),
                          sys.argv[5] if len(sys.argv) > 5 else None), indent=1))
