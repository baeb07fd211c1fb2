"""The mask upscaling of :class:`~.decoder.FastMaskDecoder`, and the image tokens in factored form.

**Upscaling as GEMMs on the token-major layout.** SAM's ``output_upscaling`` is two 2x2
stride-2 transposed convolutions (each one matrix product per token), a ``LayerNorm2d`` (one
``F.layer_norm`` over channels) and two activations; then ``hyper @ upscaled`` gives each mask.
Every token's 16 output pixels depend on that token alone, so the work goes one prompt and a
band of grid rows at a time: the upscaled channels are consumed from cache instead of being
written out for the whole chunk and read back (the same products, about twice as fast on a
2-core CPU).

**Factored image tokens** (:class:`TokenFactors`). When every prompt starts from the same image
tokens ``X0`` (``L x C``; no mask inputs), each layer of the two-way transformer changes them by
a low-rank update and a LayerNorm: ``Z = X + A^T M`` (``A``: the image->token attention, ``HN x
L``; ``M``: ``HN x C``), then ``LN(Z) = diag(r) (Z - mu 1^T) diag(gamma) + 1 beta^T`` with the
per-token ``mu`` and ``r = 1 / sqrt(var + eps)``. So after any number of layers

    X_n = diag(s) X0 diag(g) + P^T Q

with a per-prompt token scale ``s`` (``L``), a channel scale ``g`` shared by every prompt (the
product of the norms' ``gamma``), and per prompt ``P`` (``R x L``) and ``Q`` (``R x C``): each
layer's ``HN`` attention rows, each norm's mean, each norm's bias but the last (that one is the
same for every token), so ``R`` = 56 + 56 + 3 = 115 for a box prompt to SAM's decoder (2
layers, 8 heads, 7 tokens). The first
transposed convolution is then ``X_n W1 = diag(s) (X0 diag(g) W1) + P^T (Q W1)``: the ``L x C``
by ``C x 4 C1`` product is done once per call for all prompts, and per prompt there is an ``L x
R`` by ``R x 4 C1`` product (115 against 256 deep: less than half the multiply-adds, at the same
rate on the Zen 4 EPYC, README, issue #18) and a scaled add. Exact up to rounding
(``tests/test_fast_decoder.py``: logits within 1e-3 of SAM's decoder).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_features import last_level_cache_bytes

UPSCALE_BAND_BYTES = 4 << 20
"""Temporaries of one band of the mask upscaling where the CPU's cache size is unknown (and on
GPUs): a few MB, which stay in any CPU's cache."""


