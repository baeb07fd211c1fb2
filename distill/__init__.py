"""Two-phase EfficientViT-SAM distillation: encoder distillation, then end-to-end fine-tuning."""
