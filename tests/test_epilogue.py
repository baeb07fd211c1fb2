"""Epilogue fusion: in-place activation and residual add, bit-identical to the unfused ops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from effvit_sam import build_sam
from effvit_sam.inference.epilogue import FusedConv, FusedResidual, fuse_epilogues
from effvit_sam.inference.fuse import fuse, fuse_model
from effvit_sam.modeling.blocks import FusedMBConv, MBConv, ResBlock, Residual
from effvit_sam.modeling.layers import ConvNormAct, gelu_tanh

from .test_fuse import NORM, randomise_bn


def _folded(module: nn.Module) -> nn.Module:
    return fuse(randomise_bn(module))


@pytest.mark.parametrize("block", [
    lambda: ResBlock(8, 8, norm_layer=NORM, act_layer=gelu_tanh),
    lambda: FusedMBConv(8, 8, expand=4, fewer_norm=False, norm_layer=NORM, act_layer=gelu_tanh),
    lambda: MBConv(8, 8, expand=4, fewer_norm=True, norm_layer=NORM, act_layer=gelu_tanh),
], ids=["ResBlock", "FusedMBConv", "MBConv"])
def test_residual_blocks_are_bit_identical(block) -> None:
    folded = _folded(Residual(block()))
    fused = fuse_model(folded, epilogues=True)
    assert isinstance(fused, FusedResidual)
    assert all(isinstance(layer, FusedConv) for layer in fused.layers)
    x = torch.randn(2, 8, 10, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = folded(x)
        got = fused(x)
    assert expected.abs().max() > 0.1
    assert torch.equal(got, expected)  # same kernels, same order: not just close
    assert torch.equal(x, torch.randn(2, 8, 10, 10, generator=torch.Generator().manual_seed(0)))


def test_activation_runs_in_the_conv_output_buffer() -> None:
    layer = FusedConv.from_conv_norm_act(ConvNormAct(4, 4, 1, bias=True, act_layer=gelu_tanh))
    produced = []
    layer.conv.register_forward_hook(lambda m, a, out: produced.append(out))
    x = torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        out = layer(x)
    assert out is produced[0]  # no new tensor: the GELU wrote into the conv's output
    expected = nn.functional.gelu(layer.conv(x), approximate="tanh")
    assert torch.equal(out, expected)


def test_autograd_falls_back_to_out_of_place() -> None:
    model = build_sam("efficientvit-sam-tiny").eval()
    fused = fuse_model(model)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = fused.image_encoder(x)
    out = fused.image_encoder(x)  # grad enabled, parameters require grad
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    out.square().mean().backward()
    grads = [p.grad for p in fused.image_encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_whole_model_converted_and_equal_to_folding_alone() -> None:
    model = randomise_bn(build_sam("efficientvit-sam-tiny"))
    folded, fused = fuse(model), fuse_model(model)
    n_convs = sum(isinstance(m, ConvNormAct) for m in folded.image_encoder.modules())
    assert not any(isinstance(m, ConvNormAct) for m in fused.image_encoder.modules())
    assert sum(isinstance(m, FusedConv) for m in fused.image_encoder.modules()) == n_convs
    assert sum(isinstance(m, FusedResidual) for m in fused.image_encoder.modules()) > 0
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(fused.encode(x), folded.encode(x))


def test_unfolded_norm_and_unknown_activation_are_refused() -> None:
    with pytest.raises(ValueError, match="fold the BatchNorm"):
        FusedConv.from_conv_norm_act(ConvNormAct(4, 4, norm_layer=NORM))
    with pytest.raises(ValueError, match="in-place form"):
        FusedConv(nn.Conv2d(4, 4, 1), nn.Sigmoid())
    # A module with a BatchNorm left is converted only where the norm is gone.
    block = MBConv(8, 8, expand=2, fewer_norm=True, norm_layer=NORM, act_layer=gelu_tanh)
    assert fuse_epilogues(block) is block
    assert isinstance(block.inverted_conv, FusedConv) and isinstance(block.depth_conv, FusedConv)
    assert isinstance(block.point_conv, ConvNormAct)  # its BatchNorm is still there
    assert not isinstance(fuse_epilogues(Residual(block)), FusedResidual)
