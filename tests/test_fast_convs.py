"""Winograd F(4x4,3x3) and GEMM 1x1 convolutions against float64 and against nn.Conv2d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effvit_sam import build_sam
from effvit_sam.inference.convs import GemmConv1x1, WinogradConv3x3, convert_convs, winograd_weights
from effvit_sam.inference.fuse import fuse
from effvit_sam.inference.optimize import FastPathOptions

CL = torch.channels_last
_DEFAULTS = FastPathOptions()
# The default (measured) widths, passed as the fast path passes them.
L0_CONVERSION = {"winograd": True, "gemm_pointwise": True,
                 "winograd_min_channels": _DEFAULTS.winograd_min_channels,
                 "gemm_min_in_channels": _DEFAULTS.gemm_min_in_channels}


def _cl(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).contiguous(memory_format=CL)


def _rel_err(got: torch.Tensor, ref64: torch.Tensor) -> float:
    return ((got.double() - ref64).abs().max() / ref64.abs().max()).item()


@pytest.mark.parametrize("shape", [(1, 64, 64, 64, 64), (2, 8, 16, 13, 17), (1, 5, 3, 4, 4),
                                   (1, 3, 7, 1, 1), (2, 16, 24, 9, 8)])
@pytest.mark.parametrize("bias", [True, False])
def test_winograd_matches_float64_convolution(shape: tuple, bias: bool) -> None:
    b, cin, cout, h, w = shape
    torch.manual_seed(1)
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
    x = _cl(b, cin, h, w)
    with torch.no_grad():
        got = WinogradConv3x3(conv)(x)
        ref64 = F.conv2d(x.double(), conv.weight.double(),
                         conv.bias.double() if bias else None, padding=1)
        direct = conv(x)
    assert got.shape == ref64.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=CL)
    # F(4x4,3x3) rounding: ~1e-5 relative (direct float32: ~2e-6).
    assert _rel_err(got, ref64) < 5e-5
    assert _rel_err(direct, ref64) < 1e-5


def test_winograd_bias_position_reaches_every_output_pixel() -> None:
    from effvit_sam.inference.convs import _AT, _BIAS_POSITION

    at = torch.tensor(_AT, dtype=torch.float64)
    e = torch.zeros(36, dtype=torch.float64)
    e[_BIAS_POSITION] = 1.0
    assert torch.equal(at @ e.view(6, 6) @ at.t(), torch.ones(4, 4, dtype=torch.float64))


def test_winograd_weights_transform_the_filters() -> None:
    # A filter that is 1 at the centre makes G g G^T = (G[:,1])(G[:,1])^T per channel pair.
    w = torch.zeros(2, 3, 3, 3)
    w[1, 2, 1, 1] = 1.0
    u = winograd_weights(w)
    assert u.shape == (36, 3, 2)
    g1 = torch.tensor([0, -1 / 6, 1 / 6, 1 / 12, -1 / 12, 0], dtype=torch.float64)
    assert torch.allclose(u[:, 2, 1].double(), torch.outer(g1, g1).flatten(), atol=1e-7)
    assert u[:, :2].abs().max() == 0 and u[:, :, 0].abs().max() == 0
    with pytest.raises(ValueError, match="3 x 3"):
        winograd_weights(torch.zeros(2, 3, 5, 5))


def test_winograd_falls_back_to_the_conv_off_its_fast_path() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    wc = WinogradConv3x3(conv)
    nchw = torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        assert torch.equal(wc(nchw), conv(nchw))  # not channels-last: the conv itself
    # Under autograd: the conv itself, so gradients reach the original weight.
    x = nchw.contiguous(memory_format=CL).requires_grad_(True)
    wc(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    assert set(wc.state_dict()) == {"conv.weight", "conv.bias"}


@pytest.mark.parametrize("conv", [
    nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=2),
    nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.Conv2d(8, 8, 5, padding=2),
    nn.Conv2d(8, 8, 3, padding=0)])
def test_winograd_rejects_other_convolutions(conv: nn.Conv2d) -> None:
    assert not WinogradConv3x3.applies_to(conv)
    with pytest.raises(ValueError, match="stride-1, padding-1"):
        WinogradConv3x3(conv)


def test_gemm_pointwise_matches_the_conv() -> None:
    torch.manual_seed(3)
    conv = nn.Conv2d(96, 40, 1)
    x = _cl(2, 96, 7, 9)
    with torch.no_grad():
        got = GemmConv1x1(conv)(x)
        ref64 = F.conv2d(x.double(), conv.weight.double(), conv.bias.double())
    assert got.shape == (2, 40, 7, 9) and got.is_contiguous(memory_format=CL)
    assert _rel_err(got, ref64) < 1e-5
    with torch.no_grad():
        nchw = torch.randn(1, 96, 4, 4)
        assert torch.equal(GemmConv1x1(conv)(nchw), conv(nchw))
    assert not GemmConv1x1.applies_to(nn.Conv2d(96, 40, 1, groups=8))
    with pytest.raises(ValueError, match="1x1"):
        GemmConv1x1(nn.Conv2d(96, 40, 3))


def test_convert_convs_on_l0_picks_the_measured_kinds() -> None:
    enc = fuse(build_sam("l0").image_encoder)
    counts = convert_convs(enc, **L0_CONVERSION)
    # L0: the four neck FusedMBConvs, and the expansion convs of stages 1 and 2 (64->256 at
    # 128x128, 128->512 at 64x64); 1x1 convs reading >= 1024 channels: 15.
    assert counts == {"winograd": 6, "gemm_pointwise": 15}
    wino = [m.conv for m in enc.modules() if isinstance(m, WinogradConv3x3)]
    assert all(min(c.in_channels, c.out_channels) >= 64 for c in wino)
    gemm = [m.conv for m in enc.modules() if isinstance(m, GemmConv1x1)]
    assert all(c.in_channels >= 1024 for c in gemm)
    # Every remaining plain 3x3 stride-1 conv is narrower than 64 channels.
    rest = [m for m in enc.modules() if type(m) is nn.Conv2d and WinogradConv3x3.applies_to(m)
            and not any(m is c for c in wino)]
    assert rest and all(min(c.in_channels, c.out_channels) < 64 for c in rest)
    assert convert_convs(enc, **L0_CONVERSION) == {"winograd": 0, "gemm_pointwise": 0}


def _convs() -> nn.Sequential:
    # 3x3 convs of widths 16->32, 32->32, 32->24 and 1x1 convs reading 24 and 48 channels.
    return nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1),
                         nn.Conv2d(32, 24, 3, padding=1), nn.Conv2d(24, 48, 1),
                         nn.Conv2d(48, 8, 1))


@pytest.mark.parametrize("wino_min,gemm_min,expected", [
    (16, 24, (3, 2)), (17, 24, (2, 2)), (24, 25, (2, 1)), (25, 48, (1, 1)), (33, 49, (0, 0))])
def test_convert_convs_honours_the_widths(wino_min: int, gemm_min: int,
                                          expected: tuple[int, int]) -> None:
    seq = _convs()
    counts = convert_convs(seq, winograd=True, gemm_pointwise=True,
                           winograd_min_channels=wino_min, gemm_min_in_channels=gemm_min)
    assert (counts["winograd"], counts["gemm_pointwise"]) == expected
    wino = [m.conv for m in seq if isinstance(m, WinogradConv3x3)]
    assert all(min(c.in_channels, c.out_channels) >= wino_min for c in wino)
    assert sum(isinstance(m, GemmConv1x1) for m in seq) == expected[1]
    off = convert_convs(_convs(), winograd=False, gemm_pointwise=False,
                        winograd_min_channels=1, gemm_min_in_channels=1)
    assert off == {"winograd": 0, "gemm_pointwise": 0}
    with pytest.raises(ValueError, match="winograd_min_channels must be a positive int"):
        convert_convs(_convs(), winograd=True, gemm_pointwise=True, winograd_min_channels=0,
                      gemm_min_in_channels=1)


def test_fast_path_passes_its_widths_to_the_converter() -> None:
    from effvit_sam.inference.optimize import optimize_for_inference

    torch.manual_seed(4)
    tiny = build_sam("efficientvit-sam-tiny")

    def kinds(opts: FastPathOptions) -> tuple[int, int]:
        fast = optimize_for_inference(tiny, device="cpu", options=opts)
        return (sum(isinstance(m, WinogradConv3x3) for m in fast.modules()),
                sum(isinstance(m, GemmConv1x1) for m in fast.modules()))

    low = kinds(_DEFAULTS.with_(winograd_min_channels=8, gemm_min_in_channels=16))
    assert low[0] > 0 and low[1] > 0
    assert kinds(_DEFAULTS.with_(winograd_min_channels=10**6, gemm_min_in_channels=10**6)) \
        == (0, 0)
    narrower = kinds(_DEFAULTS.with_(winograd_min_channels=32, gemm_min_in_channels=64))
    assert narrower[0] < low[0] and narrower[1] < low[1]


def test_rewrites_fall_back_under_autocast() -> None:
    torch.manual_seed(5)
    conv, pw = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(32, 8, 1)
    x, y = _cl(1, 16, 8, 8), _cl(1, 32, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, ref = WinogradConv3x3(conv)(x), conv(x)
        got_pw, ref_pw = GemmConv1x1(pw)(y), pw(y)
    # The autocast conv itself (bf16), not a Winograd product in bf16.
    assert got.dtype == torch.bfloat16 and torch.equal(got, ref)
    assert got_pw.dtype == torch.bfloat16 and torch.equal(got_pw, ref_pw)
