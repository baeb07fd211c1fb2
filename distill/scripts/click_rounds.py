"""What correction clicks do, by category: ``python distill/scripts/click_rounds.py MODEL_DIR
ANNOTATIONS IMAGES N [--feed-logits]``, run with ``PYTHONPATH=.`` from the checkout's root.

On the first N images of a COCO-format set every instance gets ``eval point``'s three rounds of
simulated clicks (the first at the object's interior point farthest from its boundary, then one
at the largest error region, positive on a miss and negative on a false positive; multimask, the
best-scored mask kept; the previous logits fed back only with ``--feed-logits``). Printed as
JSON per category and overall: the mIoU after each round as ``eval point`` scores it, the mIoU
had the best of the three masks been kept by true IoU (an oracle: how much of a drop is the
IoU head's choice), and the mIoU change a round brings split by the sign of its new click
(does a positive click on a missed part, or a negative one on a leak, go wrong?)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO

from effvit_sam import from_pretrained
from eval.clicks import clicks_to_arrays, first_click, next_click
from eval.metrics import mask_iou
from eval.predictors import SamBatchPredictor, best_masks

ROUNDS = 3


@torch.no_grad()
def main(model_dir: str, annotations: str, images: str, num_images: int, *,
         feed_logits: bool = False) -> dict:
    """The figures (module docstring)."""
    predictor = SamBatchPredictor(from_pretrained(model_dir).eval())
    coco = COCO(annotations)
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    kept: dict[str, list[list[float]]] = defaultdict(list)  # category -> per instance, per round
    oracle: dict[str, list[list[float]]] = defaultdict(list)
    gain: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for img_id in coco.getImgIds()[:num_images]:
        info = coco.loadImgs(img_id)[0]
        image = np.asarray(Image.open(f"{images}/{info['file_name']}").convert("RGB"))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=False))
        if not anns:
            continue
        gts = [coco.annToMask(a).astype(bool) for a in anns]
        predictor.set_image(image)
        clicks = [[first_click(gt)] for gt in gts]
        ious = [[] for _ in gts]
        best3 = [[] for _ in gts]
        previous = None
        for round_ in range(ROUNDS):
            coords, labels = clicks_to_arrays(clicks)
            masks, scores, low_res = predictor.predict_batch(
                points=coords, labels=labels, mask_input=previous, multimask_output=True)
            chosen = best_masks(masks, scores)
            if feed_logits:  # the kept mask's logits, as eval point's predict_best gives them
                previous = best_masks(low_res, scores)[:, None]
            for i, gt in enumerate(gts):
                ious[i].append(mask_iou(chosen[i], gt))
                best3[i].append(max(mask_iou(m, gt) for m in masks[i]))
                if round_ > 0 and clicks[i][-1] is not None:
                    sign = "positive" if clicks[i][-1].positive else "negative"
                    gain[names[anns[i]["category_id"]]][sign].append(ious[i][-1] - ious[i][-2])
                if round_ + 1 < ROUNDS:
                    clicks[i].append(next_click(gt, chosen[i]))
        for i, ann in enumerate(anns):
            kept[names[ann["category_id"]]].append(ious[i])
            oracle[names[ann["category_id"]]].append(best3[i])
    out = {}
    for name in sorted(kept) + ["all"]:
        rows = (sum(kept.values(), []) if name == "all" else kept[name])
        best = (sum(oracle.values(), []) if name == "all" else oracle[name])
        signs = ({s: sum((gain[c][s] for c in gain), []) for s in ("positive", "negative")}
                 if name == "all" else gain[name])
        out[name] = {
            "instances": len(rows),
            "mIoU_by_round": [round(100 * float(np.mean([r[k] for r in rows])), 2)
                              for k in range(ROUNDS)],
            "oracle_mIoU_by_round": [round(100 * float(np.mean([r[k] for r in best])), 2)
                                     for k in range(ROUNDS)],
            **{f"{s}_clicks": {"count": len(signs.get(s, [])),
                               "mean_iou_change": round(100 * float(np.mean(signs[s])), 2)
                               if signs.get(s) else None,
                               "share_that_lower_iou": round(float(np.mean(
                                   [g < -0.01 for g in signs[s]])), 3) if signs.get(s) else None}
               for s in ("positive", "negative")},
        }
    return out


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--feed-logits"]
    print(json.dumps(main(args[0], args[1], args[2], int(args[3]),
                          feed_logits="--feed-logits" in sys.argv), indent=1))
