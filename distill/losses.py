"""Losses for both phases: embedding distillation and SAM's mask + IoU objective.

Phase 2 follows SAM's recipe: ``FOCAL_WEIGHT`` x focal + ``DICE_WEIGHT`` x dice on the best of
the predicted masks, plus ``IOU_WEIGHT`` x MSE between the IoU head and each mask's actual IoU.
The two mask weights are the defaults of ``train.focal_weight`` / ``train.dice_weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fused_loss import focal_dice

FOCAL_WEIGHT = 20.0
"""SAM paper: focal and dice are combined 20:1."""
DICE_WEIGHT = 1.0
IOU_WEIGHT = 1.0
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
HUBER_DELTA = 1.0
_EPS = 1.0


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Distance between ``B x C x H x W`` student and teacher embeddings (a scalar).

    ``cosine`` is ``1 - cos`` between the C-dimensional vectors at each location, averaged.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student embedding {tuple(student.shape)} does not match teacher "
                         f"{tuple(teacher.shape)}")
    student, teacher = student.float(), teacher.float()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "l1":
        return F.l1_loss(student, teacher)
    if kind == "huber":
        return F.huber_loss(student, teacher, delta=HUBER_DELTA)
    if kind == "cosine":
        return (1 - F.cosine_similarity(student, teacher, dim=1)).mean()
    raise ValueError(f"unknown embedding loss {kind!r}")


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-mask sigmoid focal loss, mean over pixels: ``... x H x W`` -> ``...``."""
    target = target.float()
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha_t = FOCAL_ALPHA * target + (1 - FOCAL_ALPHA) * (1 - target)
    return (alpha_t * ce * (1 - p_t) ** FOCAL_GAMMA).flatten(-2).mean(-1)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-mask binary cross-entropy, mean over pixels: ``... x H x W`` -> ``...``."""
    ce = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
    return ce.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-mask soft dice loss with +1 smoothing: ``... x H x W`` -> ``...``."""
    prob = logits.sigmoid().flatten(-2)
    target = target.float().flatten(-2)
    inter = (prob * target).sum(-1)
    return 1 - (2 * inter + _EPS) / (prob.sum(-1) + target.sum(-1) + _EPS)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of thresholded logits (> 0) with boolean targets: ``... x H x W`` -> ``...``.

    An empty prediction of an empty target counts as IoU 1.
    """
    pred = logits > 0
    target = target.bool()
    inter = (pred & target).flatten(-2).sum(-1).float()
    union = (pred | target).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def sam_mask_loss(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, *,
                  kind: str = "focal", focal_weight: float = FOCAL_WEIGHT,
                  dice_weight: float = DICE_WEIGHT, iou_weight: float = IOU_WEIGHT
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """SAM's loss for ``K x M x H x W`` logits (M outputs per prompt) against ``K x H x W`` masks.

    Per output: ``focal_weight`` x focal (or BCE, ``kind="bce"``) + ``dice_weight`` x dice,
    plus ``iou_weight`` x the IoU head's MSE. The mask loss back-propagates only through the
    best (lowest-loss) of the M outputs, so the multimask head can keep its ambiguity; the IoU
    head learns every output's actual IoU.
    Returns ``(total, parts, best)`` with ``best`` the ``K`` indices of the chosen outputs.
    """
    if kind == "focal":  # the same values as focal_loss / dice_loss, several times faster
        pixel, dice = focal_dice(logits, target, FOCAL_ALPHA)
        target = target[:, None].expand_as(logits)
    else:
        target = target[:, None].expand_as(logits)
        pixel, dice = bce_loss(logits, target), dice_loss(logits, target)
    per_output = focal_weight * pixel + dice_weight * dice  # K x M
    best = per_output.detach().argmin(1)
    rows = torch.arange(len(best), device=best.device)
    with torch.no_grad():
        actual_iou = mask_iou(logits, target)
    iou = F.mse_loss(iou_pred.float(), actual_iou)
    mask = per_output[rows, best].mean()
    parts = {"mask": mask.detach(), "focal": pixel[rows, best].mean().detach(),
             "dice": dice[rows, best].mean().detach(), "iou_mse": iou.detach()}
    return mask + iou_weight * iou, parts, best
