"""EfficientViT-L backbone, the SAM neck, and the image encoder that joins them."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import EncoderConfig
from .blocks import EfficientViTBlock, FusedMBConv, MBConv, ResBlock, Residual
from .layers import ActLayer, ConvNormAct, LayerNorm2d, NormLayer, gelu_tanh


class Sequence(nn.Module):
    """An ordered list of modules applied in turn, stored as ``op_list`` (official key name)."""

    def __init__(self, ops: list[nn.Module]) -> None:
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


def _local_block(kind: str, in_channels: int, out_channels: int, *, stride: int, expand: int,
                 fewer_norm: bool, norm_layer: NormLayer, act_layer: ActLayer) -> nn.Module:
    if kind == "res":
        return ResBlock(in_channels, out_channels, stride=stride, norm_layer=norm_layer,
                        act_layer=act_layer)
    block = FusedMBConv if kind == "fmb" else MBConv
    return block(in_channels, out_channels, stride=stride, expand=expand, fewer_norm=fewer_norm,
                 norm_layer=norm_layer, act_layer=act_layer)


class EfficientViTBackbone(nn.Module):
    """EfficientViT-L/XL backbone. ``forward`` returns every stage's output, stage 0 first."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        norm = partial(nn.BatchNorm2d, eps=cfg.norm_eps)
        act = gelu_tanh
        stem: list[nn.Module] = [ConvNormAct(3, cfg.widths[0], 3, stride=2, norm_layer=norm,
                                             act_layer=act)]
        stem += [Residual(ResBlock(cfg.widths[0], cfg.widths[0], norm_layer=norm, act_layer=act))
                 for _ in range(cfg.depths[0])]
        stages = [Sequence(stem)]
        in_ch = cfg.widths[0]
        for i in range(1, len(cfg.widths)):
            width, kind = cfg.widths[i], cfg.blocks[i]
            # Downsampling block: attention stages downsample with an MBConv; no shortcut.
            down = _local_block("mb" if kind == "att" else kind, in_ch, width, stride=2,
                                expand=cfg.expands[i] * 4, fewer_norm=cfg.fewer_norm[i],
                                norm_layer=norm, act_layer=act)
            ops: list[nn.Module] = [Residual(down, shortcut=False)]
            for _ in range(cfg.depths[i]):
                if kind == "att":
                    ops.append(EfficientViTBlock(width, dim=cfg.qkv_dim, expand=cfg.expands[i],
                                                 scales=cfg.attention_scales, norm_layer=norm,
                                                 act_layer=act))
                else:
                    ops.append(Residual(_local_block(kind, width, width, stride=1,
                                                     expand=cfg.expands[i],
                                                     fewer_norm=cfg.fewer_norm[i],
                                                     norm_layer=norm, act_layer=act)))
            stages.append(Sequence(ops))
            in_ch = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class Upsample(nn.Module):
    """Bicubic resize to ``size x size`` (a no-op when already that size)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        return F.interpolate(x.float(), size=(self.size, self.size), mode="bicubic",
                             align_corners=False).to(x.dtype)


class SamNeck(nn.Module):
    """Fuses three backbone stages into the ``out_dim x 64 x 64`` embedding.

    Each selected stage: 1x1 conv + BN, bicubic upsampling to 64x64; the three are summed, then a
    residual stack of FusedMBConv blocks and a 1x1 conv with bias.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        norm = partial(nn.BatchNorm2d, eps=cfg.norm_eps)
        self.stage_ids = cfg.neck_stages
        self.input_ops = nn.ModuleList(
            Sequence([ConvNormAct(cfg.widths[s], cfg.neck_width, 1, norm_layer=norm),
                      Upsample(cfg.embed_size)])
            for s in cfg.neck_stages
        )
        self.middle = Sequence([
            Residual(FusedMBConv(cfg.neck_width, cfg.neck_width, expand=cfg.neck_expand,
                                 fewer_norm=False, norm_layer=norm, act_layer=gelu_tanh))
            for _ in range(cfg.neck_depth)
        ])
        self.output_ops = nn.ModuleList(
            [Sequence([ConvNormAct(cfg.neck_width, cfg.out_dim, 1, bias=True)])])

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        feats = [op(stages[s]) for op, s in zip(self.input_ops, self.stage_ids, strict=True)]
        # Summed right to left, like the official code, so rounding matches too.
        x = feats[-1]
        for feat in reversed(feats[:-1]):
            x = feat + x
        return self.output_ops[0](self.middle(x))


class EfficientViTImageEncoder(nn.Module):
    """``B x 3 x S x S`` normalised image to ``B x out_dim x 64 x 64`` SAM embedding."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.img_size = cfg.input_size
        self.backbone = EfficientViTBackbone(cfg)
        self.neck = SamNeck(cfg)
        self.norm = LayerNorm2d(cfg.out_dim, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"encoder input must be Bx3x{self.img_size}x{self.img_size}, "
                             f"got {tuple(x.shape)}")
        return self.norm(self.neck(self.backbone(x)))
