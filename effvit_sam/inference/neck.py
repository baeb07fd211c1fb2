"""The neck's upsample-and-sum and the encoder's final LayerNorm2d, each as fewer passes.

The SAM neck projects three backbone stages to 256 channels, resizes them to 64x64 with bicubic
interpolation and sums them. Bicubic resizing is linear and separable, so resizing ``h x w`` to
``H x W`` is ``U_h X U_w^T`` with fixed ``H x h`` and ``W x w`` matrices (:func:`resize_matrix`
reads them off ``F.interpolate`` itself, border clamping included). :class:`FusedSamNeck` does
that on the channels-last view as one small GEMM per axis, the second accumulating straight into
the 64x64 feature (``baddbmm_``): no 64x64 intermediate per stage and no separate add.

:class:`FusedLayerNorm2d` normalises the channels of a channels-last tensor with one
``F.layer_norm`` over its NHWC view, instead of the seven elementwise and reduction passes of
the reference form (both in float32).

Both compute the same functions as the modules they replace, with different rounding (about
1e-6; tested). Under autocast (the bf16 encoder) the neck's projections run in the autocast
dtype and the resizes and their sum in float32, as the reference's ``Upsample`` resizes (its
sum is in the autocast dtype: this one rounds less). :class:`FusedSamNeck` falls back to the
reference computation under autograd, tracing or export, or when an input is not channels-last
(or, without autocast, not float32); :class:`FusedLayerNorm2d` needs no fallback
(``F.layer_norm`` takes any layout and autograd).

The resize matrices are cached per (sizes, device, dtype), at most :data:`RESIZE_CACHE_SIZE` of
them per process (least recently used dropped): an encoder needs two or three.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.encoder import EfficientViTImageEncoder, SamNeck, Upsample
from ..modeling.layers import LayerNorm2d
from .convs import _channels_last
from .epilogue import _needs_out_of_place

RESIZE_CACHE_SIZE = 16


def _resize_matrix(n_in: int, n_out: int, device: torch.device,
                   dtype: torch.dtype) -> torch.Tensor:
    eye = torch.eye(n_in, dtype=torch.float64, device=device).view(n_in, 1, n_in, 1)
    # Resizing n_in x 1 to n_out x 1: the width axis is the identity (scale 1, offset 0).
    cols = F.interpolate(eye, size=(n_out, 1), mode="bicubic", align_corners=False)
    return cols.view(n_in, n_out).t().to(dtype).contiguous()


_cached_resize_matrix = functools.lru_cache(maxsize=RESIZE_CACHE_SIZE)(_resize_matrix)


def resize_matrix(n_in: int, n_out: int, *, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``n_out x n_in`` matrix of 1-D bicubic resizing (``align_corners=False``), as
    ``F.interpolate`` computes it: column ``j`` is the resized ``j``-th unit vector. Cached
    (:data:`RESIZE_CACHE_SIZE` entries); the result is shared, so never modify it."""
    if torch.compiler.is_compiling():
        # Traced as constants (inductor folds them); a cache lookup means nothing in a graph.
        return _resize_matrix(int(n_in), int(n_out), torch.device(device), dtype)
    return _cached_resize_matrix(int(n_in), int(n_out), torch.device(device), dtype)


