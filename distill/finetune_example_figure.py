"""Before/after picture of a fine-tune: the same held-out images, every annotated instance
prompted by one click (``effvit-sam eval point``'s first click: the point farthest from the mask's
boundary), decoded by the starting weights (top row) and the fine-tuned ones (bottom).

    python -m distill.finetune_example_figure --annotations VAL.json --images DIR \
        --model efficientvit-sam-mini --before START --after RUN/pretrained_best \
        --out figure.jpg [--num-images 3]

The mask kept per click is the one the model scores highest, as ``effvit-sam eval`` keeps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from effvit_sam import build_sam, from_pretrained
from effvit_sam.io import read_image
from effvit_sam.masks import rle_to_mask, segmentation_to_rle
from effvit_sam.predictor import EfficientViTSamPredictor
from effvit_sam.visualize import overlay_masks
from eval.clicks import clicks_to_arrays, first_click
from eval.metrics import mask_iou
from eval.predictors import best_masks


def _load(model: str, weights: str):
    """A ``save_pretrained`` folder or a weights file, strictly."""
    if Path(weights).is_dir():
        return from_pretrained(weights)
    return build_sam(model, checkpoint=weights)


def _panel(predictor, image, gts) -> tuple[np.ndarray, float]:
    predictor.set_image(image)
    points, labels = clicks_to_arrays([[first_click(g)] for g in gts])
    masks, scores, _ = predictor.predict(points=points, labels=labels, multimask_output=True)
    kept = best_masks(masks, scores)
    miou = float(np.mean([mask_iou(k, g) for k, g in zip(kept, gts, strict=True)])) * 100
    return overlay_masks(image, kept, points=points.reshape(-1, 2)), miou


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m distill.finetune_example_figure")
    p.add_argument("--annotations", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--before", required=True, help="starting weights (file or folder)")
    p.add_argument("--after", required=True, help="fine-tuned weights (file or folder)")
    p.add_argument("--out", required=True)
    p.add_argument("--num-images", type=int, default=3)
    args = p.parse_args(argv)
    coco = json.loads(Path(args.annotations).read_text())
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        if not a.get("iscrowd"):
            anns.setdefault(a["image_id"], []).append(a)
    images = [im for im in coco["images"] if im["id"] in anns][: args.num_images]
    rows = []
    for label, weights in (("before", args.before), ("after", args.after)):
        model = _load(args.model, weights).eval()
        predictor = EfficientViTSamPredictor(model)
        row = []
        with torch.inference_mode():
            for im in images:
                image = read_image(Path(args.images) / im["file_name"])
                h, w = image.shape[:2]
                gts = [rle_to_mask(segmentation_to_rle(a["segmentation"], h, w))
                       for a in anns[im["id"]]]
                picture, miou = _panel(predictor, image, gts)
                tile = Image.fromarray(picture)
                ImageDraw.Draw(tile).text((4, 4), f"{label}: 1-click mIoU {miou:.1f}",
                                          fill=(255, 255, 0))
                row.append(tile)
        rows.append(row)
    tw, th = rows[0][0].size
    sheet = Image.new("RGB", (tw * len(images), th * 2))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            sheet.paste(tile, (c * tw, r * th))
    sheet.save(args.out, quality=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
