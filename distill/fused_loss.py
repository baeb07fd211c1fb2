"""Focal and dice losses of many masks in one autograd node: the same values as
:func:`distill.losses.focal_loss` and :func:`distill.losses.dice_loss`, in far fewer passes
over memory.

Phase 2 scores K prompts x 3 outputs x 256 x 256 logits per image and trains only the best
output of each prompt. Built from plain tensor ops, autograd keeps a dozen full-size
intermediates and back-propagates zeros through the two outputs that are not trained; on a CPU
this loss cost about as much as the mask decoder itself. Here the forward keeps only the
logits and the target, and the backward is written out by hand for just the outputs that
receive a gradient. (The cross-entropy avoids ``log1p``, which is unvectorised and ~7x slower
than ``log`` in the CPU builds of torch this was measured on.)
"""

from __future__ import annotations

import torch

_EPS = 1.0  # dice smoothing, as distill.losses


def _focal_parts(x: torch.Tensor, t: torch.Tensor, alpha: float):
    """``z`` (the logit of the true class), ``sigmoid(-z)`` (1 - p_t), ``softplus(-z)`` (the
    cross-entropy) and the per-pixel alpha weight, for logits ``x`` and bool targets ``t``."""
    z = torch.where(t, x, -x)
    q = torch.sigmoid(-z)
    # softplus(-z), stably; not F.softplus / log1p, which run ~7x slower than log on some
    # CPU builds of torch (no vectorised log1p)
    ce = torch.relu(-z) + torch.log(1 + torch.exp(-z.abs()))
    weight = torch.where(t, alpha, 1 - alpha)
    return z, q, ce, weight


class FocalDice(torch.autograd.Function):
    """``(focal K x M, dice K x M) = FocalDice.apply(logits K x M x N, target K x 1 x N bool,
    alpha)``: per-mask mean sigmoid focal loss (gamma 2) and soft dice loss (+1 smoothing)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, t: torch.Tensor, alpha: float):
        _, q, ce, weight = _focal_parts(x, t, alpha)
        focal = (weight * ce * q * q).mean(-1)
        p = torch.sigmoid(x)
        tf = t.to(x.dtype)
        inter = (p * tf).sum(-1)
        total = p.sum(-1) + tf.sum(-1)
        dice = 1 - (2 * inter + _EPS) / (total + _EPS)
        ctx.save_for_backward(x, t, inter, total)
        ctx.alpha = alpha
        return focal, dice

    @staticmethod
    def backward(ctx, g_focal: torch.Tensor, g_dice: torch.Tensor):
        x, t, inter, total = ctx.saved_tensors
        grad = torch.zeros_like(x)
        live = (g_focal != 0) | (g_dice != 0)
        rows, cols = live.nonzero(as_tuple=True)
        if len(rows) == 0:
            return grad, None, None
        xs = x[rows, cols]                      # n x N: only the outputs that are trained
        ts = t[rows, 0]
        z, q, ce, weight = _focal_parts(xs, ts, ctx.alpha)
        # d/dz [w * ce * q^2] with ce = softplus(-z), q = sigmoid(-z), dq/dz = -q (1 - q)
        dz = -weight * q * q * (q + 2 * ce * (1 - q))
        g = torch.where(ts, dz, -dz) * (g_focal[rows, cols, None] / x.shape[-1])
        p = torch.sigmoid(xs)
        denom = (total[rows, cols] + _EPS)[:, None]
        numer = (2 * inter[rows, cols] + _EPS)[:, None]
        d_p = -(2 * ts.to(x.dtype) * denom - numer) / (denom * denom)
        g = g + d_p * p * (1 - p) * g_dice[rows, cols, None]
        grad[rows, cols] = g
        return grad, None, None


def focal_dice(logits: torch.Tensor, target: torch.Tensor, alpha: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mask focal and dice of ``K x M x H x W`` logits against ``K x H x W`` bool masks
    (each mask scored against all M outputs of its prompt): two ``K x M`` tensors."""
    k, m = logits.shape[:2]
    x = logits.float().reshape(k, m, -1)
    t = target.bool().reshape(k, 1, -1)
    return FocalDice.apply(x, t, alpha)
