"""The fast decoder's attention forms and its CPU choices (batched-GEMM attention, cache-sized
upscaling bands): each equals SAM's computation whichever way the choice goes."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling.transformer import Attention

from effvit_sam.inference import cpu_features, decoder_attention, decoder_upscale
from effvit_sam.inference.cpu_features import last_level_cache_bytes
from effvit_sam.inference.decoder import FastMaskDecoder

from .test_fast_decoder import _compare, _decoder_and_prompts


@pytest.fixture(params=["bmm", "sdpa"])
def attention_path(request, monkeypatch):
    """Force the CPU token->image attention onto one of its two implementations."""
    monkeypatch.setattr(decoder_attention, "_BMM_ATTENTION_MIN_QUERIES",
                        1 if request.param == "bmm" else 10**9)
    return request.param


def test_t2i_low_rank_is_sams_attention(attention_path):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    attn = Attention(64, num_heads=4, downsample_rate=2).eval()
    b, n, length = 3, 7, 300
    q = torch.randn(b, n, 64, generator=gen)
    x = torch.randn(b, length, 64, generator=gen)
    xp = x + torch.randn(1, length, 64, generator=gen)
    with torch.inference_mode():
        want = attn(q=q, k=xp, v=x)
        got = decoder_attention.t2i_low_rank(attn, q, x, xp)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_the_two_one_head_attentions_agree():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, rows, 32, generator=gen) for rows in (40, 500, 500))
    bmm = decoder_attention._one_head_attention(q, k, v, 0.3)  # 40 query rows: batched GEMMs
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=0.3).squeeze(1)
    torch.testing.assert_close(bmm, sdpa, atol=1e-5, rtol=1e-5)


def test_l0_sized_decoder_matches_sam_on_both_attention_paths(attention_path):
    dec, pe = _decoder_and_prompts(256, 2, 8, 2048, seed=1)
    _compare(dec, pe, 4, "points+box", False, True, chunk_size=4)


def _cache_dir(root, index: int, level: int, kind: str, size: str) -> None:
    d = root / f"index{index}"
    d.mkdir()
    (d / "level").write_text(f"{level}\n")
    (d / "type").write_text(f"{kind}\n")
    (d / "size").write_text(f"{size}\n")


def test_last_level_cache_from_sysfs(tmp_path):
    _cache_dir(tmp_path, 0, 1, "Data", "32K")
    _cache_dir(tmp_path, 1, 1, "Instruction", "32K")
    _cache_dir(tmp_path, 2, 2, "Unified", "1024K")
    _cache_dir(tmp_path, 3, 3, "Unified", "32768K")
    assert last_level_cache_bytes(tmp_path) == 32 << 20
    (tmp_path / "index3" / "size").write_text("garbage\n")  # unreadable: the next level down
    assert last_level_cache_bytes(tmp_path) == 1 << 20
    assert cpu_features._size_bytes("2M") == 2 << 20
    assert cpu_features._size_bytes("491520K") == 480 << 20
    assert last_level_cache_bytes(tmp_path / "absent") is None


@pytest.mark.parametrize("llc, want", [(None, 4 << 20), (2 << 20, 4 << 20),
                                       (32 << 20, 8 << 20), (480 << 20, 64 << 20)])
def test_upscale_band_is_a_quarter_of_the_cache_within_bounds(monkeypatch, llc, want):
    monkeypatch.setattr(decoder_upscale, "last_level_cache_bytes", lambda: llc)
    assert decoder_upscale.cpu_upscale_band_bytes.__wrapped__() == want


def test_upscaling_does_not_depend_on_the_band_size(monkeypatch):
    dec, _ = _decoder_and_prompts(32, 1, 2, 64, seed=3)
    fast = FastMaskDecoder(dec)
    gen = torch.Generator().manual_seed(2)
    x, hyper = torch.randn(2, 64 * 64, 32, generator=gen), torch.randn(2, 3, 4, generator=gen)
    outs = []
    for budget in (1, 1 << 40):  # one grid row per band, and the whole grid in one band
        monkeypatch.setattr(decoder_upscale, "cpu_upscale_band_bytes", lambda b=budget: b)
        with torch.inference_mode():
            outs.append(fast._upscale_masks(x, hyper, (64, 64)))
    assert outs[0].shape == (2, 3, 256, 256) and outs[0].abs().max() > 0.1
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
