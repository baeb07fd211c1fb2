"""Does a model follow its prompts? ``python distill/scripts/prompt_following.py MODEL_DIR
ANNOTATIONS IMAGES N``: on the first N images of a COCO-format set, each GT box is decoded
(multimask, best predicted IoU, as ``eval box``); prints the mean IoU of the masks with their
own GT and the mean IoU between the masks of *different* boxes of one image (1.0: the mask
ignores the prompt) as JSON. Run with ``PYTHONPATH=.`` from the checkout's root."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO

from effvit_sam import from_pretrained
from eval.predictors import SamBatchPredictor, best_masks


def pairwise_iou(masks: np.ndarray) -> np.ndarray:
    """``K x K`` IoU between ``K x H x W`` bool masks."""
    inter = (masks[:, None] & masks[None]).sum((-1, -2))
    union = (masks[:, None] | masks[None]).sum((-1, -2))
    return inter / np.maximum(union, 1)


@torch.no_grad()
def main(model_dir: str, annotations: str, images: str, num_images: int) -> dict:
    predictor = SamBatchPredictor(from_pretrained(model_dir).eval())
    coco = COCO(annotations)
    own, cross, areas = [], [], []
    for img_id in coco.getImgIds()[:num_images]:
        info = coco.loadImgs(img_id)[0]
        image = np.asarray(Image.open(f"{images}/{info['file_name']}").convert("RGB"))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        gts = np.stack([coco.annToMask(a).astype(bool) for a in anns])
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        predictor.set_image(image)
        masks, scores, _ = predictor.predict_batch(boxes=boxes, multimask_output=True)
        pred = best_masks(masks, scores)
        own += ((pred & gts).sum((1, 2)) / np.maximum((pred | gts).sum((1, 2)), 1)).tolist()
        pp, k = pairwise_iou(pred), len(anns)
        cross.append(float((pp.sum() - np.trace(pp)) / max(k * (k - 1), 1)))
        areas += pred.sum((1, 2)).tolist()
    return {"box_mIoU_own_gt": float(np.mean(own)),
            "mean_pairwise_IoU_between_boxes_predictions": float(np.mean(cross)),
            "pred_area_median": float(np.median(areas)), "instances": len(own)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))))
