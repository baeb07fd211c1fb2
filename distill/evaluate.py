"""Quick in-training figures of merit on SA-1B-format batches (the zero-shot COCO/LVIS
evaluators live in ``eval/``): phase 1's student-teacher embedding MSE and phase 2's box and
click mIoU at the low-res prompt frame."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from effvit_sam.modeling import EfficientViTSam

from .losses import mask_iou
from .prompts import correction_clicks, pixels_to_points
from .teacher import Teacher, raw_images


@torch.no_grad()
def embedding_mse(encoder: nn.Module, teacher: Teacher, batches: Iterable[dict], *,
                  max_batches: int | None = None) -> float:
    """Mean squared error between student and teacher ``B x C x 64 x 64`` embeddings over
    ``batches`` (SA-1B batches with ``image`` and ``image_raw``), the encoder in eval mode."""
    was_training = encoder.training
    encoder.eval()
    total, count = 0.0, 0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        device = next(encoder.parameters()).device
        target = teacher(raw_images(batch)).to(device)
        student = encoder(batch["image"].to(device))
        total += float(((student - target) ** 2).mean()) * len(target)
        count += len(target)
    encoder.train(was_training)
    if count == 0:
        raise ValueError("no batches to measure the embedding MSE on")
    return total / count


def center_click(masks: torch.Tensor) -> torch.Tensor:
    """The low-res pixel deepest inside each ``K x H x W`` mask (largest distance to its
    border), as flat indices ``K``: the usual 1-click evaluation prompt."""
    from scipy.ndimage import distance_transform_edt

    flat = []
    for mask in masks.cpu().numpy().astype(bool):
        dist = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        flat.append(int(dist.argmax()))
    return torch.tensor(flat, device=masks.device)


@torch.no_grad()
def evaluate_miou(model: EfficientViTSam, batches: Iterable[dict], *,
                  clicks: int = 1) -> dict[str, float]:
    """mIoU over every mask of ``batches`` (SA-1B batches) with box and click prompts.

    Scored at the low-res prompt frame (256 x 256 for a 64 x 64 embedding). ``box``:
    single-mask output. ``1-click``: the centre click, multimask output, the mask with the
    highest predicted IoU (as SAM's evaluation does). ``{n}-click`` (``clicks`` > 1): then n - 1
    correction clicks from the error region (sampled with a fixed-seed generator), feeding back
    the previous logits.
    """
    was_training = model.training
    model.eval()
    scores: dict[str, list[torch.Tensor]] = {"box": [], "1-click": []}
    generator = torch.Generator().manual_seed(0)
    for batch in batches:
        embeddings = model.encode(batch["image"].to(model.device))
        for i in range(len(embeddings)):
            masks = batch["masks"][i].to(model.device)
            if len(masks) == 0:
                continue
            emb = embeddings[i: i + 1]
            logits, _ = model.decode(emb, points=None, boxes=batch["boxes"][i].float().to(
                model.device), mask_input=None, multimask_output=False)
            scores["box"].append(mask_iou(logits[:, 0], masks))
            coords = pixels_to_points(center_click(masks), masks.shape[-1])[:, None]
            labels = torch.ones(len(masks), 1, dtype=torch.int64, device=model.device)
            logits, iou = model.decode(emb, points=(coords, labels), boxes=None,
                                       mask_input=None, multimask_output=True)
            previous = logits[torch.arange(len(masks)), iou.argmax(1)]
            scores["1-click"].append(mask_iou(previous, masks))
            for n in range(2, clicks + 1):
                click, label = correction_clicks(previous, masks, generator)
                coords, labels = torch.cat([coords, click], 1), torch.cat([labels, label], 1)
                logits, _ = model.decode(emb, points=(coords, labels), boxes=None,
                                         mask_input=previous[:, None], multimask_output=False)
                previous = logits[:, 0]
                scores.setdefault(f"{n}-click", []).append(mask_iou(previous, masks))
    model.train(was_training)
    return {k: float(torch.cat(v).mean()) for k, v in scores.items() if v}
