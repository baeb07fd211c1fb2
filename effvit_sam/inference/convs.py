"""Faster CPU convolutions for the fast path: Winograd F(4x4, 3x3) and 1x1 convs as GEMMs.

Measured on a 2-core AVX2 CPU (README), oneDNN runs EfficientViT's 3x3 convolutions at
115-140 GFLOP/s, close to what this class of CPU does in float32, so they can only get faster
by doing less arithmetic. :class:`WinogradConv3x3` computes a stride-1 3x3 convolution as
Lavin & Gray's F(4x4, 3x3): each 6x6 input tile and each filter are transformed once, the 36
transformed positions are 36 independent channel GEMMs (``bmm``), and an output transform gives
a 4x4 output tile: 4x fewer multiplications, the transforms being cheap passes over memory.
Same function, different rounding: about 1e-5 relative error per convolution (a direct
float32 conv: about 2e-6), tested against float64.

oneDNN's 1x1 convolution is slow when the input has many channels and the image is small
(EfficientViT's expanded MBConv projections: 6144 -> 512 channels at 16x16 runs at about 40
GFLOP/s); the same product as one GEMM on the NHWC view (:class:`GemmConv1x1`) runs 2-3x faster.

Both work on float32 channels-last input (the fast path's layout) and fall back to the original
convolution for anything else: other layouts and dtypes, autocast (whose low-precision
convolutions would round Winograd's transforms far worse), autograd, tracing and export. Which
widths are converted is the caller's choice (``FastPathOptions.winograd_min_channels`` and
``gemm_min_in_channels``, per CPU tier).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .epilogue import _needs_out_of_place

# Lavin & Gray's F(4x4, 3x3) matrices (interpolation points 0, 1, -1, 2, -2, infinity).
_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))
_M, _A = 4, 6  # output tile, input tile
_BIAS_POSITION = 1 * _A + 1  # (1, 1) of the 6x6 transformed tile, where A^T e_1 = (1, 1, 1, 1)


def _channels_last(x: torch.Tensor) -> bool:
    return x.ndim == 4 and x.permute(0, 2, 3, 1).is_contiguous()


def _fast_path_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (_channels_last(x) and x.dtype == weight.dtype and not _needs_out_of_place(x)
            and not torch.is_autocast_enabled(x.device.type))


def winograd_weights(weight: torch.Tensor) -> torch.Tensor:
    """``Cout x Cin x 3 x 3`` filters to the ``36 x Cin x Cout`` transformed filters (G g G^T),
    computed in float64 and stored in the weight's dtype."""
    if weight.ndim != 4 or weight.shape[-2:] != (3, 3):
        raise ValueError(f"expected Cout x Cin x 3 x 3 filters, got {tuple(weight.shape)}")
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ik,ockl,jl->ijco", g, weight.detach().double(), g)
    return u.reshape(_A * _A, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


class WinogradConv3x3(nn.Module):
    """A stride-1, padding-1, ungrouped 3x3 ``nn.Conv2d`` computed as Winograd F(4x4, 3x3).

    Keeps the original ``conv`` for the fallback path; the transformed filters are a
    non-persistent buffer, so ``state_dict()`` is the conv's.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not self.applies_to(conv):
            raise ValueError(f"Winograd F(4x4,3x3) needs a stride-1, padding-1, dilation-1, "
                             f"ungrouped 3x3 conv, got {conv}")
        self.conv = conv
        self.register_buffer("u", winograd_weights(conv.weight), persistent=False)
        dt, dev = conv.weight.dtype, conv.weight.device
        bt = torch.tensor(_BT, dtype=dt, device=dev)
        at = torch.tensor(_AT, dtype=dt, device=dev)
        self.register_buffer("bt", bt, persistent=False)
        self.register_buffer("at", at, persistent=False)

    @staticmethod
    def applies_to(conv: nn.Module) -> bool:
        return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
                and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
                and conv.padding_mode == "zeros")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _fast_path_applies(x, self.u):
            return self.conv(x)
        b, c, h, w = x.shape
        th, tw = -(-h // _M), -(-w // _M)
        # Zero padding: one pixel before, enough after for whole 6x6 tiles with stride 4.
        xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, tw * _M + 1 - w, 1, th * _M + 1 - h))
        tiles = xp.unfold(1, _A, _M).unfold(2, _A, _M)  # b, th, tw, c, 6, 6 (a view)
        d = tiles.permute(4, 5, 0, 1, 2, 3).reshape(_A, -1)  # 6 x (6 * b th tw c), one copy
        # Input transform B^T d B, one 6x6 side at a time (two thin GEMMs instead of a 36x36 one).
        d = (self.bt @ d).view(_A, _A, -1)
        v = torch.bmm(self.bt.expand(_A, _A, _A), d).view(_A * _A, b * th * tw, c)
        m = torch.bmm(v, self.u)  # 36 channel GEMMs: (tiles x cin) @ (cin x cout)
        co = m.shape[-1]
        if self.conv.bias is not None:
            # A^T's column for the interpolation point 1 is all ones, so a bias added at the
            # transformed position (1, 1) reaches every pixel of the 4x4 output tile: 1/36 of
            # a pass over m instead of a pass over the output.
            m[_BIAS_POSITION].add_(self.conv.bias)
        # Output transform A^T m A, then the 4x4 tiles are written into a channels-last output.
        y = (self.at @ m.view(_A, -1)).view(_M, _A, -1)
        y = torch.bmm(self.at.expand(_M, _M, _A), y).view(_M, _M, b, th, tw, co)
        out = torch.empty((b, co, th * _M, tw * _M), dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last)
        out.permute(0, 2, 3, 1).view(b, th, _M, tw, _M, co).copy_(y.permute(2, 3, 0, 4, 1, 5))
        if th * _M != h or tw * _M != w:  # sizes that are not a multiple of 4
            out = out[:, :, :h, :w].contiguous(memory_format=torch.channels_last)
        return out


class GemmConv1x1(nn.Module):
    """An ungrouped 1x1 ``nn.Conv2d`` as one GEMM (``F.linear``) on the NHWC view."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not self.applies_to(conv):
            raise ValueError(f"GemmConv1x1 needs an ungrouped stride-1 1x1 conv, got {conv}")
        self.conv = conv

    @staticmethod
    def applies_to(conv: nn.Module) -> bool:
        return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
                and conv.padding == (0, 0) and conv.groups == 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if not _fast_path_applies(x, conv.weight):
            return conv(x)
        w = conv.weight.view(conv.out_channels, conv.in_channels)
        # B x H x W x Cout contiguous, i.e. a channels-last B x Cout x H x W tensor.
        return F.linear(x.permute(0, 2, 3, 1), w, conv.bias).permute(0, 3, 1, 2)


def convert_convs(module: nn.Module, *, winograd: bool, gemm_pointwise: bool,
                  winograd_min_channels: int, gemm_min_in_channels: int) -> dict[str, int]:
    """Replaces, in place, every qualifying ``nn.Conv2d`` under ``module``: stride-1 3x3 convs
    with at least ``winograd_min_channels`` input and output channels by
    :class:`WinogradConv3x3` (when ``winograd``), 1x1 convs with at least
    ``gemm_min_in_channels`` input channels by :class:`GemmConv1x1` (when ``gemm_pointwise``).
    The widths are ``FastPathOptions`` fields, chosen per CPU tier by ``FastPathOptions.auto``.
    Returns how many of each were converted."""
    for name, value in (("winograd_min_channels", winograd_min_channels),
                        ("gemm_min_in_channels", gemm_min_in_channels)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    counts = {"winograd": 0, "gemm_pointwise": 0}
    for parent in list(module.modules()):
        if isinstance(parent, (WinogradConv3x3, GemmConv1x1)):
            continue
        for name, child in list(parent.named_children()):
            new: nn.Module | None = None
            if winograd and WinogradConv3x3.applies_to(child) \
                    and min(child.in_channels, child.out_channels) >= winograd_min_channels:
                new, kind = WinogradConv3x3(child), "winograd"
            elif gemm_pointwise and GemmConv1x1.applies_to(child) \
                    and child.in_channels >= gemm_min_in_channels:
                new, kind = GemmConv1x1(child), "gemm_pointwise"
            if new is not None:
                setattr(parent, name, new)
                counts[kind] += 1
    return counts
