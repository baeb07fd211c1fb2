"""The fast decoder's factored image tokens (``inference/decoder_upscale.py``): the factors
rebuild the transformer's final tokens, the upscaling from them equals the one from the tokens,
and the decoder uses them exactly where they apply."""

from __future__ import annotations

import pytest
import torch

from effvit_sam.inference.decoder import FastMaskDecoder

from .test_fast_decoder import _decoder_and_prompts, _prompts


def _tokens_from(factors, x0: torch.Tensor) -> torch.Tensor:
    """``diag(s) X0 diag(g) + sum_k P_k^T Q_k + 1 const^T``, written out."""
    x = factors.s[:, :, None] * (x0 * factors.g)
    for p, q in factors.groups:
        x = x + p.transpose(1, 2) @ q
    return x if factors.const is None else x + factors.const


def _decoded(dim, depth, heads, kind, multimask, k=5, seed=0):
    decoder, pe = _decoder_and_prompts(dim, depth, heads, 2 * dim, seed=seed)
    fast = FastMaskDecoder(decoder, chunk_size=k)
    image = torch.randn(1, dim, 64, 64, generator=torch.Generator().manual_seed(seed + 7))
    with torch.inference_mode():
        sparse, dense = _prompts(pe, k, kind, False, seed)
        (_, x, hyper, _, factors), = fast._chunks(image, pe.get_dense_pe(), sparse, dense,
                                                  multimask, factored=True)
    return fast, x, hyper, factors


@pytest.mark.parametrize("dim, depth, heads", [(32, 1, 2), (32, 3, 4), (256, 2, 8)])
def test_factors_rebuild_the_final_image_tokens(dim, depth, heads):
    _, x, _, factors = _decoded(dim, depth, heads, "points+box", True)
    assert factors is not None and not factors.finalized  # nothing spent before it is used
    with torch.inference_mode():
        factors.finalize()
    assert factors.s.shape == x.shape[:2]
    # one attention group per layer, then the per-token vectors: each norm's mean and the bias
    # of every norm but the last (that one is the same for every token: const)
    assert len(factors.groups) == depth + 1 and factors.groups[-1][0].shape[1] == 2 * depth - 1
    assert factors.const is not None
    with torch.inference_mode():
        rebuilt = _tokens_from(factors, factors.shared["x0"])
    assert x.abs().max() > 1.0
    torch.testing.assert_close(rebuilt, x, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("kind, multimask", [("box", False), ("points", True)])
def test_upscaling_from_factors_equals_upscaling_the_tokens(kind, multimask):
    fast, x, hyper, factors = _decoded(256, 2, 8, kind, multimask, k=3, seed=1)
    with torch.inference_mode():
        want = fast._upscale_masks(x, hyper, (64, 64))
        got = fast._upscale_masks(x, hyper, (64, 64), factors)
        # a subset of the prompts (what everything mode upscales), in another order; the
        # factors were finalized by the call above and are not scaled twice
        rows = torch.tensor([2, 0])
        part = fast._upscale_masks(x[rows], hyper[rows], (64, 64), factors.select(rows))
    assert want.std() > 0.5
    assert (got - want).abs().max() <= 2e-4
    assert ((got > 0) == (want > 0)).float().mean() > 0.99999
    torch.testing.assert_close(part, got[rows])


def test_factors_only_where_every_prompt_starts_from_the_same_tokens():
    decoder, pe = _decoder_and_prompts(32, 2, 2, 64)
    image = torch.randn(1, 32, 64, 64)
    fast = FastMaskDecoder(decoder)
    bf16 = FastMaskDecoder(decoder, autocast_dtype=torch.bfloat16)
    with torch.inference_mode():
        sparse, dense = _prompts(pe, 2, "points", False, 0)
        _, masked = _prompts(pe, 2, "points", True, 0)  # a mask input per prompt
        args = (image, pe.get_dense_pe(), sparse)

        def factored(dec, dense_in, asked=True):
            return [c[4] is not None for c in dec._chunks(*args, dense_in, True,
                                                          factored=asked)]
        assert factored(fast, dense) == [True]
        assert factored(fast, dense, asked=False) == [False]
        assert factored(fast, masked) == [False]  # the tokens differ from the start
        assert factored(bf16, dense) == [False]  # products in bf16: the plain path
        with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's autocast: the same
            assert factored(fast, dense) == [False]
