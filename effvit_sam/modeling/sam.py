"""EfficientViT-SAM: an EfficientViT image encoder composed with SAM's own prompt encoder and
mask decoder (from the ``segment_anything`` package)."""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

from .. import geometry
from ..configs import SamConfig
from .encoder import EfficientViTImageEncoder


class EfficientViTSam(nn.Module):
    """Image encoder + prompt encoder + mask decoder.

    ``forward`` is trainable (no ``no_grad`` inside); the predictor wraps inference. Any module
    with SAM's encoder interface (``img_size`` attribute, ``B x 3 x S x S`` in, ``B x C x 64 x 64``
    out) can be passed as ``image_encoder``.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder,
                 mask_decoder: MaskDecoder, *, config: SamConfig | None = None) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.config = config

    @property
    def encoder_size(self) -> int:
        """Side of the square encoder input (512 for L models, 1024 for XL)."""
        return int(self.image_encoder.img_size)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, image) -> torch.Tensor:
        """``H x W x 3`` uint8 RGB numpy image to the ``1 x 3 x S x S`` encoder input."""
        return geometry.preprocess_image(image, self.encoder_size).to(self.device)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``B x 3 x S x S`` preprocessed images to ``B x C x 64 x 64`` embeddings."""
        return self.image_encoder(images)

    def decode(self, embedding: torch.Tensor, *, points: tuple[torch.Tensor, torch.Tensor] | None,
               boxes: torch.Tensor | None, mask_input: torch.Tensor | None,
               multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode K prompts against one image's ``1 x C x 64 x 64`` embedding.

        points: ``(coords K x N x 2, labels K x N)`` in the prompt (1024) frame, (x, y) pixels.
        boxes: ``K x 4`` XYXY in the prompt frame. mask_input: ``K x 1 x 256 x 256`` logits.
        Returns ``(low_res_logits K x M x 256 x 256, iou_predictions K x M)``, M = 3 or 1.
        """
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        return self.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def forward(self, images: torch.Tensor, *, points: list | None = None,
                boxes: list | None = None, mask_inputs: list | None = None,
                multimask_output: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Encode a batch and decode each image's prompts (all in the prompt frame).

        ``points``, ``boxes`` and ``mask_inputs`` are per-image lists (entries may be ``None``)
        in the shapes of :meth:`decode`. Returns one ``(low_res_logits, iou)`` per image.
        """
        embeddings = self.encode(images)
        n = len(embeddings)
        points = points or [None] * n
        boxes = boxes or [None] * n
        mask_inputs = mask_inputs or [None] * n
        return [self.decode(embeddings[i: i + 1], points=points[i], boxes=boxes[i],
                            mask_input=mask_inputs[i], multimask_output=multimask_output)
                for i in range(n)]

    def postprocess_masks(self, masks: torch.Tensor, input_size: tuple[int, int],
                          original_size: tuple[int, int]) -> torch.Tensor:
        """Low-res logits to the original frame (see :func:`geometry.postprocess_masks`)."""
        return geometry.postprocess_masks(masks, input_size, original_size)


def build_prompt_encoder(cfg: SamConfig) -> PromptEncoder:
    size = geometry.PROMPT_FRAME
    embed = cfg.encoder.embed_size
    return PromptEncoder(embed_dim=cfg.prompt_embed_dim, image_embedding_size=(embed, embed),
                         input_image_size=(size, size), mask_in_chans=cfg.mask_in_chans)


def build_mask_decoder(cfg: SamConfig) -> MaskDecoder:
    transformer = TwoWayTransformer(depth=cfg.decoder_depth, embedding_dim=cfg.prompt_embed_dim,
                                    mlp_dim=cfg.decoder_mlp_dim, num_heads=cfg.decoder_heads)
    # SAM's TwoWayTransformer builds its LayerNorms with torch's default eps (1e-5); the official
    # EfficientViT-SAM models run them with 1e-6.
    for module in transformer.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = cfg.transformer_norm_eps
    decoder = MaskDecoder(num_multimask_outputs=cfg.num_multimask_outputs,
                          transformer=transformer, transformer_dim=cfg.prompt_embed_dim,
                          iou_head_depth=cfg.iou_head_depth,
                          iou_head_hidden_dim=cfg.iou_head_hidden_dim)
    if cfg.mask_channels != cfg.prompt_embed_dim // 8:
        _widen_mask_head(decoder, cfg.prompt_embed_dim, cfg.mask_channels)
    return decoder


def _widen_mask_head(decoder: MaskDecoder, dim: int, mask_dim: int) -> None:
    """Rebuild SAM's upscaling and the hypernetworks' last layers for ``mask_dim`` channels
    (SAM's layers and names, fresh weights): a mask is a per-pixel combination of these
    channels, and SAM's ``dim // 8`` (8 for a 64-wide decoder) is too few to draw a small
    model's masks."""
    hidden = 2 * mask_dim
    decoder.output_upscaling = nn.Sequential(
        nn.ConvTranspose2d(dim, hidden, kernel_size=2, stride=2), LayerNorm2d(hidden), nn.GELU(),
        nn.ConvTranspose2d(hidden, mask_dim, kernel_size=2, stride=2), nn.GELU())
    for mlp in decoder.output_hypernetworks_mlps:
        mlp.layers[-1] = nn.Linear(mlp.layers[-1].in_features, mask_dim)


def build_efficientvit_sam(cfg: SamConfig) -> EfficientViTSam:
    return EfficientViTSam(EfficientViTImageEncoder(cfg.encoder), build_prompt_encoder(cfg),
                           build_mask_decoder(cfg), config=cfg)
