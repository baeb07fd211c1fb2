"""effvit-sam: fast Segment Anything with EfficientViT image encoders.

The public names are imported lazily (PEP 562), so ``import effvit_sam.export.onnx_predictor``
- the onnxruntime predictor, numpy only - does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "build_sam": ".build", "from_pretrained": ".build",
    "CheckpointError": ".checkpoint", "load_checkpoint": ".checkpoint",
    "save_pretrained": ".checkpoint",
    "MODEL_CONFIGS": ".configs", "EncoderConfig": ".configs", "SamConfig": ".configs",
    "get_config": ".configs", "list_models": ".configs",
    "EfficientViTSam": ".modeling",
    "FastPathOptions": ".inference", "fuse_model": ".inference",
    "optimize_for_inference": ".inference",
    "EfficientViTSamPredictor": ".predictor",
    "EfficientViTSamAutomaticMaskGenerator": ".automatic",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .automatic import EfficientViTSamAutomaticMaskGenerator
    from .build import build_sam, from_pretrained
    from .checkpoint import CheckpointError, load_checkpoint, save_pretrained
    from .configs import MODEL_CONFIGS, EncoderConfig, SamConfig, get_config, list_models
    from .inference import FastPathOptions, fuse_model, optimize_for_inference
    from .modeling import EfficientViTSam
    from .predictor import EfficientViTSamPredictor


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
