"""The two-way transformer's attentions in :class:`~.decoder.FastMaskDecoder`'s low-rank form.

The algebra (why these equal SAM's ``Attention`` up to rounding) is in the docstring of
:mod:`effvit_sam.inference.decoder`. Every function takes SAM's ``Attention`` module and reads
its weights at the call, so the decoder's parameters stay SAM's.

On CPU the token->image attention of many queries is written as two batched matrix products
around a softmax instead of ``scaled_dot_product_attention``: with 56 query rows, 4096 keys and
a head of width 256, PyTorch's CPU flash-attention kernel ran at about two thirds of MKL's
batched GEMMs on the 2-core AMX Xeon (42 against 61 ms per 32 prompts); the scores it
materialises are ``B x HN x L`` (29 MB for 32 prompts). Elsewhere (GPU) the fused kernel stays.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.transformer import Attention
from torch import nn

from .decoder_upscale import TokenFactors

_BMM_ATTENTION_MIN_QUERIES = 32
"""Query rows from which the CPU token->image attention runs as batched GEMMs (below it the
fused kernel measured the same)."""


def project(attn_proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """One of an ``Attention``'s projections, its weights read at the call."""
    return F.linear(x, attn_proj.weight, attn_proj.bias)


def _heads(attn: Attention) -> tuple[int, int]:
    return attn.num_heads, attn.internal_dim // attn.num_heads


def t2i_shared_keys(attn: Attention, q_in: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor) -> torch.Tensor:
    """Token->image attention against keys/values shared by every prompt: ``B x N x C`` queries,
    ``L x Ci`` projected keys and values; ``B x N x C`` out."""
    b, n, _ = q_in.shape
    heads, d = _heads(attn)
    q = project(attn.q_proj, q_in).view(b * n, heads, d).transpose(0, 1)  # H x BN x d
    k = k.view(-1, heads, d).transpose(0, 1)
    v = v.view(-1, heads, d).transpose(0, 1)
    out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(d), as SAM's Attention
    return project(attn.out_proj, out.transpose(0, 1).reshape(b, n, heads * d))


def _one_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` for ``B x Q x C`` queries and ``B x L x C`` keys/values."""
    if q.device.type == "cpu" and q.shape[1] >= _BMM_ATTENTION_MIN_QUERIES:
        # baddbmm with beta=0 applies the scale inside the GEMM: no second pass over the scores
        scores = torch.baddbmm(q.new_zeros(()).expand(1, 1, 1), q, k.transpose(1, 2), beta=0,
                               alpha=scale)
        return torch.bmm(scores.softmax(-1), v)
    return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1),
                                          scale=scale).squeeze(1)


def t2i_low_rank(attn: Attention, q_in: torch.Tensor, x: torch.Tensor,
                 xp: torch.Tensor) -> torch.Tensor:
    """Token->image attention to per-prompt image tokens ``x`` (``B x L x C``; ``xp = x + pe``)
    without projecting them: scores ``(q_h Wk_h) xp^T``, values ``(A x) Wv_h^T + bv``."""
    b, n, c = q_in.shape
    heads, d = _heads(attn)
    q = project(attn.q_proj, q_in).view(b, n, heads, d)
    wk = attn.k_proj.weight.view(heads, d, c)
    qk = torch.einsum("bnhd,hdc->bhnc", q, wk).reshape(b, heads * n, c)
    # One head of width C and scale 1/sqrt(d): softmax(qk xp^T / sqrt(d)) x.
    ax = _one_head_attention(qk, xp, x, d ** -0.5)
    wv = attn.v_proj.weight.view(heads, d, c)
    out = torch.einsum("bhnc,hdc->bnhd", ax.view(b, heads, n, c), wv).reshape(b, n, heads * d)
    return project(attn.out_proj, out + attn.v_proj.bias)


def i2t_update(attn: Attention, x: torch.Tensor, xp: torch.Tensor | None, k_in: torch.Tensor,
               v_in: torch.Tensor, *, shared_q: torch.Tensor | None = None,
               owns_x: bool = False, factors: TokenFactors | None = None) -> torch.Tensor:
    """``x + image->token attention`` (before the layer's norm): ``B x L x C`` (or ``1 x L x C``
    shared) image tokens attend to ``B x N x C`` tokens. ``shared_q``: the ``L x Ci`` projected
    queries when ``x`` is shared by every prompt, else they come from ``xp`` in low rank.
    ``owns_x``: ``x`` is a temporary of this decoder that may be overwritten. ``factors``: the
    update ``A^T M`` is also added to them."""
    b, n, c = v_in.shape
    heads, d = _heads(attn)
    k = project(attn.k_proj, k_in).view(b, n, heads, d) * d ** -0.5
    v = project(attn.v_proj, v_in).view(b, n, heads, d)
    # M_h = v_h Wo_h^T + bo / H: the out projection folded into the values (rows of A sum to H).
    wo = attn.out_proj.weight.view(c, heads, d)
    m = torch.einsum("bnhd,chd->bhnc", v, wo).reshape(b, heads * n, c) + attn.out_proj.bias / heads
    # Scores laid out B x H x N x L: the softmax over a head's N tokens then runs along a
    # contiguous L-long inner dimension (a last-dimension softmax over 7 values is slow).
    if shared_q is not None:
        length = shared_q.shape[0]
        q = shared_q.view(length, heads, d).permute(1, 2, 0)  # H x d x L
        scores = torch.matmul(k.permute(2, 0, 1, 3).reshape(heads, b * n, d), q)  # H x BN x L
        a = scores.view(heads, b, n, length).softmax(2).transpose(0, 1)
        a = a.reshape(b, heads * n, length)
    else:
        wq = attn.q_proj.weight.view(heads, d, c)
        g = torch.einsum("bnhd,hdc->bhnc", k, wq).reshape(b, heads * n, c)
        bias = torch.einsum("bnhd,hd->bhn", k, attn.q_proj.bias.view(heads, d))
        scores = torch.baddbmm(bias.reshape(b, heads * n, 1), g, xp.transpose(1, 2))
        length = scores.shape[2]
        a = scores.view(b, heads, n, length).softmax(2).view(b, heads * n, length)
    if factors is not None:
        factors.add(a, m)
    autocast = torch.is_autocast_enabled(x.device.type)
    if x.shape[0] == b and owns_x and not autocast and not torch.is_grad_enabled():
        # the old image tokens are not needed again: update in place (not under autocast, whose
        # products come out in another dtype than x, nor where autograd saved them)
        return x.baddbmm_(a.transpose(1, 2), m)
    if x.shape[0] == 1 and not autocast:
        # one image's tokens for every prompt: the product, then the shared tokens added in
        # place (baddbmm would first copy the expanded x into its output)
        return torch.bmm(a.transpose(1, 2), m).add_(x)
    return torch.baddbmm(x.expand(b, -1, -1), a.transpose(1, 2), m)
