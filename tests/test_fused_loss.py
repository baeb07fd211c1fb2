"""The fused focal + dice loss gives the plain losses' values and gradients."""

from __future__ import annotations

import torch

from distill import losses
from distill.fused_loss import focal_dice


def _plain(logits, target):
    t = target[:, None].expand_as(logits)
    focal, dice = losses.focal_loss(logits, t), losses.dice_loss(logits, t)
    return focal, dice


def test_fused_matches_plain_values_and_gradients() -> None:
    assert losses.FOCAL_GAMMA == 2.0  # the fused backward is written for gamma 2
    torch.manual_seed(0)
    logits = (torch.randn(5, 3, 16, 16) * 4).requires_grad_()
    target = torch.rand(5, 16, 16) > 0.7
    target[0] = False  # an empty mask
    weights = torch.rand(5, 3)
    weights[:, 1] = 0  # outputs that get no gradient (SAM trains only the best)
    fused = focal_dice(logits, target, losses.FOCAL_ALPHA)
    plain = _plain(logits, target)
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    grads = []
    for focal, dice in (fused, plain):
        (g,) = torch.autograd.grad((weights * (2 * focal + 0.5 * dice)).sum(), logits)
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)
    assert (grads[0][:, 1] == 0).all()


def test_sam_mask_loss_focal_path_matches_plain_formula() -> None:
    torch.manual_seed(1)
    logits = torch.randn(4, 3, 32, 32, requires_grad=True)
    iou_pred = torch.rand(4, 3)
    target = torch.rand(4, 32, 32) > 0.5
    total, parts, best = losses.sam_mask_loss(logits, iou_pred, target, focal_weight=20.0)
    focal, dice = _plain(logits, target)
    rows = torch.arange(4)
    per = 20.0 * focal + dice
    assert torch.equal(best, per.detach().argmin(1))
    torch.testing.assert_close(parts["mask"], per[rows, best].mean().detach())
    (g,) = torch.autograd.grad(total, logits)
    (g_ref,) = torch.autograd.grad(per[rows, best].mean(), logits)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-8)
