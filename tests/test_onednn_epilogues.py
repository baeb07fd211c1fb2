"""oneDNN's fused convolution epilogues (``FastPathOptions.onednn_epilogues``) against the
unfused conv, add and activation, and the bf16 encoder's weights stored in bf16."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from effvit_sam import build_sam
from effvit_sam.inference.convs import WinogradConv3x3
from effvit_sam.inference.epilogue import (
    FusedConv,
    onednn_bf16_conv_available,
    onednn_conv_available,
    use_onednn_epilogues,
)
from effvit_sam.inference.optimize import FastPathOptions, optimize_for_inference

from .test_fastpath import TINY_THRESHOLDS, _check_against_eager, _inputs
from .test_fuse import randomise_bn

pytestmark = pytest.mark.skipif(not onednn_conv_available(),
                                reason="this torch build has no oneDNN convolution")


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    torch.manual_seed(cin * 7 + cout + k + stride + groups)
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups).eval()


ACTS = {"gelu_tanh": nn.GELU(approximate="tanh"), "gelu_erf": nn.GELU(), "relu": nn.ReLU(),
        "identity": nn.Identity()}


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("shape,residual", [
    ((16, 32, 1, 1, 1), False), ((32, 32, 1, 1, 1), True), ((16, 16, 3, 1, 16), False),
    ((16, 16, 3, 1, 16), True), ((8, 24, 3, 2, 1), False),
], ids=["pointwise", "pointwise_residual", "depthwise", "depthwise_residual", "strided"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_conv_matches_the_unfused_ops(act: str, shape: tuple, residual: bool,
                                            channels_last: bool) -> None:
    cin, cout, k, stride, groups = shape
    conv = _conv(cin, cout, k, stride, groups)
    x = torch.randn(2, cin, 20, 20, generator=torch.Generator().manual_seed(1))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    res = torch.randn(2, cout, 20, 20, generator=torch.Generator().manual_seed(2)) \
        .contiguous(memory_format=fmt) if residual else None
    with torch.no_grad():
        expected = ACTS[act](conv(x) + res if residual else conv(x))
        fused = FusedConv(conv, ACTS[act])
        assert use_onednn_epilogues(fused) == 1 and fused.post_op is not None
        res_before = res.clone() if residual else None
        got = fused(x, residual=res)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).abs().max().item() < 1e-5
    assert got.abs().max().item() > 0.1  # not a degenerate all-zero output
    if residual:
        assert torch.equal(res, res_before)  # the shortcut is read, never written


def test_autograd_falls_back_to_the_unfused_ops() -> None:
    conv = _conv(8, 8, 3)
    fused = FusedConv(conv, nn.GELU(approximate="tanh"))
    use_onednn_epilogues(fused)
    x = torch.randn(1, 8, 10, 10, requires_grad=True)
    out = fused(x)
    out.sum().backward()  # the oneDNN op has no backward: only the fallback can do this
    assert x.grad is not None and x.grad.abs().sum().item() > 0


def test_rewritten_convs_keep_their_own_path() -> None:
    wide = FusedConv(_conv(64, 64, 3), nn.GELU(approximate="tanh"))
    wide.conv = WinogradConv3x3(wide.conv)
    plain = FusedConv(_conv(16, 32, 1), nn.ReLU())
    model = nn.Sequential(wide, plain)
    assert use_onednn_epilogues(model) == 1
    assert wide.post_op is None and plain.post_op == ("relu", None)


@pytest.mark.parametrize("exact_rewrites", [True, False], ids=["with_rewrites", "plain_convs"])
def test_float32_encoder_with_onednn_epilogues_stays_exact(tiny, exact_rewrites: bool) -> None:
    opts = FastPathOptions.exact("cpu").with_(onednn_epilogues=True, compiled_gelu=False,
                                              **TINY_THRESHOLDS)
    if not exact_rewrites:
        opts = opts.with_(winograd=False, gemm_pointwise=False)
    _check_against_eager(tiny, opts, 1e-4)


def test_bf16_encoder_stores_conv_weights_in_bf16(tiny) -> None:
    fast = optimize_for_inference(tiny, device="cpu",
                                  options=FastPathOptions.bf16().with_(compiled_gelu=False))
    convs = [m for m in fast.image_encoder.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.dtype == torch.bfloat16 for c in convs)
    assert all(c.bias is None or c.bias.dtype == torch.bfloat16 for c in convs)
    norms = [p for n, p in fast.image_encoder.named_parameters() if "norm" in n]
    assert norms and all(p.dtype == torch.float32 for p in norms)  # LayerNorm stays float32
    # The source model is untouched, and the result is the same as casting inside autocast.
    assert all(p.dtype == torch.float32 for p in tiny.parameters())
    x = _inputs(tiny, 1)
    opts = FastPathOptions.bf16().with_(compiled_gelu=False, onednn_epilogues=False)
    stored = optimize_for_inference(tiny, device="cpu", options=opts)
    recast = optimize_for_inference(tiny, device="cpu", options=opts)
    for m in recast.image_encoder.modules():  # undo the stored cast: autocast casts each call
        if isinstance(m, nn.Conv2d):
            m.weight.data = m.weight.data.float()
            if m.bias is not None:
                m.bias.data = m.bias.data.float()
    assert torch.equal(stored.encode(x), recast.encode(x))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomise_bn(build_sam("efficientvit-sam-tiny"), seed=5)


def test_compiled_graphs_get_the_plain_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torch.compile inductor fuses the epilogues itself; a oneDNN call per conv would
    break its graph at every layer."""
    fused = FusedConv(_conv(8, 16, 1), nn.GELU(approximate="tanh"))
    use_onednn_epilogues(fused)
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        expected = fused(x)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        monkeypatch.setattr(FusedConv, "_onednn", lambda *a: pytest.fail("oneDNN path taken"))
        got = fused(x)
    assert (got - expected).abs().max().item() < 1e-5


