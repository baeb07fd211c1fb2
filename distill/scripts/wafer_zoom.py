"""Does zooming in help a model segment a wafer's small defects? ``python
distill/scripts/wafer_zoom.py MODEL_DIR [SIZE] [SEED]``, run with ``PYTHONPATH=.`` from the
checkout's root.

On a made wafer (``distill.wafer.Wafer``, SIZE x SIZE pixels, seed SEED), every defect is
clicked once at its centre in a square window around it of 256, 128 and 64 pixels; the
predictor resizes the window to the model's input, so a window smaller than the input is seen
magnified (a 128 window at 2x by a 256-pixel model). Printed as JSON per kind and window: the
count, the mean IoU with the defect's true mask of the best-scored mask and of the best of the
three by true IoU (an oracle), their shares at IoU >= 0.9, and the mean predicted IoU of the
chosen mask."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from distill.wafer import Wafer
from effvit_sam import from_pretrained
from effvit_sam.predictor import EfficientViTSamPredictor
from eval.metrics import mask_iou

WINDOWS = (256, 128, 64)


def window_around(cx: float, cy: float, size: int, height: int, width: int
                  ) -> tuple[int, int, int, int]:
    """A ``size`` x ``size`` window centred on ``(cx, cy)`` as far as the image allows."""
    x0 = min(max(0, int(cx) - size // 2), width - size)
    y0 = min(max(0, int(cy) - size // 2), height - size)
    return x0, y0, x0 + size, y0 + size


@torch.no_grad()
def main(model_dir: str, size: int = 4096, seed: int = 3,
         windows: tuple[int, ...] = WINDOWS) -> dict:
    predictor = EfficientViTSamPredictor(from_pretrained(model_dir).eval())
    wafer = Wafer(size, size, seed=seed, seam_tile=256, seam_overlap=32)
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for defect in wafer.defects:
        for win in windows:
            rect = window_around(defect.cx, defect.cy, win, size, size)
            truth = defect.mask(rect)
            predictor.set_image(wafer.read(*rect))
            click = np.array([[defect.cx - rect[0], defect.cy - rect[1]]])
            masks, scores, _ = predictor.predict(point_coords=click, point_labels=np.array([1]),
                                                 multimask_output=True)
            ious = [mask_iou(m, truth) for m in masks]
            best = int(np.argmax(scores))
            rows.setdefault(f"{defect.kind} {win}", []).append(
                (ious[best], max(ious), float(scores[best])))
    out = {}
    for key, values in sorted(rows.items()):
        a = np.array(values)
        out[key] = {"count": len(a), "chosen_mIoU": a[:, 0].mean(),
                    "chosen_share_iou_0.9": float((a[:, 0] >= 0.9).mean()),
                    "oracle_mIoU": a[:, 1].mean(),
                    "oracle_share_iou_0.9": float((a[:, 1] >= 0.9).mean()),
                    "predicted_iou": a[:, 2].mean()}
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(main(args[0], *(int(a) for a in args[1:3])), indent=1))