def add_resized_(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``out += bicubic_resize(x, out's size)`` in place; both float32 channels-last
    ``B x C x . x .``. Returns ``out``."""
    b, c, h, w = x.shape
    big_h, big_w = out.shape[-2:]
    if (h, w) == (big_h, big_w):
        return out.add_(x)
    uh = resize_matrix(h, big_h, device=x.device, dtype=x.dtype)
    uw = resize_matrix(w, big_w, device=x.device, dtype=x.dtype)
    # Rows: (H x h) @ (h x w*C) per image, on the NHWC view.
    rows = torch.matmul(uh, x.permute(0, 2, 3, 1).reshape(b, h, w * c))
    # Columns, accumulated into out: (W x w) @ (w x C) for each of the B*H output rows.
    dst = out.permute(0, 2, 3, 1).view(b * big_h, big_w, c)
    dst.baddbmm_(uw.expand(b * big_h, big_w, w), rows.view(b * big_h, w, c))
    return out


def _check_input_op(op: nn.Module) -> None:
    """A neck input must be ``Sequence([projection, Upsample])``: the fused path runs the
    projection (``op_list[0]``) and does the resize itself."""
    layers = list(op.op_list)
    if len(layers) != 2 or not isinstance(layers[1], Upsample):
        raise ValueError(f"unexpected neck input op {op}")


class FusedSamNeck(nn.Module):
    """:class:`~effvit_sam.modeling.encoder.SamNeck` whose resizes accumulate into one buffer.

    Holds the neck's own submodules under the same names (same ``state_dict`` keys).
    """

    def __init__(self, neck: SamNeck) -> None:
        super().__init__()
        if not isinstance(neck, SamNeck):
            raise TypeError(f"expected a SamNeck, got {type(neck).__name__}")
        for op in neck.input_ops:
            _check_input_op(op)
        self.stage_ids = neck.stage_ids
        self.input_ops = neck.input_ops
        self.middle = neck.middle
        self.output_ops = neck.output_ops
        self.size = int(neck.input_ops[0].op_list[1].size)

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """``stages``: the backbone's outputs (``B x C_s x H_s x W_s``, channels-last for the
        fused path); returns ``B x out_dim x size x size`` (autocast dtype under autocast)."""
        ids = list(self.stage_ids)
        inputs = [stages[s] for s in ids]
        dev = inputs[0].device.type
        autocast = torch.is_autocast_enabled(dev)
        if not all(_channels_last(t) and (autocast or t.dtype == torch.float32)
                   and not _needs_out_of_place(t) for t in inputs):
            return SamNeck.forward(self, stages)  # the reference computation, same submodules
        # The projections run under the caller's autocast; resizes and sum in float32.
        projected = [op.op_list[0](t) for op, t in zip(self.input_ops, inputs, strict=True)]
        with torch.autocast(dev, enabled=False):
            # The official sum runs right to left: feats[-1] first, then each earlier one added.
            x = projected[-1].float()
            if tuple(x.shape[-2:]) != (self.size, self.size):
                x = self.input_ops[-1].op_list[1](x)
            x = x.contiguous(memory_format=torch.channels_last)  # a no-op for a conv's output
            for p in reversed(projected[:-1]):
                add_resized_(x, p.float().contiguous(memory_format=torch.channels_last))
        return self.output_ops[0](self.middle(x))


class FusedLayerNorm2d(nn.Module):
    """:class:`~effvit_sam.modeling.layers.LayerNorm2d` as one ``F.layer_norm`` on the NHWC
    view, in float32, returning the input's dtype (channels-last layout)."""

    def __init__(self, norm: LayerNorm2d) -> None:
        super().__init__()
        if not isinstance(norm, LayerNorm2d):
            raise TypeError(f"expected a LayerNorm2d, got {type(norm).__name__}")
        self.weight = norm.weight
        self.bias = norm.bias
        self.eps = norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nhwc = x.float().permute(0, 2, 3, 1)
        out = F.layer_norm(nhwc, (x.shape[1],), self.weight.float(), self.bias.float(), self.eps)
        return out.permute(0, 3, 1, 2).to(x.dtype)


def fuse_neck(encoder: EfficientViTImageEncoder) -> EfficientViTImageEncoder:
    """Swaps, in place, the encoder's neck for :class:`FusedSamNeck` and its final norm for
    :class:`FusedLayerNorm2d`; returns the encoder."""
    if not isinstance(encoder, EfficientViTImageEncoder):
        raise TypeError(f"expected an EfficientViTImageEncoder, got {type(encoder).__name__}")
    if isinstance(encoder.neck, SamNeck):
        encoder.neck = FusedSamNeck(encoder.neck)
    if isinstance(encoder.norm, LayerNorm2d):
        encoder.norm = FusedLayerNorm2d(encoder.norm)
    return encoder
