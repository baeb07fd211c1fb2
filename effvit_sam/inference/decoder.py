"""``FastMaskDecoder``: SAM's ``MaskDecoder`` for many prompts of one image, same outputs.

SAM's decoder copies the image embedding and its positional encoding once per prompt
(``repeat_interleave``) and runs every projection of the two-way transformer over all 64 x 64
image tokens of every prompt. With K prompts of one image this module computes the same
function (low-res logits within 1e-3 in float32, ``tests/test_fast_decoder.py``) as follows:

* **Shared per image, once per call**: image embedding + dense embedding (when no prompt has
  a mask input the dense embedding is SAM's ``no_mask_embed``, the same for every prompt), its
  sum with the positional encoding, and the first layer's image-side projections (the keys and
  values of the token->image attention, the queries of the image->token attention). The first
  layer's image tokens are the same for every prompt until its image->token attention updates
  them, so that layer's attentions cost a few token-sized products per prompt.
* **Low-rank attention algebra** wherever the image tokens ``X`` (``L x C``, ``L = 64 * 64``)
  differ per prompt (later layers and the final token->image attention), with ``N`` tokens,
  ``H`` heads, ``Wq, Wk, Wv`` (``Ci x C``), ``Wo`` (``C x Ci``), exact up to rounding:

  - token->image scores ``q_h (X + P)^T Wk_h^T = (q_h Wk_h)(X + P)^T``: the key bias adds a
    constant per query and drops out of the softmax; values ``A (X Wv_h^T + bv) = (A X) Wv_h^T
    + bv`` since each softmax row sums to 1. One ``L x C`` by ``C x HN`` product instead of
    two ``L x C x Ci`` projections (``H N = 56`` against ``2 Ci = 256`` for SAM's decoder).
  - image->token scores ``((X + P) Wq_h^T + bq_h) k_h^T = (X + P)(Wq_h^T k_h^T) + bq_h k_h^T``
    and output ``sum_h A_h v_h Wo_h^T + bo = A M`` with ``M_h = v_h Wo_h^T + bo / H`` (each
    head's softmax rows sum to 1): the image-side projection and ``out_proj`` over ``L``
    tokens become one ``L x HN`` by ``HN x C`` product, accumulated onto ``X`` (``baddbmm``).
* **The final token->image attention for the tokens read after it only**: the IoU token and
  the returned mask tokens (2 of 7 query tokens for a box's single mask, 4 of 7 multimask).
* **Upscaling as GEMMs on the token-major layout** (:mod:`.decoder_upscale`): each 2x2 stride-2
  transposed convolution is one matrix product per pixel; ``LayerNorm2d`` is one
  ``F.layer_norm``; only the masks that are returned (3 of 4 with ``multimask_output``, else 1)
  are multiplied with the hypernetwork weights; the pixel shuffle is one permute of the final
  logits. When every prompt starts from the same image tokens (no mask inputs), the final tokens
  are also kept as a shared part plus per-prompt low-rank factors (each layer adds ``A^T M``
  and a LayerNorm is a per-token scale and shift), and the first transposed convolution is
  computed from those: products 115 deep in all per prompt instead of one 256 deep.
* **Only the masks that will be kept** (:meth:`FastMaskDecoder.forward_kept`, what the mask
  generator calls when its ``pred_iou_thresh`` is above 0): the predicted IoUs come from the
  output tokens before any upscaling, so a prompt none of whose masks passes the threshold is
  never upscaled, and the kept masks are the same numbers as :meth:`~FastMaskDecoder.forward`'s.
* Prompts go through in chunks of ``chunk_size``, so memory grows with the chunk, not with K;
  the last layer's image tokens are updated in place (``baddbmm_``).

The module holds the *same* submodules as the decoder it is built from (the same parameter
objects and state-dict keys, so SAM and official checkpoints load into it unchanged) and reads
their weights at every call. ``forward`` is differentiable when a gradient is wanted (phase
2's training, ``train.fast_decoder``): the same function, so the same gradients up to rounding
(``tests/test_fast_decoder_grad.py``); ``forward_kept`` is inference only.
"""

from __future__ import annotations

import contextlib

import torch
from segment_anything.modeling import MaskDecoder, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.transformer import TwoWayAttentionBlock
from torch import nn

