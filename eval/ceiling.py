"""``python -m eval.ceiling``: the best mIoU any SAM-style model can score on a dataset.

SAM's mask decoder (and every EfficientViT-SAM's) answers a prompt with ``256 x 256`` logits over
the ``1024 x 1024`` prompt frame, which SAM's post-processing upscales bilinearly to the image:
one logit per 4 x 4 frame pixels, however large the encoder. Each ground-truth mask is here
given the *perfect* logit map of that grid (the mask's coverage of each logit's cell, area
averaged, mapped monotonically so that half coverage is logit 0), sent through the same
post-processing (:func:`effvit_sam.geometry.postprocess_masks`) and thresholded at 0, as a
predictor does; the IoU with the ground truth is that instance's ceiling. Thin or tiny objects
lose most: a 3-pixel-wide line in a 1024-pixel image is under one logit wide.

    python -m eval.ceiling --dataset coco --annotations instances_val.json --images images/

prints the mIoU (all, small / medium / large and per category as in ``effvit-sam eval``), the
median and the share of instances under IoU 0.8; ``--output`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from effvit_sam import geometry
from effvit_sam.errors import UserError, run_command
from effvit_sam.io import write_json

from .datasets import DATASET_KINDS, EvalDataset, open_dataset
from .metrics import InstanceResult, mask_iou, miou_by_category, miou_table

LOW_RES = 256
"""Side of SAM's low-res mask logits (the decoder's output grid over the prompt frame)."""


def ceiling_mask(mask: np.ndarray, frame: int = geometry.PROMPT_FRAME,
                 low_res: int = LOW_RES) -> np.ndarray:
    """``mask`` (``H x W`` bool) as the best ``low_res``-grid logits can draw it after SAM's
    post-processing: its coverage of each logit's cell, minus one half, upscaled and
    thresholded at 0."""
    h, w = mask.shape
    input_size = geometry.preprocess_shape(h, w, frame)
    cells = tuple(max(1, round(n * low_res / frame)) for n in input_size)
    cover = F.interpolate(torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None],
                          cells, mode="area")
    logits = torch.full((1, 1, low_res, low_res), -0.5)
    logits[..., : cells[0], : cells[1]] = cover - 0.5
    return (geometry.postprocess_masks(logits, input_size, (h, w), frame)[0, 0] > 0).numpy()


def run(dataset: EvalDataset, limit: int | None = None, progress: bool = True) -> dict:
    """The ceiling of every usable instance of the first ``limit`` images (sorted ids): overall,
    per size bucket and per category (worst first, as ``effvit-sam eval`` reports them)."""
    results = []
    ids = dataset.image_ids[:limit]
    for image_id in tqdm(ids, desc="ceiling", unit="image", disable=not progress):
        for inst in dataset.instances(image_id):
            gt = inst.mask()
            results.append(InstanceResult(inst.ann_id, image_id, inst.size,
                                          (mask_iou(ceiling_mask(gt), gt),), inst.category_id))
    every = np.array([r.ious[0] for r in results])
    if not every.size:
        raise UserError("no usable instance in the annotations")
    table = miou_table(results)  # mIoU, mIoU_small, ... (None for an empty bucket)
    out = {"images": len(ids), "instances": int(every.size),
           "mIoU": round(table.pop("mIoU"), 2),
           "median_IoU": round(100 * float(np.median(every)), 2),
           "share_under_0.8": round(100 * float((every < 0.8).mean()), 2)}
    out |= {key: None if value is None else round(value, 2) for key, value in table.items()}
    out["by_category"] = {
        name: {"count": row["count"], "mIoU": round(row["mIoU"], 2)}
        for name, row in miou_by_category(results, dataset.category_names()).items()}
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.ceiling",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=DATASET_KINDS, required=True)
    p.add_argument("--annotations", required=True, help="COCO-format annotation file")
    p.add_argument("--images", required=True, help="its image folder (not read: checked only)")
    p.add_argument("--limit", type=int, help="only the first N images (sorted ids)")
    p.add_argument("--output", help="also write the figures to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    dataset = open_dataset(args.dataset, args.annotations, args.images)
    figures = run(dataset, args.limit)
    for key, value in figures.items():
        if key == "by_category":
            for name, row in value.items():
                print(f"{'mIoU ' + name:>16}: {row['mIoU']} ({row['count']} instances)")
        else:
            print(f"{key:>16}: {value}")
    if args.output:
        write_json(args.output, {"annotations": args.annotations, **figures})
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sys.exit(run_command("python -m eval.ceiling", main, sys.argv[1:]))
