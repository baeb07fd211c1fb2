"""What fine-tuning trains: frozen parts (``train.freeze``) and per-part learning rates
(``train.part_lr``), over the model's three parts ``image_encoder``, ``prompt_encoder`` and
``mask_decoder``.

A frozen part has ``requires_grad=False`` (no gradient is computed or kept for it), is left out
of the optimizer (AdamW's weight decay would otherwise still shrink it) and stays in eval mode
while the rest trains, so its BatchNorm running statistics do not move either.
"""

from __future__ import annotations

import torch
from torch import nn

from effvit_sam.modeling import EfficientViTSam

from .config import MODEL_PARTS, TrainConfig


def freeze_parts(model: EfficientViTSam, parts: list[str]) -> None:
    """``requires_grad=False`` for every parameter of the named parts, and eval mode."""
    for name in parts:
        part = getattr(model, name)
        part.requires_grad_(False)
        part.eval()


def set_train_mode(module: nn.Module, model: EfficientViTSam, frozen: list[str]) -> None:
    """``module.train()`` (the step module wrapping ``model``), frozen parts back in eval."""
    module.train()
    for name in frozen:
        getattr(model, name).eval()


def param_groups(module: nn.Module, model: EfficientViTSam, cfg: TrainConfig) -> list[dict]:
    """AdamW parameter groups of ``module``'s trainable parameters.

    Per learning-rate multiplier (``cfg.part_lr.get(part, 1.0)`` of each parameter's part), one
    group with weight decay (params of >= 2 dims) and one without (norms, biases, embeddings);
    a group's ``lr`` is ``cfg.lr`` times its ``lr_scale``. Without ``part_lr`` that is the two
    groups of a plain run, in ``module.parameters()`` order, so older checkpoints still resume.
    """
    owner = {id(p): name for name in MODEL_PARTS for p in getattr(model, name).parameters()}
    by_scale: dict[float, list[nn.Parameter]] = {}
    for p in module.parameters():
        if p.requires_grad:
            scale = cfg.part_lr.get(owner.get(id(p), ""), 1.0)
            by_scale.setdefault(scale, []).append(p)
    groups = []
    for scale, params in by_scale.items():
        for decay in (True, False):
            chosen = [p for p in params if (p.ndim >= 2) == decay]
            if chosen:
                groups.append({"params": chosen, "weight_decay": cfg.weight_decay if decay else 0.0,
                               "lr": cfg.lr * scale, "lr_scale": scale})
    return groups


def build_optimizer(module: nn.Module, model: EfficientViTSam, cfg: TrainConfig
                    ) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; frozen parameters are not in it."""
    return torch.optim.AdamW(param_groups(module, model, cfg), lr=cfg.lr, betas=cfg.betas)
