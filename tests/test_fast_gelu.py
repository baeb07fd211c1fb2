"""The compiled in-place tanh GELU: same function as PyTorch's, a loud fallback."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from effvit_sam import build_sam
from effvit_sam.inference import gelu as fast_gelu
from effvit_sam.inference.epilogue import FusedConv, use_compiled_gelu
from effvit_sam.inference.optimize import FastPathOptions, optimize_for_inference

needs_compiler = pytest.mark.skipif(not fast_gelu.cxx_compiler_available(),
                                    reason="inductor needs a C++ compiler")


@needs_compiler
@pytest.mark.parametrize("shape,channels_last", [((2, 16, 9, 7), True), ((1, 8, 33, 5), False),
                                                 ((1000,), False)])
def test_compiled_gelu_matches_torch_in_place(shape: tuple, channels_last: bool) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 4
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = F.gelu(x, approximate="tanh")
    ptr = x.data_ptr()
    out = fast_gelu.gelu_tanh_(x)
    assert out.data_ptr() == ptr and torch.equal(out, x)
    assert (out - expected).abs().max().item() < 2e-6
    assert not fast_gelu._state["failed"]


def test_a_failed_compile_warns_and_falls_back(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    def broken(t: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setitem(fast_gelu._state, "fn", broken)
    monkeypatch.setitem(fast_gelu._state, "failed", False)
    x = torch.randn(3, 5)
    expected = F.gelu(x, approximate="tanh")
    with caplog.at_level(logging.WARNING, logger="effvit_sam.inference.gelu"):
        out = fast_gelu.gelu_tanh_(x)
    assert torch.equal(out, expected)  # PyTorch's own kernel
    assert fast_gelu._state["failed"] and "no C++ compiler found" in caplog.text
    y = torch.randn(4)
    assert torch.equal(fast_gelu.gelu_tanh_(y.clone()), F.gelu(y, approximate="tanh"))


@needs_compiler
def test_fast_path_option_switches_the_epilogues() -> None:
    torch.manual_seed(0)
    model = build_sam("efficientvit-sam-tiny").eval()
    opts = FastPathOptions.eager().with_(fuse_epilogues=True, compiled_gelu=True)
    fast = optimize_for_inference(model, options=opts)
    convs = [m for m in fast.modules() if isinstance(m, FusedConv)]
    assert sum(m._act_ is fast_gelu.gelu_tanh_ for m in convs) > 0
    assert use_compiled_gelu(fast) == sum(m._act_ is fast_gelu.gelu_tanh_ for m in convs)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.encode(x)
    assert (fast.encode(x) - expected).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match="compiled_gelu runs in the in-place epilogues"):
        FastPathOptions.eager().with_(compiled_gelu=True)
    assert FastPathOptions.auto("cpu").compiled_gelu == fast_gelu.cxx_compiler_available()
    assert not FastPathOptions.auto("cuda").compiled_gelu
