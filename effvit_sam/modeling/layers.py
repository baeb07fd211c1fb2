"""Basic layers shared by the EfficientViT blocks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[], nn.Module]


def gelu_tanh() -> nn.Module:
    """The official models use the tanh approximation of GELU."""
    return nn.GELU(approximate="tanh")


class ConvNormAct(nn.Module):
    """Conv2d -> optional norm -> optional activation, with 'same' padding.

    Submodule names (``conv``, ``norm``) match the official checkpoints.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *,
                 stride: int = 1, groups: int = 1, bias: bool = False,
                 norm_layer: NormLayer | None = None, act_layer: ActLayer | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, groups=groups, bias=bias)
        self.norm = norm_layer(out_channels) if norm_layer is not None else nn.Identity()
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a ``B x C x H x W`` tensor (keys ``weight``, ``bias``)."""

    def __init__(self, channels: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Computed in float32 whatever the autocast dtype: the official model keeps norms in fp32.
        dtype = x.dtype
        x = x.float()
        x = x - x.mean(dim=1, keepdim=True)
        x = x / torch.sqrt(x.square().mean(dim=1, keepdim=True) + self.eps)
        x = x * self.weight.float().view(1, -1, 1, 1) + self.bias.float().view(1, -1, 1, 1)
        return x.to(dtype)
