"""Interactive Gradio demo of EfficientViT-SAM."""