from .decoder_attention import i2t_update, project, t2i_low_rank, t2i_shared_keys
from .decoder_upscale import TokenFactors, upscale_masks

DEFAULT_CHUNK = 32
"""Prompts decoded together: large enough for big GEMMs, small enough that the temporaries
(about 20 MB per prompt at 256 channels) stay few (fastest of 8/16/32/64 on a 2-core CPU)."""


def _check_structure(decoder: MaskDecoder) -> None:
    if not isinstance(decoder, MaskDecoder):
        raise TypeError(f"FastMaskDecoder reads a segment_anything MaskDecoder, got "
                        f"{type(decoder).__name__}")
    transformer = decoder.transformer
    if not isinstance(transformer, TwoWayTransformer) or not all(
            isinstance(layer, TwoWayAttentionBlock) for layer in transformer.layers):
        raise TypeError("FastMaskDecoder needs SAM's TwoWayTransformer of TwoWayAttentionBlocks, "
                        f"got {type(transformer).__name__}")
    up = list(decoder.output_upscaling)
    kinds = [nn.ConvTranspose2d, LayerNorm2d, nn.Module, nn.ConvTranspose2d, nn.Module]
    if len(up) != 5 or not all(isinstance(m, k) for m, k in zip(up, kinds, strict=True)) or any(
            (m.kernel_size, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
            != ((2, 2), (2, 2), (0, 0), (0, 0), 1, (1, 1)) for m in (up[0], up[3])):
        raise TypeError("FastMaskDecoder needs SAM's output_upscaling (2x2 stride-2 transposed "
                        "conv, LayerNorm2d, activation, 2x2 stride-2 transposed conv, activation)")


class FastMaskDecoder(nn.Module):
    """SAM's mask decoder computed for many prompts of one image (see the module docstring).

    ``forward`` has ``MaskDecoder.forward``'s signature and outputs: image_embeddings
    ``1 x C x h x w``, image_pe ``1 x C x h x w``, sparse_prompt_embeddings ``K x T x C``,
    dense_prompt_embeddings ``K x C x h x w`` (or ``1 x C x h x w``); returns
    ``(masks K x M x 4h x 4w logits, iou_pred K x M)``, M = 3 with ``multimask_output``, else 1.
    """

    def __init__(self, mask_decoder: MaskDecoder, *, chunk_size: int = DEFAULT_CHUNK,
                 autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        _check_structure(mask_decoder)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if autocast_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, "
                             f"got {autocast_dtype}")
        self.chunk_size = chunk_size
        # Opt-in, lossy: the products in bf16/fp16 (AMX tiles on CPU), outputs float32.
        self.autocast_dtype = autocast_dtype
        self.transformer_dim = mask_decoder.transformer_dim
        self.num_multimask_outputs = mask_decoder.num_multimask_outputs
        self.num_mask_tokens = mask_decoder.num_mask_tokens
        # The same modules under the same names: state-dict keys equal MaskDecoder's.
        self.transformer = mask_decoder.transformer
        self.iou_token = mask_decoder.iou_token
        self.mask_tokens = mask_decoder.mask_tokens
        self.output_upscaling = mask_decoder.output_upscaling
        self.output_hypernetworks_mlps = mask_decoder.output_hypernetworks_mlps
        self.iou_prediction_head = mask_decoder.iou_prediction_head

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor,
                multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = sparse_prompt_embeddings, dense_prompt_embeddings
        h, w = image_embeddings.shape[-2:]  # checked by _chunks
        masks, ious = [], []
        # Differentiable where a gradient is wanted (training: phase 2's decoder), with no
        # in-place update of a tensor autograd saved; otherwise no graph is built.
        inputs = (image_embeddings, sparse, dense)
        grad = torch.is_grad_enabled() and (any(t.requires_grad for t in inputs) or any(
            p.requires_grad for p in self.parameters()))
        out = torch.promote_types(image_embeddings.dtype, torch.float32)  # float32 from bf16
        with self._autocast(image_embeddings.device), \
                contextlib.nullcontext() if grad else torch.no_grad():
            for _, x, hyper, iou, factors in self._chunks(image_embeddings, image_pe, sparse,
                                                          dense, multimask_output,
                                                          factored=not grad):
                masks.append(self._upscale_masks(x, hyper, (h, w), factors).to(out))
                ious.append(iou.to(out))
                del x, factors  # this chunk's tokens and factors, before the next is decoded
        return torch.cat(masks), torch.cat(ious)

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    @staticmethod
    def _check(image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
               dense: torch.Tensor) -> None:
        if image_embeddings.ndim != 4 or image_embeddings.shape[0] != 1:
            raise ValueError("image_embeddings must be 1 x C x h x w (one image, shared by every "
                             f"prompt), got {tuple(image_embeddings.shape)}")
        _, c, h, w = image_embeddings.shape
        k = sparse.shape[0]
        if sparse.ndim != 3 or sparse.shape[2] != c:
            raise ValueError(f"sparse_prompt_embeddings must be K x T x {c}, got "
                             f"{tuple(sparse.shape)}")
        if tuple(image_pe.shape) != (1, c, h, w) or dense.ndim != 4 or \
                tuple(dense.shape[1:]) != (c, h, w) or dense.shape[0] not in (1, k):
            raise ValueError(f"image_pe must be 1 x {c} x {h} x {w} and dense_prompt_embeddings "
                             f"{k} (or 1) x {c} x {h} x {w}, got {tuple(image_pe.shape)} and "
                             f"{tuple(dense.shape)}")

    @torch.no_grad()
    def forward_kept(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                     sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor,
                     multimask_output: bool, iou_threshold: float,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward`, keeping only the masks whose predicted IoU is above ``iou_threshold``
        (what SAM's mask generator keeps first) and upscaling the image tokens of a prompt only
        when at least one of its masks is kept: the predicted IoUs come from the output tokens,
        before the upscaling, which is the largest part of the decoder's work per prompt.

        Returns ``(masks K' x 4h x 4w logits, iou_pred K', index K')`` with ``index = prompt *
        M + mask`` into :meth:`forward`'s ``K x M`` outputs, in that order; the kept masks and
        scores are :meth:`forward`'s (the same products on fewer rows).
        """
        h, w = image_embeddings.shape[-2:]  # checked by _chunks
        masks, ious, index = [], [], []
        with self._autocast(image_embeddings.device):
            for start, x, hyper, iou, factors in self._chunks(
                    image_embeddings, image_pe, sparse_prompt_embeddings,
                    dense_prompt_embeddings, multimask_output, factored=True):
                iou = iou.float()
                keep = iou > iou_threshold
                rows = keep.any(1).nonzero()[:, 0]
                if len(rows):
                    up = self._upscale_masks(x[rows], hyper[rows], (h, w),
                                             None if factors is None else factors.select(rows))
                    kept = keep[rows]
                    m = iou.shape[1]
                    masks.append(up.float()[kept])
                    ious.append(iou[rows][kept])
                    flat = (rows[:, None] + start) * m + torch.arange(m, device=rows.device)
                    index.append(flat[kept])
                del x, factors  # this chunk's tokens and factors, before the next is decoded
        if not masks:
            empty = image_embeddings.new_zeros((0, 4 * h, 4 * w))
            return empty, image_embeddings.new_zeros(0), torch.zeros(0, dtype=torch.long)
        return torch.cat(masks), torch.cat(ious), torch.cat(index)

    def _chunks(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                sparse: torch.Tensor, dense: torch.Tensor, multimask_output: bool, *,
                factored: bool = False):
        """The inputs checked, then per chunk of prompts: ``(first prompt, image tokens B x L x C,
        mask weights B x M x C/8, iou_pred B x M, factors)``, the transformer's outputs before
        the upscaling. ``factors``: the final image tokens as :class:`TokenFactors` when
        ``factored`` is asked, every prompt starts from the same tokens and the products are in
        float32 (no autocast); else None."""
        self._check(image_embeddings, image_pe, sparse, dense)
        pe = image_pe.flatten(2).transpose(1, 2).contiguous()  # 1 x L x C, L = h * w
        image = image_embeddings.flatten(2).transpose(1, 2)
        masks_idx = slice(1, None) if multimask_output else slice(0, 1)
        # The prompt encoder's no-mask dense embedding is one vector expanded over the batch.
        shared = dense.shape[0] == 1 or dense.stride(0) == 0
        first = None
        if shared:
            x0 = (image + dense[:1].flatten(2).transpose(1, 2)).contiguous()
            first = self._first_layer_shared(x0, pe)
        factored = factored and shared and self.autocast_dtype is None and \
            not torch.is_autocast_enabled(image_embeddings.device.type)  # nor a caller's
        per_call = {"x0": first["x"]} if factored else None
        for start in range(0, sparse.shape[0], self.chunk_size):
            part = slice(start, start + self.chunk_size)
            x0 = None if shared else (image + dense[part].flatten(2).transpose(1, 2)).contiguous()
            factors = None
            if factored:
                factors = TokenFactors(len(sparse[part]), pe.shape[1], pe, per_call)
            yield (start, *self._decode(sparse[part], x0, pe, first, masks_idx, factors),
                   factors)

    # -- the two-way transformer ----------------------------------------------------------------

    def _first_layer_shared(self, x0: torch.Tensor, pe: torch.Tensor) -> dict[str, torch.Tensor]:
        """The first layer's image-side work, the same for every prompt (``1 x L x C`` in)."""
        layer = self.transformer.layers[0]
        xp = x0 + pe
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        return {"x": x0, "xp": xp, "t2i_k": project(t2i.k_proj, xp)[0],
                "t2i_v": project(t2i.v_proj, x0)[0], "i2t_q": project(i2t.q_proj, xp)[0]}

    def _decode(self, sparse: torch.Tensor, x0: torch.Tensor | None, pe: torch.Tensor,
                first: dict[str, torch.Tensor] | None, masks_idx: slice,
                factors: TokenFactors | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = sparse.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        point_pe = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        queries = point_pe
        x = x0
        for i, layer in enumerate(self.transformer.layers):
            # Token self-attention, on tokens only: SAM's own module.
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(q=queries, k=queries, v=queries)
            else:
                q = queries + point_pe
                queries = queries + layer.self_attn(q=q, k=q, v=queries)
            queries = layer.norm1(queries)
            use_shared = i == 0 and first is not None
            xp = None if use_shared else x + pe
            q = queries + point_pe
            if use_shared:
                attn_out = t2i_shared_keys(layer.cross_attn_token_to_image, q,
                                            first["t2i_k"], first["t2i_v"])
            else:
                attn_out = t2i_low_rank(layer.cross_attn_token_to_image, q, x, xp)
            queries = layer.norm2(queries + attn_out)
            queries = layer.norm3(queries + layer.mlp(queries))
            q = queries + point_pe
            if use_shared:
                x = i2t_update(layer.cross_attn_image_to_token, first["x"], None, q, queries,
                                shared_q=first["i2t_q"], factors=factors)
            else:
                # x is the previous layer's norm output, or the caller's when mask inputs differ.
                x = i2t_update(layer.cross_attn_image_to_token, x, xp, q, queries,
                                owns_x=i > 0, factors=factors)
            if factors is None:
                x = layer.norm4(x)
            else:  # the norm's per-token statistics are part of the factors
                norm = layer.norm4
                x, mean, rstd = torch.native_layer_norm(x, norm.normalized_shape, norm.weight,
                                                        norm.bias, norm.eps)
                factors.normalize(mean, rstd, norm)
        t = self.transformer
        # Only the IoU token and the returned mask tokens are read after the final attention
        # (its query rows are independent): 2 of 7 tokens for one box's single mask.
        chosen = range(self.num_mask_tokens)[masks_idx]
        rows = [0, *(1 + j for j in chosen)]
        attn_out = t2i_low_rank(t.final_attn_token_to_image, (queries + point_pe)[:, rows], x,
                                 x + pe)
        kept = t.norm_final_attn(queries[:, rows] + attn_out)
        hyper = torch.stack([self.output_hypernetworks_mlps[j](kept[:, 1 + k])
                             for k, j in enumerate(chosen)], dim=1)
        iou = self.iou_prediction_head(kept[:, 0])[:, masks_idx]
        return x, hyper, iou

    # -- mask upscaling -------------------------------------------------------------------------

    def _upscale_masks(self, x: torch.Tensor, hyper: torch.Tensor, hw: tuple[int, int],
                       factors: TokenFactors | None = None) -> torch.Tensor:
        """``B x L x C`` image tokens and ``B x M x C/8`` mask weights to ``B x M x 4h x 4w``
        logits (:func:`~.decoder_upscale.upscale_masks`; from ``factors`` where given)."""
        return upscale_masks(self.output_upscaling, x, hyper, hw, factors=factors)
