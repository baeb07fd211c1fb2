"""EfficientViT building blocks: residual convs, (Fused)MBConv and ReLU linear attention.

Submodule names follow the official checkpoints (``main``, ``conv1``, ``spatial_conv``,
``inverted_conv``, ``depth_conv``, ``point_conv``, ``qkv``, ``aggreg``, ``proj``,
``context_module``, ``local_module``), so official state dicts load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ActLayer, ConvNormAct, NormLayer


class ResBlock(nn.Module):
    """Two 3x3 convs with norms; activation after the first only."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1,
                 norm_layer: NormLayer, act_layer: ActLayer) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, in_channels, 3, stride=stride,
                                 norm_layer=norm_layer, act_layer=act_layer)
        self.conv2 = ConvNormAct(in_channels, out_channels, 3, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class FusedMBConv(nn.Module):
    """3x3 expansion conv then 1x1 projection.

    With ``fewer_norm`` the expansion conv has a bias and no norm, as in the official models.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, expand: int,
                 fewer_norm: bool, norm_layer: NormLayer, act_layer: ActLayer) -> None:
        super().__init__()
        mid = in_channels * expand
        self.spatial_conv = ConvNormAct(in_channels, mid, 3, stride=stride, bias=fewer_norm,
                                        norm_layer=None if fewer_norm else norm_layer,
                                        act_layer=act_layer)
        self.point_conv = ConvNormAct(mid, out_channels, 1, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.spatial_conv(x))


class MBConv(nn.Module):
    """1x1 expansion, 3x3 depthwise conv, 1x1 projection (inverted bottleneck).

    With ``fewer_norm`` the first two convs have biases and no norms.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, expand: int,
                 fewer_norm: bool, norm_layer: NormLayer, act_layer: ActLayer) -> None:
        super().__init__()
        mid = in_channels * expand
        inner_norm = None if fewer_norm else norm_layer
        self.inverted_conv = ConvNormAct(in_channels, mid, 1, bias=fewer_norm,
                                         norm_layer=inner_norm, act_layer=act_layer)
        self.depth_conv = ConvNormAct(mid, mid, 3, stride=stride, groups=mid, bias=fewer_norm,
                                      norm_layer=inner_norm, act_layer=act_layer)
        self.point_conv = ConvNormAct(mid, out_channels, 1, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class Residual(nn.Module):
    """``main(x) + x`` when ``shortcut``, else ``main(x)`` (downsampling blocks)."""

    def __init__(self, main: nn.Module, *, shortcut: bool = True) -> None:
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main(x)
        return out + x if self.shortcut else out


class LiteMLA(nn.Module):
    """Multi-scale ReLU linear attention.

    ``qkv`` makes ``heads`` groups of ``[q | k | v]`` (each ``dim`` channels); each scale in
    ``scales`` aggregates nearby tokens with a depthwise ``s x s`` conv followed by a grouped 1x1
    conv, giving more heads. Attention is ``relu(q) (relu(k)^T v) / (relu(q) sum relu(k))``,
    computed in float32 whatever the autocast dtype, with denominator eps 1e-15.
    """

    eps = 1e-15

    def __init__(self, channels: int, *, dim: int, scales: tuple[int, ...],
                 norm_layer: NormLayer) -> None:
        super().__init__()
        self.dim = dim
        heads = channels // dim
        total = heads * dim
        self.qkv = ConvNormAct(channels, 3 * total, 1)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(3 * total, 3 * total, s, padding=s // 2, groups=3 * total, bias=False),
                nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False),
            )
            for s in scales
        )
        self.proj = ConvNormAct(total * (1 + len(scales)), channels, 1, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        qkv = torch.cat([qkv, *(op(qkv) for op in self.aggreg)], dim=1)
        h, w = qkv.shape[-2:]
        # Few tokens: the official code switches to the quadratic form, which differs in rounding.
        attention = self.linear_attention if h * w > self.dim else self.quadratic_attention
        out = attention(qkv)
        return self.proj(out.to(x.dtype))

    def _split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, _, h, w = qkv.shape
        qkv = qkv.float().reshape(b, -1, 3 * self.dim, h * w)
        q, k, v = qkv.split(self.dim, dim=2)
        return F.relu(q), F.relu(k), v

    def linear_attention(self, qkv: torch.Tensor) -> torch.Tensor:
        b, _, h, w = qkv.shape
        with torch.autocast(qkv.device.type, enabled=False):
            q, k, v = self._split(qkv)
            # A row of ones appended to v yields the normaliser sum_j relu(k_j) . relu(q_i).
            v = F.pad(v, (0, 0, 0, 1), value=1.0)
            out = (v @ k.transpose(-1, -2)) @ q
            out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
        return out.reshape(b, -1, h, w)

    def quadratic_attention(self, qkv: torch.Tensor) -> torch.Tensor:
        b, _, h, w = qkv.shape
        with torch.autocast(qkv.device.type, enabled=False):
            q, k, v = self._split(qkv)
            att = k.transpose(-1, -2) @ q
            att = att / (att.sum(dim=2, keepdim=True) + self.eps)
            out = v @ att
        return out.reshape(b, -1, h, w)


class EfficientViTBlock(nn.Module):
    """LiteMLA (global context) then MBConv (local), each with a residual connection."""

    def __init__(self, channels: int, *, dim: int, expand: int, scales: tuple[int, ...],
                 norm_layer: NormLayer, act_layer: ActLayer) -> None:
        super().__init__()
        self.context_module = Residual(LiteMLA(channels, dim=dim, scales=scales,
                                               norm_layer=norm_layer))
        self.local_module = Residual(MBConv(channels, channels, expand=expand, fewer_norm=True,
                                            norm_layer=norm_layer, act_layer=act_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))
