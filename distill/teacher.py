"""The phase-1 teacher: any SAM-family image encoder, frozen and in inference mode.

SAM ViT-B/L/H come from ``segment_anything`` (1024 input); any EfficientViT-SAM checkpoint
(a ``save_pretrained`` directory or a weights file) works too. Either way the teacher sees
:func:`effvit_sam.geometry.preprocess_image` of the raw image at its own input size, the same
normalisation SAM uses, so cached and live embeddings are the same numbers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from effvit_sam import build_sam
from effvit_sam.checkpoint import read_state_dict
from effvit_sam.geometry import preprocess_image

from .config import ConfigError, TeacherConfig

log = logging.getLogger(__name__)
SAM_VIT_NAMES = ("vit_b", "vit_l", "vit_h")


def raw_images(batch: dict) -> list[np.ndarray]:
    """A batch's ``image_raw`` (uint8 ``3 x H x W`` tensors) as the ``H x W x 3`` arrays a
    :class:`Teacher` takes."""
    return [image.permute(1, 2, 0).cpu().numpy() for image in batch["image_raw"]]


class Teacher(nn.Module):
    """A frozen image encoder: raw uint8 images in, ``B x C x 64 x 64`` embeddings out."""

    def __init__(self, encoder: nn.Module, *, input_size: int, name: str) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.input_size = input_size
        self.name = name

    def train(self, mode: bool = True) -> Teacher:  # a teacher never leaves eval mode
        return super().train(False)

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """``H x W x 3`` uint8 images (any sizes) to the ``B x 3 x S x S`` teacher input."""
        return torch.cat([preprocess_image(image, self.input_size) for image in images])

    def forward(self, images: list[np.ndarray]) -> torch.Tensor:
        """``B x C x 64 x 64`` float32 embeddings, usable as a training target."""
        device = next(self.encoder.parameters()).device
        with torch.inference_mode():
            out = self.encoder(self.preprocess(images).to(device)).float()
        # an inference-mode tensor cannot be saved for the student's backward; a clone can
        return out.clone()


def _sam_vit(name: str, checkpoint: str | None) -> tuple[nn.Module, int]:
    from segment_anything import sam_model_registry

    if name not in SAM_VIT_NAMES:
        raise ConfigError(f"teacher.name: unknown SAM teacher {name!r}; valid: {SAM_VIT_NAMES}")
    sam = sam_model_registry[name]()  # built without weights: we load strictly ourselves
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        sam.load_state_dict(state, strict=True)
    return sam.image_encoder, int(sam.image_encoder.img_size)


def _efficientvit(name: str, checkpoint: str | None) -> tuple[nn.Module, int]:
    """An EfficientViT-SAM teacher: random (``checkpoint`` None: smoke runs, seeded by the
    caller) or through the package's one weight policy (a weights file or a save_pretrained
    folder, strictly; a folder of another variant is an error)."""
    from effvit_sam.weights import resolve_model

    if checkpoint is None:
        model = build_sam(name)
    else:
        model, _ = resolve_model(name, checkpoint=checkpoint)
    return model.image_encoder, model.encoder_size


def build_teacher(cfg: TeacherConfig, *, device: torch.device | str = "cpu",
                  seed: int = 0) -> Teacher:
    """Build the configured teacher on ``device``.

    Without a checkpoint this raises unless ``cfg.random_init`` (smoke runs, benchmarks), in
    which case the weights come from ``torch.manual_seed(seed)`` so every rank builds the same.
    """
    if cfg.checkpoint is None and not cfg.random_init:
        raise ConfigError(f"teacher {cfg.kind}:{cfg.name} needs teacher.checkpoint (set "
                         "teacher.random_init=true only for smoke runs)")
    if cfg.checkpoint is not None and not Path(cfg.checkpoint).expanduser().exists():
        raise ConfigError(f"teacher.checkpoint: teacher checkpoint not found: {cfg.checkpoint}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.kind == "sam":
            encoder, size = _sam_vit(cfg.name, cfg.checkpoint)
        else:
            encoder, size = _efficientvit(cfg.name, cfg.checkpoint)
    if cfg.checkpoint is None:
        log.warning("teacher %s:%s has RANDOM weights (random_init=true)", cfg.kind, cfg.name)
    return Teacher(encoder, input_size=size, name=f"{cfg.kind}:{cfg.name}").to(device)
