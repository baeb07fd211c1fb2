"""BatchNorm folding: one ``fuse(module)`` convention for every block, the encoder and the model.

In eval mode a BatchNorm after a convolution is an affine map per output channel,
``y = (conv(x) - mean) * gamma / sqrt(var + eps) + beta``, so it folds exactly into the
convolution's weight and bias. ``fuse`` returns an inference copy (deep copy, eval mode, the
original untouched) in which every :class:`~effvit_sam.modeling.layers.ConvNormAct` whose norm is a
``BatchNorm2d`` has a biased conv and an ``Identity`` norm. The copy keeps the module structure,
so the same forward code runs; only the state-dict names change (``norm.*`` go, ``conv.bias``
appear), which is why the result is for inference and never saved as a checkpoint.

What does not fold exactly, and so stays: the encoder's final LayerNorm2d (it normalises over
channels per pixel, a non-linear map), the LiteMLA aggregation pair (a depthwise ``s x s`` conv
then a grouped 1x1 conv: composing them is exact but costs ``3 * dim`` times the FLOPs), and the
neck's 1x1 conv + bicubic upsample (they commute, but moving the conv after the upsample
multiplies its cost by up to 16).
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

from ..modeling.layers import ConvNormAct

M = TypeVar("M", bound=nn.Module)


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new ``Conv2d`` computing ``bn(conv(x))`` with ``bn`` in eval mode (running statistics).

    The fold is done in float64 and stored in the conv's dtype, so it adds no rounding beyond
    one float32 rounding of each weight.
    """
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"expected (Conv2d, BatchNorm2d), got ({type(conv).__name__}, "
                        f"{type(bn).__name__})")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm has {bn.num_features} features, conv has "
                         f"{conv.out_channels} output channels")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics cannot be folded")
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                      padding_mode=conv.padding_mode, device=conv.weight.device,
                      dtype=conv.weight.dtype)
    w = conv.weight.double()
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(bn.running_mean,
                                                                          dtype=torch.float64)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(b)
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    fused.weight.copy_(w * scale.view(-1, 1, 1, 1))
    fused.bias.copy_((b - bn.running_mean.double()) * scale + beta)
    return fused


def _fuse_in_place(module: nn.Module) -> int:
    """Fold every ConvNormAct's BatchNorm under ``module``; returns how many were folded."""
    count = 0
    for sub in module.modules():
        if isinstance(sub, ConvNormAct) and isinstance(sub.norm, nn.BatchNorm2d):
            sub.conv = fuse_conv_bn(sub.conv, sub.norm)
            sub.norm = nn.Identity()
            count += 1
    return count


def fuse(module: M) -> M:
    """The inference copy of ``module`` with every BatchNorm folded into its convolution.

    Works on any module: a single ``ConvNormAct``, a block, the neck, the image encoder or a
    whole ``EfficientViTSam``. The copy is in eval mode and has no ``BatchNorm2d`` left; the
    argument is not modified. Outputs equal the eval-mode outputs of ``module`` up to float32
    rounding.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"fuse expects an nn.Module, got {type(module).__name__}")
    fused = copy.deepcopy(module).eval()
    _fuse_in_place(fused)
    leftover = [name for name, sub in fused.named_modules() if isinstance(sub, nn.BatchNorm2d)]
    if leftover:
        # A BatchNorm outside a ConvNormAct would silently keep running; say where it is.
        raise ValueError(f"BatchNorm2d not preceded by a ConvNormAct conv at {leftover[:5]}")
    return fused


def fuse_model(model: M, *, epilogues: bool = True) -> M:
    """The fused inference copy of a model (or any module): ``fuse_model(build_sam("l0"))``.

    Every BatchNorm folded into its convolution (:func:`fuse`) and, with ``epilogues`` (the
    default), every activation and residual add after a convolution moved into that
    convolution's oneDNN epilogue on CPU (:mod:`effvit_sam.inference.epilogue`; plain ops on
    other devices, under autograd, tracing, export and ``torch.compile``). Outputs equal the
    eval-mode outputs of ``model`` up to float32 rounding. ``epilogues=False`` is :func:`fuse`.
    """
    fused = fuse(model)
    if epilogues:
        from .epilogue import fuse_epilogues

        fused = fuse_epilogues(fused)
    return fused
