"""BatchNorm folding: fused equals unfused (eval mode) with randomised BN statistics."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from effvit_sam import build_sam, list_models
from effvit_sam.inference.fuse import fuse, fuse_conv_bn, fuse_model
from effvit_sam.modeling.blocks import EfficientViTBlock, FusedMBConv, LiteMLA, MBConv, ResBlock
from effvit_sam.modeling.encoder import SamNeck
from effvit_sam.modeling.layers import ConvNormAct, gelu_tanh

NORM = partial(nn.BatchNorm2d, eps=1e-6)


def randomise_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                n = bn.num_features
                bn.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                bn.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                bn.weight.copy_(torch.rand(n, generator=g) * 1.0 + 0.5)
                bn.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return module.eval()


def count_bn(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def test_fuse_conv_bn_hand_computed() -> None:
    conv = nn.Conv2d(1, 2, 1, bias=True)
    bn = nn.BatchNorm2d(2, eps=0.0).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([1.0, 0.0]))
        bn.running_mean.copy_(torch.tensor([3.0, 1.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25]))
        bn.weight.copy_(torch.tensor([1.0, 2.0]))
        bn.bias.copy_(torch.tensor([0.5, -1.0]))
    fused = fuse_conv_bn(conv, bn)
    # channel 0: (2x + 1 - 3) / 2 + 0.5 = x - 0.5 ; channel 1: (-x - 1) / 0.5 * 2 - 1 = -4x - 5
    assert fused.weight.flatten().tolist() == [1.0, -4.0]
    assert fused.bias.tolist() == [-0.5, -5.0]


def test_fuse_conv_bn_rejects_mismatch() -> None:
    with pytest.raises(ValueError, match="features"):
        fuse_conv_bn(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(5))
    with pytest.raises(TypeError):
        fuse_conv_bn(nn.Linear(3, 4), nn.BatchNorm2d(4))


BLOCKS = {
    "ConvNormAct": lambda: ConvNormAct(8, 16, 3, stride=2, norm_layer=NORM, act_layer=gelu_tanh),
    "ResBlock": lambda: ResBlock(8, 16, norm_layer=NORM, act_layer=gelu_tanh),
    "FusedMBConv": lambda: FusedMBConv(8, 16, expand=4, fewer_norm=False, norm_layer=NORM,
                                       act_layer=gelu_tanh),
    "MBConv": lambda: MBConv(8, 16, stride=2, expand=4, fewer_norm=False, norm_layer=NORM,
                             act_layer=gelu_tanh),
    "MBConv-fewer-norm": lambda: MBConv(8, 8, expand=4, fewer_norm=True, norm_layer=NORM,
                                        act_layer=gelu_tanh),
    "LiteMLA": lambda: LiteMLA(16, dim=8, scales=(5,), norm_layer=NORM),
    "EfficientViTBlock": lambda: EfficientViTBlock(16, dim=8, expand=4, scales=(3,),
                                                   norm_layer=NORM, act_layer=gelu_tanh),
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_fuse_block_matches_unfused(name: str) -> None:
    block = randomise_bn(BLOCKS[name]())
    channels = 8 if name not in ("LiteMLA", "EfficientViTBlock") else 16
    x = torch.randn(2, channels, 12, 12, generator=torch.Generator().manual_seed(1))
    fused = fuse(block)
    assert count_bn(fused) == 0
    assert count_bn(block) > 0, "the original must be untouched"
    with torch.no_grad():
        expected, got = block(x), fused(x)
    assert expected.abs().max() > 0.1  # a non-degenerate output
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_fuse_neck_matches_unfused() -> None:
    cfg = build_sam("efficientvit-sam-tiny").config.encoder
    neck = randomise_bn(SamNeck(cfg))
    g = torch.Generator().manual_seed(2)
    stages = [torch.randn(1, w, 256 // 2 ** (i + 1), 256 // 2 ** (i + 1), generator=g)
              for i, w in enumerate(cfg.widths)]
    with torch.no_grad():
        expected, got = neck(stages), fuse(neck)(stages)
    torch.testing.assert_close(got, expected, atol=5e-5, rtol=1e-5)


def test_fuse_keeps_original_and_returns_eval_copy() -> None:
    model = build_sam("efficientvit-sam-tiny").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_model(model)
    assert fused is not model and not fused.training and model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert count_bn(fused) == 0
    import effvit_sam

    assert effvit_sam.fuse_model is fuse_model  # the package-level name issue #2 promises
    with pytest.raises(TypeError):
        fuse("not a module")  # type: ignore[arg-type]


# Real variants run the encoder's own modules (backbone, neck, final norm) on a smaller image to
# keep the suite fast: the same layers and the same (linear) attention path, since the last stage
# still has 6 x 6 = 36 tokens, more than ``qkv_dim`` = 32. The tiny model and L0 run ``encode``
# at their full input size.
FULL_SIZE = ("efficientvit-sam-tiny", "efficientvit-sam-l0")


def _embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    enc = model.image_encoder
    if x.shape[-1] == enc.img_size:
        return model.encode(x)
    return enc.norm(enc.neck(enc.backbone(x)))


@pytest.mark.parametrize("variant", list_models())
def test_fuse_variant_embeddings(variant: str) -> None:
    torch.manual_seed(0)
    model = randomise_bn(build_sam(variant), seed=3)
    fused = fuse_model(model)
    # The last stage has stride 32 (L) or 64 (XL): 192 / 32 = 384 / 64 = 6.
    full = variant in FULL_SIZE or model.encoder_size < 512  # small made-data configs
    size = model.encoder_size if full else 6 * 32 * (model.encoder_size // 512)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected, got = _embed(model, x), _embed(fused, x)
    assert count_bn(fused) == 0
    assert expected.shape[-2:] == (64, 64) and expected.std() > 0.1
    assert (got - expected).abs().max().item() < 1e-3
