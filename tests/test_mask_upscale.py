"""The compiled mask upscaling (``effvit_sam.inference.mask_upscale``) against ATen's."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from segment_anything.utils.amg import calculate_stability_score

from effvit_sam import EfficientViTSamPredictor, geometry
from effvit_sam.inference import mask_upscale
from effvit_sam.tools.env import mask_upscale_line

needs_numba = pytest.mark.skipif(not mask_upscale.available(),
                                 reason=f"numba: {mask_upscale.unavailable_reason()}")


@pytest.fixture
def two_threads():
    """ATen's multi-threaded bilinear kernel (the one SAM's masks take with > 1 thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _logits(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 4


@needs_numba
def test_taps_are_atens_weights() -> None:
    i0, i1, w0, w1 = mask_upscale.bilinear_taps(256, 1024)
    # x4: output 4i+k reads inputs (i-1, i) or (i, i+1) at 1/8-step weights; borders clamp
    assert i0[:8].tolist() == [0] * 6 + [1, 1] and i1[:8].tolist() == [1] * 6 + [2, 2]
    assert w1[:8].tolist() == [0.0, 0.0, 0.125, 0.375, 0.625, 0.875, 0.125, 0.375]
    assert (i0[-2:] == 255).all() and (i1[-2:] == 255).all() and w1[-1] == 0.375
    assert np.array_equal(w0 + w1, np.ones(1024, np.float32))
    # a ratio that is no power of two: the same probe decides, and both taps stay in range
    i0, i1, w0, w1 = mask_upscale.bilinear_taps(683, 1500)
    assert i0.min() == 0 and i1.max() == 682 and ((w0 >= 0) & (w1 <= 1)).all()
    with pytest.raises(ValueError):
        i0[0] = 1  # cached and shared: read-only


@needs_numba
@pytest.mark.parametrize("shape,input_size,original_size", [
    ((4, 3, 256, 256), (768, 1024), (768, 1024)),    # one resize (the crop is the image)
    ((2, 1, 256, 256), (1024, 771), (1024, 771)),    # odd width: a partial last low-res column
    ((2, 3, 256, 256), (768, 1024), (600, 800)),     # two resizes, downscaling
    ((1, 1, 256, 256), (1024, 683), (1500, 1000)),   # two resizes, upscaling; bands of rows
    ((3, 1, 64, 64), (256, 192), (480, 360)),           # another frame and low-res size
])
def test_masks_equal_atens_bit_for_bit(two_threads, shape, input_size, original_size) -> None:
    low = _logits(*shape)
    frame = 1024 if shape[-1] == 256 else 256
    for threshold in (0.0, 0.7):
        want = geometry.postprocess_masks(low, input_size, original_size, frame) > threshold
        got = mask_upscale.upscale_to_masks(low, input_size, original_size, frame, threshold)
        assert got.dtype == torch.bool and got.shape == want.shape
        assert torch.equal(got, want)
        assert 0.2 < got.float().mean() < 0.8  # both sides of the threshold were exercised


@needs_numba
def test_one_thread_and_one_mask_per_prompt(monkeypatch) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # one channel takes ATen's generic kernel with one thread too
        low = _logits(5, 1, 256, 256, seed=3)
        want = geometry.postprocess_masks(low, (1024, 1024), (1024, 1024)) > 0
        assert torch.equal(mask_upscale.upscale_to_masks(low, (1024, 1024), (1024, 1024),
                                                         1024, 0.0), want)
    finally:
        torch.set_num_threads(before)


@needs_numba
def test_counts_are_sams_stability_inputs(two_threads) -> None:
    low = _logits(6, 256, 256, seed=1)
    masks, counts = mask_upscale.upscale_to_masks(low, (768, 1024), (600, 800), 1024, 0.0,
                                                  count_above=(1.0, -1.0))
    logits = geometry.postprocess_masks(low[:, None], (768, 1024), (600, 800))[:, 0]
    assert torch.equal(masks, logits > 0)
    assert counts.tolist() == [[int((m > 1).sum()), int((m > -1).sum())] for m in logits]
    stability = counts[:, 0].to(torch.int32) / counts[:, 1].to(torch.int32)
    assert torch.equal(stability, calculate_stability_score(logits, 0.0, 1.0))


@needs_numba
def test_what_it_declines_and_empty_input() -> None:
    low = _logits(2, 1, 256, 256)
    args = ((768, 1024), (768, 1024), 1024, 0.0)
    assert mask_upscale.upscale_to_masks(low.double(), *args) is None
    assert mask_upscale.upscale_to_masks(low.requires_grad_(), *args) is None
    assert mask_upscale.upscale_to_masks(_logits(2, 256, 128), *args) is None  # not square
    empty = mask_upscale.upscale_to_masks(torch.zeros(0, 3, 256, 256), *args)
    assert empty.shape == (0, 3, 768, 1024) and empty.dtype == torch.bool


@needs_numba
def test_concurrent_callers_get_their_own_masks(two_threads) -> None:
    lows = [_logits(8, 1, 256, 256, seed=s) for s in range(4)]
    want = [geometry.postprocess_masks(x, (768, 1024), (768, 1024)) > 0 for x in lows]
    got = [None] * 4

    def work(i: int) -> None:
        got[i] = mask_upscale.upscale_to_masks(lows[i], (768, 1024), (768, 1024), 1024, 0.0)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


@needs_numba
def test_the_fast_predictor_uses_it_and_keeps_sams_masks(two_threads, tiny_model,
                                                         monkeypatch) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 420, 3), dtype=np.uint8)
    fast = EfficientViTSamPredictor(tiny_model)
    plain = EfficientViTSamPredictor(tiny_model, fast=False)
    for p in (fast, plain):
        p.set_image(image)
    boxes = np.array([[10, 20, 200, 250], [100, 50, 400, 290]])
    calls = []
    real = mask_upscale.upscale_to_masks
    monkeypatch.setattr(mask_upscale, "upscale_to_masks",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    masks, _, low = fast.predict(boxes=boxes)
    assert calls, "the fast predictor did not take the compiled upscaling"
    want = plain.upscale(plain._single(), torch.as_tensor(low))
    assert np.array_equal(masks, want.numpy())
    logits = fast.predict(boxes=boxes, return_logits=True)[0]  # logits: ATen's path
    assert logits.dtype == np.float32 and np.array_equal(logits > 0, masks)


@needs_numba
def test_env_names_the_upscaling() -> None:
    assert mask_upscale_line().startswith("mask upscaling (CPU): compiled")


def test_without_numba_the_aten_path_gives_the_masks(tmp_path) -> None:
    script = tmp_path / "no_numba.py"
    script.write_text("""
import sys
sys.modules["numba"] = None  # import numba now raises ImportError, as where it is missing
import torch
from effvit_sam import geometry
from effvit_sam.inference import mask_upscale
from effvit_sam.tools.env import mask_upscale_line
assert not mask_upscale.available()
low = torch.randn(2, 1, 256, 256)
assert mask_upscale.upscale_to_masks(low, (768, 1024), (768, 1024), 1024, 0.0) is None
print(mask_upscale_line())
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("mask upscaling (CPU): ATen's interpolate, then a threshold (numba "
                          "unavailable: ModuleNotFoundError: import of numba halted")
