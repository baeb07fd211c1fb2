"""Model definitions: EfficientViT blocks, backbone, neck, image encoder and the SAM wrapper."""

from .encoder import EfficientViTBackbone, EfficientViTImageEncoder, SamNeck
from .sam import EfficientViTSam, build_efficientvit_sam

__all__ = ["EfficientViTBackbone", "EfficientViTImageEncoder", "EfficientViTSam", "SamNeck",
           "build_efficientvit_sam"]
