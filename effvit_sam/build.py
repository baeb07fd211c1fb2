"""Build EfficientViT-SAM models by name: ``build_sam("l0", checkpoint=path)``."""

from __future__ import annotations

from pathlib import Path

import torch

from .configs import MODEL_CONFIGS, OFFICIAL_VARIANTS, SamConfig, resolve_name
from .modeling import EfficientViTSam, build_efficientvit_sam


def list_models(*, official_only: bool = False) -> list[str]:
    """Registered model names (``official_only``: only those with released checkpoints)."""
    return list(OFFICIAL_VARIANTS if official_only else MODEL_CONFIGS)


def get_config(name: str) -> SamConfig:
    """The frozen config of a registered model; an unknown name raises with the valid names."""
    return MODEL_CONFIGS[resolve_name(name)]


def build_sam(name: str | SamConfig, *, checkpoint: str | Path | None = None,
              device: str | torch.device | None = None) -> EfficientViTSam:
    """Build a model by registry name (or from a config) and optionally load a checkpoint.

    Without ``checkpoint`` the weights are randomly initialised (for training). A checkpoint is
    loaded strictly: see :func:`effvit_sam.checkpoint.load_checkpoint`.
    """
    cfg = name if isinstance(name, SamConfig) else get_config(name)
    model = build_efficientvit_sam(cfg)
    if checkpoint is not None:
        from .checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint)
    if device is not None:
        model.to(device)
    return model
