"""effvit-sam: fast Segment Anything with EfficientViT image encoders.

The public names are imported lazily (PEP 562), so ``import effvit_sam.onnx_predictor`` - the
onnxruntime predictor, numpy only - does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "build_sam": ".build", "get_config": ".build", "list_models": ".build",
    "CheckpointError": ".checkpoint", "from_pretrained": ".checkpoint",
    "load_checkpoint": ".checkpoint", "save_pretrained": ".checkpoint",
    "MODEL_CONFIGS": ".configs", "EncoderConfig": ".configs", "SamConfig": ".configs",
    "EfficientViTSam": ".modeling",
    "fuse_model": ".fuse",
    "EfficientViTSamPredictor": ".predictor",
    "EfficientViTSamAutomaticMaskGenerator": ".automatic",
}

__all__ = [
    "MODEL_CONFIGS", "CheckpointError", "EfficientViTSam", "EfficientViTSamAutomaticMaskGenerator",
    "EfficientViTSamPredictor", "EncoderConfig", "SamConfig", "build_sam", "from_pretrained",
    "fuse_model",
    "get_config", "list_models", "load_checkpoint", "save_pretrained",
]

if TYPE_CHECKING:
    from .automatic import EfficientViTSamAutomaticMaskGenerator
    from .build import build_sam, get_config, list_models
    from .checkpoint import CheckpointError, from_pretrained, load_checkpoint, save_pretrained
    from .configs import MODEL_CONFIGS, EncoderConfig, SamConfig
    from .fuse import fuse_model
    from .modeling import EfficientViTSam
    from .predictor import EfficientViTSamPredictor


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