NO_BF16_CONV = pytest.mark.skipif(not onednn_bf16_conv_available(),
                                  reason="oneDNN has no bf16 convolution on this CPU")


def test_bf16_epilogues_refused_where_onednn_has_no_bf16_conv(tiny, monkeypatch) -> None:
    """On a CPU whose oneDNN refuses bf16 convolutions (AVX2 only), bf16() leaves the fused
    epilogues off, and asking for them stops with a message instead of oneDNN's error at the
    first image."""
    from effvit_sam.inference import optimize

    monkeypatch.setattr(optimize, "onednn_bf16_conv_available", lambda: False)
    assert not FastPathOptions.bf16().onednn_epilogues
    with pytest.raises(ValueError, match="AVX-512 BW/VL/DQ or AVX-NE-CONVERT"):
        optimize_for_inference(tiny, device="cpu", options=FastPathOptions.bf16().with_(
            onednn_epilogues=True))
    fast = optimize_for_inference(tiny, device="cpu", options=FastPathOptions.bf16().with_(
        compiled_gelu=False))  # plain bf16 convs: runs on any CPU
    x = _inputs(tiny, 1)
    with torch.no_grad():
        expected = tiny.encode(x)
    got = fast.encode(x)
    assert 1e-5 < ((got - expected).norm() / expected.norm()).item() < 5e-2


def test_the_bf16_probe_matches_oneDNN_itself() -> None:
    x = torch.randn(1, 8, 4, 4).to(memory_format=torch.channels_last).bfloat16()
    w = torch.randn(8, 8, 1, 1).bfloat16()
    try:
        torch.ops.mkldnn._convolution_pointwise(x, w, None, [0, 0], [1, 1], [1, 1], 1, "none",
                                                [], None)
        runs = True
    except RuntimeError:
        runs = False
    assert onednn_bf16_conv_available() is runs


@NO_BF16_CONV
@pytest.mark.slow
def test_compiled_bf16_encoder_with_onednn_epilogues(tiny) -> None:
    """auto + compile on an AMX CPU: inductor compiles the plain ops of the bf16 encoder in one
    graph (no recompilation per conv) and stays as close to float32 as the eager bf16 path."""
    import torch._dynamo

    torch._dynamo.reset()
    opts = FastPathOptions.bf16().with_(compiled_gelu=False, onednn_epilogues=True)
    x = _inputs(tiny, 1)
    with torch.no_grad():
        expected = tiny.encode(x)
    eager_bf16 = optimize_for_inference(tiny, device="cpu", options=opts).encode(x)
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = optimize_for_inference(tiny, device="cpu", options=opts.with_(compile=True))
    got = compiled.encode(x)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    rel = ((got - expected).norm() / expected.norm()).item()
    assert 1e-5 < rel < 5e-2
    assert ((got - eager_bf16).norm() / expected.norm()).item() < 2e-2
