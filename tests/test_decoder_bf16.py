"""The opt-in bf16 fast decoder (``FastPathOptions.decoder_dtype``) and the decoder and
predictor under a caller's own ``torch.autocast``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

from effvit_sam import EfficientViTSamPredictor, build_sam
from effvit_sam.inference.decoder import FastMaskDecoder
from effvit_sam.inference.optimize import FastPathOptions


@pytest.fixture(scope="module")
def decoder_and_prompts():
    torch.manual_seed(0)
    decoder = MaskDecoder(transformer_dim=64, transformer=TwoWayTransformer(
        depth=2, embedding_dim=64, num_heads=4, mlp_dim=256), num_multimask_outputs=3,
        iou_head_depth=3, iou_head_hidden_dim=64).eval()
    pe = PromptEncoder(embed_dim=64, image_embedding_size=(64, 64),
                       input_image_size=(1024, 1024), mask_in_chans=16).eval()
    gen = torch.Generator().manual_seed(1)
    points = (torch.rand(24, 2, 2, generator=gen) * 1024, torch.randint(0, 2, (24, 2),
                                                                       generator=gen))
    image = torch.randn(1, 64, 64, 64, generator=gen)
    with torch.inference_mode():
        sparse, dense = pe(points=points, boxes=None, masks=None)
    return decoder, (image, pe.get_dense_pe(), sparse, dense)


def test_bf16_decoder_is_close_to_float32_and_returns_float32(decoder_and_prompts):
    decoder, (image, pe, sparse, dense) = decoder_and_prompts
    with torch.inference_mode():
        want, want_iou = decoder(image, pe, sparse, dense, True)
        got, got_iou = FastMaskDecoder(decoder, autocast_dtype=torch.bfloat16)(
            image, pe, sparse, dense, True)
        kept, kept_iou, index = FastMaskDecoder(decoder, autocast_dtype=torch.bfloat16)\
            .forward_kept(image, pe, sparse, dense, True, iou_threshold=-1.0)
    assert got.dtype == got_iou.dtype == kept.dtype == torch.float32
    diff = float((got - want).abs().max())
    assert 1e-4 < diff < 0.25 * float(want.abs().max())  # really bf16, and close
    assert ((got > 0) == (want > 0)).float().mean() > 0.98
    assert float((got_iou - want_iou).abs().max()) < 0.05
    assert torch.equal(kept, got.flatten(0, 1)[index])  # the same numbers, kept or not
    assert torch.equal(kept_iou, got_iou.flatten()[index])


def test_fast_decoder_runs_under_a_callers_autocast(decoder_and_prompts):
    # The in-place update of the image tokens must not meet autocast's bf16 products.
    decoder, (image, pe, sparse, dense) = decoder_and_prompts
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, iou = FastMaskDecoder(decoder)(image, pe, sparse, dense, False)
    assert logits.shape == (24, 1, 256, 256) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all() and torch.isfinite(iou).all()


def test_decoder_dtype_is_checked():
    with pytest.raises(ValueError, match="decoder_dtype must be one of"):
        FastPathOptions(decoder_dtype=torch.float64)
    with pytest.raises(ValueError, match="needs fast_decoder=True"):
        FastPathOptions(decoder_dtype=torch.bfloat16, fast_decoder=False)
    with pytest.raises(ValueError, match="autocast_dtype must be None"):
        FastMaskDecoder(MaskDecoder(transformer_dim=32, transformer=TwoWayTransformer(
            depth=1, embedding_dim=32, num_heads=2, mlp_dim=64)), autocast_dtype=torch.int8)
    model = build_sam("tiny").eval()
    with pytest.raises(ValueError, match="decoder_dtype=torch.float16 is for GPUs"):
        EfficientViTSamPredictor(model, fast=FastPathOptions.exact("cpu").with_(
            decoder_dtype=torch.float16))


def test_predictor_with_the_bf16_decoder_and_under_autocast_gives_float32_numpy():
    torch.manual_seed(0)
    model = build_sam("tiny").eval()
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8)
    boxes = np.array([[10, 10, 60, 50], [40, 20, 120, 90]], np.float64)
    exact = EfficientViTSamPredictor(model, fast=FastPathOptions.exact("cpu"))
    bf16 = EfficientViTSamPredictor(model, fast=FastPathOptions.exact("cpu").with_(
        decoder_dtype=torch.bfloat16))
    for p in (exact, bf16):
        p.set_image(image)
    want = exact.predict(boxes=boxes, multimask_output=False, return_logits=True)
    got = bf16.predict(boxes=boxes, multimask_output=False, return_logits=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = exact.predict(boxes=boxes, multimask_output=False, return_logits=True)
    for out in (got, under):
        assert [a.dtype for a in out] == [np.float32] * 3
        assert [a.shape for a in out] == [a.shape for a in want]
        # random tiny weights: logits near 0, so compare values against their scale
        assert np.abs(out[0] - want[0]).max() < 0.1 * np.abs(want[0]).max()
    assert not np.array_equal(got[2], want[2])  # the option really changed the arithmetic
