"""The predictor protocol the evaluators run against, and its implementation for our models.

The runner needs only two calls, so any model plugs in (the oracle and known-error predictors
of the tests, a segment_anything ``Sam`` behind an adapter, ...):

* ``set_image(image)`` - ``H x W x 3`` uint8 RGB; the image is encoded once;
* ``predict_batch(boxes=..., points=..., labels=..., mask_input=..., multimask_output=...)`` -
  K prompts of that image at once, all in original-image pixels: ``boxes`` ``K x 4`` XYXY, or
  ``points`` ``K x N x 2`` (x, y) with ``labels`` ``K x N`` (1 foreground, 0 background, -1
  padding); optional ``mask_input`` ``K x 1 x 256 x 256`` logits. Returns
  ``(masks K x M x H x W bool, scores K x M, low_res K x M x 256 x 256)``: M = 3 with
  ``multimask_output``, else 1; scores are the model's predicted IoUs.

A predictor may also have ``predict_best`` (same keywords): per prompt only the mask with the
highest predicted IoU, ``(masks K x H x W, scores K, low_res K x 256 x 256)``, which is all the
evaluators keep. :func:`predict_best` calls it where it exists and otherwise picks from
``predict_batch`` (:func:`best_masks`): the same masks either way, the first upscales a third.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from effvit_sam import geometry
from effvit_sam.predictor import EfficientViTSamPredictor, ImageNotSetError


class BatchPredictor(Protocol):
    def set_image(self, image: np.ndarray) -> None: ...

    def predict_batch(self, *, boxes: np.ndarray | None = None, points: np.ndarray | None = None,
                      labels: np.ndarray | None = None, mask_input: np.ndarray | None = None,
                      multimask_output: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class SamBatchPredictor:
    """:class:`BatchPredictor` over :class:`effvit_sam.predictor.EfficientViTSamPredictor`
    (any EfficientViT-SAM variant, or a ``segment_anything`` ``Sam``).

    Prompts are mapped to the prompt frame through :mod:`effvit_sam.geometry` and decoded with
    ``predict_torch``, which (unlike ``predict``) takes SAM's padding label -1. They go to the
    decoder ``max_prompts`` at a time: the two-way transformer's activations grow with the
    number of prompts, and a crowded LVIS image has hundreds.

    ``fast`` (off by default: evaluations measure the reference eager float32 computation, as
    published figures do) lets the predictor apply the default fast path; a model already
    optimised by the caller runs as given with ``fast=False``.
    """

    def __init__(self, model: torch.nn.Module, *, device: str | torch.device | None = None,
                 max_prompts: int = 64, fast: bool = False) -> None:
        if max_prompts < 1:
            raise ValueError(f"max_prompts must be >= 1, got {max_prompts}")
        self.predictor = EfficientViTSamPredictor(model, device=device, fast=fast)
        self.max_prompts = max_prompts

    def set_image(self, image: np.ndarray) -> None:
        self.predictor.set_image(image)

    def predict_batch(self, *, boxes: np.ndarray | None = None, points: np.ndarray | None = None,
                      labels: np.ndarray | None = None, mask_input: np.ndarray | None = None,
                      multimask_output: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._predict(boxes, points, labels, mask_input, multimask_output, best=False)

    def predict_best(self, *, boxes: np.ndarray | None = None, points: np.ndarray | None = None,
                     labels: np.ndarray | None = None, mask_input: np.ndarray | None = None,
                     multimask_output: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per prompt the mask with the highest predicted IoU (``K x H x W``), its score and its
        low-res logits. Only those masks are upscaled to the image, with the lean upscaling (bit
        for bit SAM's): for three masks per prompt, a third of the interpolation or less."""
        return self._predict(boxes, points, labels, mask_input, multimask_output, best=True)

    def _predict(self, boxes, points, labels, mask_input, multimask_output: bool, *, best: bool):
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be given together")
        if (boxes is None) == (points is None):
            raise ValueError("give either boxes or points")
        size = self.predictor.original_size
        frame = self.predictor.prompt_frame
        device = self.predictor.device
        box_t = point_t = label_t = None
        if boxes is not None:
            box_t = torch.as_tensor(geometry.apply_boxes(np.asarray(boxes, np.float64), size,
                                                         frame), dtype=torch.float32,
                                    device=device)
        if points is not None:
            point_t = torch.as_tensor(geometry.apply_coords(np.asarray(points, np.float64), size,
                                                            frame), dtype=torch.float32,
                                      device=device)
            label_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64, device=device)
        mask_t = None
        if mask_input is not None:
            mask_t = torch.as_tensor(np.asarray(mask_input), dtype=torch.float32, device=device)
        count = len(box_t) if box_t is not None else len(point_t)
        if count == 0:
            raise ValueError("no prompts given")
        masks, scores, low_res = [], [], []
        for start in range(0, count, self.max_prompts):
            part = slice(start, start + self.max_prompts)
            args = (None if point_t is None else point_t[part],
                    None if label_t is None else label_t[part])
            kwargs = {"boxes": None if box_t is None else box_t[part],
                      "mask_input": None if mask_t is None else mask_t[part],
                      "multimask_output": multimask_output}
            if best:
                m, s, low = self._decode_best(*args, **kwargs)
            else:
                m, s, low = self.predictor.predict_torch(*args, **kwargs)
            masks.append(m.cpu().numpy())
            scores.append(s.float().cpu().numpy())
            low_res.append(low.float().cpu().numpy())
        return np.concatenate(masks), np.concatenate(scores), np.concatenate(low_res)

    @torch.inference_mode()
    def _decode_best(self, points, labels, **kwargs):
        pred = self.predictor
        if not pred.images:
            raise ImageNotSetError("no image is set: call set_image(...) before predicting")
        image = pred.images[-1]
        low, scores = pred.decode_low_res(image, points, labels, kwargs["boxes"],
                                          kwargs["mask_input"], kwargs["multimask_output"])
        pick = scores.argmax(dim=1)
        rows = torch.arange(len(low), device=low.device)
        low, scores = low[rows, pick], scores[rows, pick]
        return pred.upscale(image, low[:, None], lean=True)[:, 0], scores, low


def predict_best(predictor: BatchPredictor, **kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``predictor.predict_best(**kwargs)`` where it has one, else the best of
    ``predict_batch`` (:func:`best_masks`): per prompt the mask with the highest predicted IoU,
    its score and its low-res logits."""
    own = getattr(predictor, "predict_best", None)
    if own is not None:
        return own(**kwargs)
    masks, scores, low_res = predictor.predict_batch(**kwargs)
    return best_masks(masks, scores), scores.max(axis=1), best_masks(low_res, scores)



def best_masks(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per prompt, the mask with the highest predicted IoU: ``K x M x ...`` -> ``K x ...``
    (works for full-size masks and for low-res logits alike)."""
    return masks[np.arange(len(masks)), scores.argmax(axis=1)]
