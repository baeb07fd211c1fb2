"""ONNX export: an encoder graph (dynamic batch) and a SAM-style decoder graph (dynamic prompts).

``effvit-sam export-onnx --model l0 --checkpoint PATH --out DIR`` (:mod:`effvit_sam.tools.export`)
writes ``DIR/encoder.onnx`` and
``DIR/decoder.onnx``, checks both with onnxruntime against PyTorch on the same inputs and prints
the largest differences.

Decoder graph, like ``segment_anything``'s ``SamOnnxModel`` but for B prompt sets of one image in
one call (all prompts in the 1024 prompt frame):

* ``image_embeddings`` ``1 x C x 64 x 64`` float32 (the encoder's output for one image);
* ``point_coords`` ``B x N x 2`` float32, (x, y) pixels; ``point_labels`` ``B x N`` float32:
  1 foreground, 0 background, 2 box top-left corner, 3 box bottom-right corner, -1 padding.
  Without a box, append one padding point (0, 0) with label -1, as SAM's prompt encoder does;
* ``mask_input`` ``B x 1 x 256 x 256`` (or ``1 x 1 x 256 x 256``, shared by every prompt)
  float32 logits and ``has_mask_input`` ``1`` float32 (1 to use the masks, 0 to ignore them);
* outputs ``low_res_masks`` ``B x 4 x 256 x 256`` logits and ``iou_predictions`` ``B x 4``: mask 0
  is SAM's single-mask output, masks 1..3 the multimask outputs (the caller slices, exactly as
  ``MaskDecoder.forward`` does).

``official_names=True`` writes the graphs of the official EfficientViT-SAM export instead, so
code written for those files runs on ours: encoder ``input_image`` -> ``image_embeddings``;
decoder ``image_embeddings`` ``1 x C x 64 x 64``, ``point_coords`` ``B x N x 2``,
``point_labels`` ``B x N`` -> ``masks`` ``B x 4 x 256 x 256`` low-res logits and
``iou_predictions`` ``B x 4`` (no mask input); with ``single_mask``, ``B x 1``: per prompt the
mask of highest predicted IoU among the four, as the official ``--return-single-mask``.

The graphs use only plain ONNX operators that TensorRT builds (no ``repeat_interleave``, no
boolean-indexed writes, no loops): the label masks are arithmetic, and the image side is one
``1 x L x C`` tensor that broadcasts against the B prompts until the first image->token
attention makes it per prompt, so what is the same for every prompt (the first layer's image
projections) is computed once. ``tests/test_export_onnx.py`` checks the operator types.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder
from torch import nn

from ..geometry import LOW_RES_MASK_SIZE, PROMPT_FRAME
from ..inference.fuse import fuse
from ..io import atomic_write
from ..modeling import EfficientViTSam

log = logging.getLogger(__name__)

OPSET = 17
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
# onnxruntime against PyTorch on the same inputs (float32, different kernels and summation order).
ENCODER_ATOL = 1e-3
DECODER_ATOL = 1e-3
ENCODER_INPUTS = ["images"]
ENCODER_OUTPUTS = ["image_embeddings"]
DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input",
                  "has_mask_input"]
DECODER_OUTPUTS = ["low_res_masks", "iou_predictions"]
# The official EfficientViT-SAM export's tensor names.
OFFICIAL_ENCODER_INPUTS = ["input_image"]
OFFICIAL_DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels"]
OFFICIAL_DECODER_OUTPUTS = ["masks", "iou_predictions"]


class OnnxDecoder(nn.Module):
    """SAM's prompt encoder + mask decoder for B prompt sets of one image, with export-friendly ops.

    Same weights and the same arithmetic as ``EfficientViTSam.decode`` (see the module docstring
    for the inputs); returns all four masks so one graph serves single- and multi-mask output.
    """

    def __init__(self, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.frame = float(prompt_encoder.input_image_size[0])
        self.register_buffer("image_pe", prompt_encoder.get_dense_pe().detach().clone(),
                             persistent=False)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``B x N x 2`` prompt-frame points and ``B x N`` labels to ``B x N x C`` tokens."""
        pe = self.prompt_encoder
        # SAM shifts to pixel centres and normalises by the prompt frame (square: 1024 x 1024).
        emb = pe.pe_layer._pe_encoding((coords + 0.5) / self.frame)
        labels = labels.unsqueeze(-1)
        emb = emb * (labels != -1).to(emb.dtype)
        emb = emb + pe.not_a_point_embed.weight * (labels == -1).to(emb.dtype)
        for i, point_embed in enumerate(pe.point_embeddings):
            emb = emb + point_embed.weight * (labels == i).to(emb.dtype)
        return emb

    def embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """``(B or 1) x 1 x 256 x 256`` logits to ``(B or 1) x C x 64 x 64`` (or the no-mask
        embedding where ``has_mask_input`` is 0)."""
        pe = self.prompt_encoder
        flag = has_mask_input.reshape(1, 1, 1, 1)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return flag * pe.mask_downscaling(mask_input) + (1 - flag) * no_mask

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor, mask_input: torch.Tensor,
                has_mask_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(image_embeddings, self.embed_points(point_coords, point_labels),
                           self.embed_mask(mask_input, has_mask_input))

    def decode(self, image_embeddings: torch.Tensor, sparse: torch.Tensor,
               dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``MaskDecoder.predict_masks`` with the image side broadcast instead of repeated:
        ``(B x 4 x 256 x 256, B x 4)``."""
        dec = self.mask_decoder
        b = sparse.shape[0]
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        # Broadcast by adding zeros of the prompts' batch: an exported expand adds a Where.
        batch_zeros = torch.zeros_like(sparse[:, :1, :])
        tokens = torch.cat([output_tokens.unsqueeze(0) + batch_zeros, sparse], dim=1)
        src = image_embeddings + dense  # 1 x C x h x w unless the mask inputs differ per prompt
        _, c, h, w = src.shape
        # SAM's TwoWayTransformer broadcasts a batch-1 image side against B prompts (its
        # attention products are batched matmuls), keys become B x L x C after the first layer.
        hs, src = dec.transformer(src, self.image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1: 1 + dec.num_mask_tokens, :]
        upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :])
                                for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1)
        _, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, dec.iou_prediction_head(iou_token_out)


class OfficialOnnxDecoder(nn.Module):
    """The official EfficientViT-SAM decoder graph's interface over :class:`OnnxDecoder`: points
    and labels only (no mask input); all four masks, or with ``single_mask`` the one of highest
    predicted IoU per prompt (``B x 1``)."""

    def __init__(self, decoder: OnnxDecoder, *, single_mask: bool) -> None:
        super().__init__()
        self.decoder = decoder
        self.single_mask = single_mask
        # A constant, not an arange in the graph (no Range operator).
        self.register_buffer("mask_ids", torch.arange(decoder.mask_decoder.num_mask_tokens),
                             persistent=False)

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dec = self.decoder
        dense = dec.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        masks, iou = dec.decode(image_embeddings, dec.embed_points(point_coords, point_labels),
                                dense)
        if not self.single_mask:
            return masks, iou
        # One-hot of the best mask, applied as a matmul: no gather with computed indices.
        best = (self.mask_ids == iou.argmax(dim=1, keepdim=True)).to(masks.dtype)  # B x 4
        b, m, h, w = masks.shape
        masks = (best.unsqueeze(1) @ masks.reshape(b, m, h * w)).reshape(b, 1, h, w)
        return masks, (best.unsqueeze(1) @ iou.unsqueeze(2)).reshape(b, 1)


def _export_bytes(module: nn.Module, args: tuple[torch.Tensor, ...], *, input_names: list[str],
                  output_names: list[str], dynamic_axes: dict) -> bytes:
    buffer = io.BytesIO()
    # The TorchScript exporter: SAM's decoder does not export with the dynamo one on torch 2.14.
    torch.onnx.export(module, args, buffer, input_names=input_names, output_names=output_names,
                      dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True,
                      dynamo=False)
    return buffer.getvalue()


def _with_metadata(graph: bytes, props: dict[str, str]) -> bytes:
    import onnx

    proto = onnx.load_from_string(graph)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def example_decoder_inputs(embed_dim: int, *, num_points: int = 3, batch: int = 1,
                           seed: int = 0) -> dict[str, np.ndarray]:
    """Random but valid decoder inputs for ``batch`` prompt sets: points, a box (labels 2, 3)
    and a mask input per prompt."""
    rng = np.random.default_rng(seed)
    n = max(num_points, 0)
    coords = rng.uniform(0, PROMPT_FRAME, (batch, n + 2, 2)).astype(np.float32)
    labels = np.concatenate([rng.integers(0, 2, (batch, n)), np.tile([2, 3], (batch, 1))], 1)
    return {
        "image_embeddings": rng.standard_normal((1, embed_dim, 64, 64)).astype(np.float32),
        "point_coords": coords,
        "point_labels": labels.astype(np.float32),
        "mask_input": rng.standard_normal((batch, 1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE))
        .astype(np.float32),
        "has_mask_input": np.ones(1, dtype=np.float32),
    }


def _max_diff(session, feeds: dict[str, np.ndarray], expected: list[torch.Tensor]) -> float:
    outputs = session.run(None, feeds)
    return max(float(np.abs(o - e.numpy()).max()) for o, e in zip(outputs, expected, strict=True))


def export_onnx(model: EfficientViTSam, out_dir: str | Path, *, verify: bool = True,
                batch_for_check: int = 2, official_names: bool = False,
                single_mask: bool = False) -> dict[str, object]:
    """Write ``encoder.onnx`` and ``decoder.onnx`` into ``out_dir`` (atomically) on CPU.

    ``official_names``: the official EfficientViT-SAM export's tensor names and decoder inputs
    (module docstring); ``single_mask`` (only with it): the decoder returns the best of the four
    masks per prompt. With ``verify``, runs both with onnxruntime and PyTorch on the same random
    inputs (encoder at batch 1 and ``batch_for_check``, decoder with 1 and 5 points at batch 1
    and ``batch_for_check``) and raises ``RuntimeError`` if the largest absolute difference
    exceeds ``ENCODER_ATOL`` / ``DECODER_ATOL``. Returns the paths and those differences.
    """
    if not isinstance(model, EfficientViTSam):
        raise TypeError(f"export_onnx expects an EfficientViTSam, got {type(model).__name__}")
    if single_mask and not official_names:
        raise ValueError("single_mask is an option of the official-names decoder graph: pass "
                         "official_names=True (ours returns all four masks, the caller slices)")
    out = Path(out_dir)
    single_mask_mode = model.config.single_mask if model.config is not None else "token"
    model = fuse(model).cpu()  # folded BN: a smaller graph with the same outputs
    s = model.encoder_size
    embed_dim = model.prompt_encoder.embed_dim
    gen = torch.Generator().manual_seed(0)
    encoder_inputs = OFFICIAL_ENCODER_INPUTS if official_names else ENCODER_INPUTS
    prompt_axes = {0: "batch", 1: "num_points"}
    with torch.no_grad():
        encoder_bytes = _export_bytes(
            model.image_encoder, (torch.randn(1, 3, s, s, generator=gen),),
            input_names=encoder_inputs, output_names=ENCODER_OUTPUTS,
            dynamic_axes={encoder_inputs[0]: {0: "batch"}, "image_embeddings": {0: "batch"}})
        decoder: nn.Module = OnnxDecoder(model.prompt_encoder, model.mask_decoder).eval()
        example = {k: torch.from_numpy(v)
                   for k, v in example_decoder_inputs(embed_dim, batch=2).items()}
        if official_names:
            decoder = OfficialOnnxDecoder(decoder, single_mask=single_mask).eval()
            inputs, outputs = OFFICIAL_DECODER_INPUTS, OFFICIAL_DECODER_OUTPUTS
        else:
            inputs, outputs = DECODER_INPUTS, DECODER_OUTPUTS
        decoder_bytes = _export_bytes(
            decoder, tuple(example[name] for name in inputs), input_names=inputs,
            output_names=outputs,
            dynamic_axes={"point_coords": prompt_axes, "point_labels": prompt_axes,
                          **({"mask_input": {0: "mask_batch"}} if not official_names else {}),
                          outputs[0]: {0: "batch"}, outputs[1]: {0: "batch"}})
    # What a single-mask request returns is the model's (SamConfig.single_mask): recorded in the
    # decoder graph's metadata for OnnxSamPredictor.
    decoder_bytes = _with_metadata(decoder_bytes, {"single_mask": single_mask_mode})
    paths = {"encoder": out / ENCODER_FILE, "decoder": out / DECODER_FILE}
    atomic_write(paths["encoder"], lambda p: Path(p).write_bytes(encoder_bytes))
    atomic_write(paths["decoder"], lambda p: Path(p).write_bytes(decoder_bytes))
    result: dict[str, object] = {"encoder_path": str(paths["encoder"]),
                                 "decoder_path": str(paths["decoder"])}
    if verify:
        result.update(verify_onnx(model, decoder, paths["encoder"], paths["decoder"],
                                  batch=batch_for_check, encoder_input=encoder_inputs[0],
                                  decoder_inputs=inputs))
    return result


def verify_onnx(model: EfficientViTSam, decoder: nn.Module, encoder_path: Path,
                decoder_path: Path, *, batch: int, encoder_input: str = ENCODER_INPUTS[0],
                decoder_inputs: list[str] = DECODER_INPUTS) -> dict[str, float]:
    """Largest |onnxruntime - PyTorch| for both graphs; raises past the stated tolerances."""
    import onnxruntime as ort

    s = model.encoder_size
    enc = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(decoder_path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    encoder_diff = 0.0
    with torch.no_grad():
        for b in sorted({1, batch}):
            x = torch.randn(b, 3, s, s, generator=gen)
            encoder_diff = max(encoder_diff, _max_diff(enc, {encoder_input: x.numpy()},
                                                       [model.image_encoder(x)]))
        decoder_diff = 0.0
        for n, b in ((1, 1), (5, batch)):
            feeds = example_decoder_inputs(model.prompt_encoder.embed_dim, num_points=n,
                                           batch=b, seed=n)
            feeds = {k: feeds[k] for k in decoder_inputs}
            expected = decoder(*(torch.from_numpy(feeds[k]) for k in decoder_inputs))
            decoder_diff = max(decoder_diff, _max_diff(dec, feeds, list(expected)))
    log.info("onnxruntime vs PyTorch: encoder %.2e (atol %g), decoder %.2e (atol %g)",
             encoder_diff, ENCODER_ATOL, decoder_diff, DECODER_ATOL)
    if encoder_diff > ENCODER_ATOL or decoder_diff > DECODER_ATOL:
        raise RuntimeError(f"ONNX outputs differ from PyTorch: encoder {encoder_diff:.3g} "
                           f"(atol {ENCODER_ATOL}), decoder {decoder_diff:.3g} "
                           f"(atol {DECODER_ATOL})")
    return {"encoder_max_abs_diff": encoder_diff, "decoder_max_abs_diff": decoder_diff}
