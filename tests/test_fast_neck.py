"""The fused neck (upsample-and-sum by GEMMs) and the one-pass LayerNorm2d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from effvit_sam import build_sam
from effvit_sam.inference.fuse import fuse
from effvit_sam.inference.neck import (
    FusedLayerNorm2d,
    FusedSamNeck,
    add_resized_,
    fuse_neck,
    resize_matrix,
)
from effvit_sam.modeling.layers import LayerNorm2d

CL = torch.channels_last


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_in,n_out", [(16, 64), (32, 64), (5, 12), (64, 64), (8, 3)])
def test_resize_matrix_is_torch_bicubic(n_in: int, n_out: int) -> None:
    u = resize_matrix(n_in, n_out)
    assert u.shape == (n_out, n_in)
    x = _randn(2, 3, n_in, n_in, seed=1)
    ref = F.interpolate(x, size=(n_out, n_out), mode="bicubic", align_corners=False)
    assert torch.allclose(u @ x @ u.t(), ref, atol=2e-6)
    # Bicubic weights sum to one in every row (a constant image stays constant).
    assert torch.allclose(u.sum(dim=1), torch.ones(n_out), atol=1e-6)


def test_add_resized_accumulates_in_place() -> None:
    out = _randn(2, 6, 20, 24, seed=2).contiguous(memory_format=CL)
    x = _randn(2, 6, 5, 7, seed=3).contiguous(memory_format=CL)
    expected = out + F.interpolate(x, size=(20, 24), mode="bicubic", align_corners=False)
    ptr = out.data_ptr()
    got = add_resized_(out, x)
    assert got.data_ptr() == ptr
    assert torch.allclose(got, expected, atol=2e-6)


@pytest.fixture(scope="module")
def tiny_encoder():
    torch.manual_seed(0)
    return fuse(build_sam("efficientvit-sam-tiny").image_encoder)


def test_fused_neck_matches_the_neck(tiny_encoder) -> None:
    neck = tiny_encoder.neck
    fused = FusedSamNeck(neck)
    assert set(fused.state_dict()) == set(neck.state_dict())
    x = _randn(2, 3, 256, 256, seed=4)
    with torch.no_grad():
        stages = tiny_encoder.backbone(x)
        ref = neck(stages)
        got = fused([s.contiguous(memory_format=CL) for s in stages])
        again = fused(stages)  # NCHW: the reference computation itself
    assert (got - ref).abs().max().item() < 1e-5
    assert torch.equal(again, ref)


def test_fused_layernorm_matches_layernorm2d() -> None:
    norm = LayerNorm2d(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(_randn(16, seed=5))
        norm.bias.copy_(_randn(16, seed=6))
    fused = FusedLayerNorm2d(norm)
    x = _randn(2, 16, 9, 11, seed=7) * 3 + 1
    with torch.no_grad():
        ref = norm(x)
        for inp in (x, x.contiguous(memory_format=CL)):
            assert (fused(inp) - ref).abs().max().item() < 1e-5
        half = fused(x.bfloat16())
    assert half.dtype == torch.bfloat16
    assert (half.float() - norm(x.bfloat16()).float()).abs().max().item() < 3e-2


def test_fuse_neck_swaps_modules_and_keeps_outputs() -> None:
    torch.manual_seed(1)
    enc = fuse(build_sam("efficientvit-sam-tiny").image_encoder)
    x = _randn(1, 3, 256, 256, seed=8)
    with torch.no_grad():
        ref = enc(x)
        fuse_neck(enc)
        got = enc.to(memory_format=CL)(x.contiguous(memory_format=CL))
    assert isinstance(enc.neck, FusedSamNeck) and isinstance(enc.norm, FusedLayerNorm2d)
    assert (got - ref).abs().max().item() < 1e-5
    with pytest.raises(TypeError, match="EfficientViTImageEncoder"):
        fuse_neck(enc.neck)


def test_resize_matrix_cache_is_bounded() -> None:
    from effvit_sam.inference import neck as fast_neck

    fast_neck._cached_resize_matrix.cache_clear()
    first = resize_matrix(6, 12)
    assert resize_matrix(6, 12) is first  # cached
    assert resize_matrix(6, 12, dtype=torch.float64) is not first  # keyed by dtype too
    for n in range(2, 2 + 3 * fast_neck.RESIZE_CACHE_SIZE):
        resize_matrix(n, 64)
    info = fast_neck._cached_resize_matrix.cache_info()
    assert info.currsize == info.maxsize == fast_neck.RESIZE_CACHE_SIZE
    again = resize_matrix(6, 12)  # evicted and rebuilt, same values
    assert again is not first and torch.equal(again, first)


def test_fused_neck_under_autocast_resizes_in_float32(tiny_encoder) -> None:
    neck = tiny_encoder.neck
    fused = FusedSamNeck(neck)
    x = _randn(2, 3, 256, 256, seed=9)
    seen: list[tuple[str, torch.dtype]] = []

    class Record(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = getattr(func, "__name__", "")
            if name in ("baddbmm_", "matmul", "conv2d") and isinstance(out, torch.Tensor):
                seen.append((name, out.dtype))
            return out

    with torch.no_grad():
        stages = [s.contiguous(memory_format=CL) for s in tiny_encoder.backbone(x)]
        ref = neck(stages)  # float32 reference
        with torch.autocast("cpu", dtype=torch.bfloat16), Record():
            got = fused(stages)
    assert {d for n, d in seen if n in ("baddbmm_", "matmul")} == {torch.float32}
    assert {d for n, d in seen if n == "conv2d"} == {torch.bfloat16}
    assert got.dtype == torch.bfloat16
    assert ((got.float() - ref).norm() / ref.norm()).item() < 5e-2