@functools.lru_cache(maxsize=1)
def cpu_upscale_band_bytes() -> int:
    """Temporaries of one band of the CPU mask upscaling: a quarter of the last-level cache,
    between 4 and 64 MB (:data:`UPSCALE_BAND_BYTES` where the kernel does not say).

    Every band costs a dozen small kernel launches, so larger bands are faster while their
    temporaries stay in cache: on the 2-core AMX Xeon (480 MB L3 in sysfs) whole-prompt bands
    (12.5 MB at 256 channels) upscaled 32 prompts in 166 ms against 212 ms with 4 MB bands,
    and the gain stopped at 2 prompts per band (README, issue #18)."""
    llc = last_level_cache_bytes()
    return UPSCALE_BAND_BYTES if llc is None else min(64 << 20, max(4 << 20, llc // 4))


class TokenFactors:
    """``X_n = diag(s) X0 diag(g) + sum_k P_k^T Q_k + 1 const^T`` for a batch of prompts sharing
    ``X0`` (module docstring).

    Built layer by layer (:meth:`add`, :meth:`normalize`), then :meth:`finalize` (on first use,
    so prompts that are never upscaled cost nothing more) applies each term's later norms once:
    the attention weights ``A`` (``B x HN x L``, the largest part) are scaled in place, never
    copied. Afterwards: ``s`` ``B x L``, ``g`` ``C``, ``groups`` a list of ``(P B x K x L, Q B x K
    x C)``, ``const`` ``C`` (or None).
    """

    def __init__(self, batch: int, length: int, like: torch.Tensor,
                 shared: dict | None = None) -> None:
        # per call, for every prompt: "x0" (1 x L x C), then "x0_w1" (X0 diag(g) W1) once
        self.shared = {} if shared is None else shared
        self.batch, self.length, self.like = batch, length, like
        self._terms: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # (P, Q, first norm)
        self._norms: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rstd B x L, gamma C)
        self.s = self.g = self.const = None
        self.groups: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.finalized = False

    def add(self, a: torch.Tensor, m: torch.Tensor) -> None:
        """``Z = X + A^T M``: ``a`` ``B x K x L`` (scaled in place by :meth:`finalize`), ``m``
        ``B x K x C``."""
        self._terms.append((a, m, len(self._norms)))

    def normalize(self, mean: torch.Tensor, rstd: torch.Tensor, norm: nn.LayerNorm) -> None:
        """``X = LN(Z) = diag(r) (Z - mu 1^T) diag(gamma) + 1 beta^T`` with the per-token
        ``mean`` and ``rstd`` (``B x L x 1``) of ``Z``."""
        b, length = self.batch, self.length
        i = len(self._norms)
        self._terms.append((mean.reshape(b, 1, length), -torch.ones_like(norm.weight), i))
        self._norms.append((rstd.reshape(b, length), norm.weight))
        self._terms.append((rstd.new_ones(()).expand(b, 1, length), norm.bias, i + 1))

    def finalize(self) -> None:
        """Each term times the norms after it: token scales ``c_i``, channel scales ``G_i``.
        Once; later calls return at once."""
        if self.finalized:
            return
        self.finalized = True
        n = len(self._norms)
        c, g = [None] * (n + 1), [None] * (n + 1)  # None: ones
        for i in range(n - 1, -1, -1):
            r, gamma = self._norms[i]
            c[i] = r if c[i + 1] is None else r * c[i + 1]
            g[i] = gamma if g[i + 1] is None else gamma * g[i + 1]
        self.s = c[0] if c[0] is not None else self.like.new_ones((self.batch, self.length))
        self.g = g[0]
        vectors_p, vectors_q = [], []
        for p, q, first in self._terms:
            q = q if g[first] is None else q * g[first]
            if first == n:  # after the last norm: the same for every token
                self.const = q if self.const is None else self.const + q
            elif p.shape[1] > 1:
                self.groups.append((p.mul_(c[first][:, None]), q))
            else:
                vectors_p.append(p * c[first][:, None])
                vectors_q.append(q.expand(self.batch, 1, -1))
        if vectors_p:
            self.groups.append((torch.cat(vectors_p, 1), torch.cat(vectors_q, 1)))
        self._terms, self._norms = [], []

    def select(self, rows: torch.Tensor) -> TokenFactors:
        """The finalized factors of some prompts only (``rows``: indices into the batch)."""
        self.finalize()
        out = TokenFactors(len(rows), self.length, self.like, self.shared)
        out.finalized = True
        out.s, out.g, out.const = self.s[rows], self.g, self.const
        out.groups = [(p[rows], q[rows]) for p, q in self.groups]
        return out


def _act_(act: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The activation of a temporary, in place where it is SAM's ``GELU`` (no new tensor)."""
    if type(act) is nn.GELU and not torch.is_grad_enabled():
        return torch.ops.aten.gelu_(y, approximate=act.approximate)
    return act(y)


def upscale_masks(upscaling: nn.Sequential, x: torch.Tensor, hyper: torch.Tensor,
                  hw: tuple[int, int], *, factors: TokenFactors | None = None) -> torch.Tensor:
    """``B x L x C`` image tokens (row-major ``h x w`` grid) and ``B x M x C/8`` mask weights
    to ``B x M x 4h x 4w`` logits: SAM's ``output_upscaling`` then ``hyper @ upscaled``.

    With ``factors`` the first transposed convolution is computed from them (module docstring)
    and ``x`` is not read.
    """
    conv1, norm, act1, conv2, act2 = upscaling
    b, length, c = x.shape
    h, w = hw
    m = hyper.shape[1]
    c1, c2 = conv1.out_channels, conv2.out_channels
    # ConvTranspose2d(k=2, s=2): out[o, 2y+i, 2x+j] = sum_c in[c, y, x] W[c, o, i, j] + b[o];
    # columns ordered (i, j, o) so each output pixel's channels are contiguous.
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)
    w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
    b1, b2 = conv1.bias.repeat(4), conv2.bias.repeat(4)
    if factors is not None:
        factors.finalize()
        x0 = factors.shared["x0"][0]
        if "x0_w1" not in factors.shared:  # L x 4 C1, once per call for every prompt
            factors.shared["x0_w1"] = (x0 if factors.g is None else x0 * factors.g) @ w1
        shared = factors.shared["x0_w1"]
        qw1 = [torch.matmul(q, w1) for _, q in factors.groups]  # B x K x 4 C1 each
        bias = b1 if factors.const is None else b1 + factors.const @ w1
    per_row = w * (4 * c1 + 16 * c2) * x.element_size()  # temporaries per grid row
    budget = cpu_upscale_band_bytes() if x.device.type == "cpu" else UPSCALE_BAND_BYTES
    bands = -(-h // max(1, min(h, budget // per_row)))
    band = -(-h // bands)  # equal bands: no one-row tail
    out = x.new_empty((b, m, 4 * h, 4 * w))
    for i in range(b):
        for r0 in range(0, h, band):
            rows = min(band, h - r0)
            t0, t1 = r0 * w, (r0 + rows) * w
            if factors is None:
                y = torch.addmm(b1, x[i, t0:t1], w1)
            else:
                y = torch.addcmul(bias, factors.s[i, t0:t1, None], shared[t0:t1])
                for (p, _), pw in zip(factors.groups, qw1, strict=True):
                    y.addmm_(p[i, :, t0:t1].t(), pw[i])
            y = _act_(act1, F.layer_norm(y.view(-1, c1), (c1,), norm.weight, norm.bias,
                                         norm.eps))
            y = _act_(act2, torch.addmm(b2, y, w2))  # rows (y, x, i, j), cols (i2, j2, o)
            logits = torch.mm(hyper[i], y.view(rows * w * 16, c2).t())
            # pixel (y, x, i, j, i2, j2) -> row 4y + 2i + i2, column 4x + 2j + j2: one copy
            out[i, :, 4 * r0: 4 * (r0 + rows)].view(m, rows, 2, 2, w, 2, 2).copy_(
                logits.view(m, rows, w, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6))
    return out
