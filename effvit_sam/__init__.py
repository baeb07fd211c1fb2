"""effvit-sam: fast Segment Anything with EfficientViT image encoders."""

from .build import build_sam, get_config, list_models
from .checkpoint import CheckpointError, from_pretrained, load_checkpoint, save_pretrained
from .configs import MODEL_CONFIGS, EncoderConfig, SamConfig
from .modeling import EfficientViTSam
from .predictor import EfficientViTSamPredictor

__version__ = "0.1.0"

__all__ = [
    "MODEL_CONFIGS", "CheckpointError", "EfficientViTSam", "EfficientViTSamPredictor",
    "EncoderConfig", "SamConfig",
    "build_sam", "from_pretrained", "get_config", "list_models", "load_checkpoint",
    "save_pretrained",
]
