"""Phase 1: the student's image encoder learns to reproduce the teacher's embeddings.

Targets come from the teacher-embedding cache (``data.cache``) or from a live teacher run on
the raw image of each SA-1B sample; both give the same losses up to fp16 rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .cache import cached_dataset, checked_shards, collate_cached, expand_urls
from .config import Config
from .engine import Task
from .init import build_model
from .losses import embedding_loss
from .teacher import build_teacher, raw_images


class DistillStep(nn.Module):
    """``forward(batch, generator) -> (loss, parts)``: student encoder vs teacher embedding.

    Without ``teacher_embedding`` in the batch (live mode) the frozen ``teacher_fn`` computes it
    from ``image_raw``; the teacher is a plain callable, not a submodule, so it is neither
    optimised nor wrapped by DDP.
    """

    def __init__(self, encoder: nn.Module, *, loss: str,
                 teacher_fn: Callable[[list[np.ndarray]], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.loss = loss
        self.teacher_fn = teacher_fn

    def forward(self, batch: dict, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device = next(self.encoder.parameters()).device
        target = batch.get("teacher_embedding")
        if target is None:
            if self.teacher_fn is None:
                raise ValueError("batch has no teacher_embedding and no live teacher was given")
            target = self.teacher_fn(raw_images(batch))
        student = self.encoder(batch["image"].to(device))
        loss = embedding_loss(student, target.to(device), self.loss)
        return loss, {"embed_" + self.loss: loss.detach()}


def make_phase1_loader(cfg: Config, *, encoder_size: int, epoch: int) -> Iterable[dict]:
    """Batches for one epoch from the cache, or raw SA-1B samples for a live teacher."""
    seed = cfg.train.seed + epoch
    data = cfg.data
    if data.cache:
        dataset = cached_dataset(data.cache, encoder_size=encoder_size, seed=seed,
                                 resampled=data.resampled, epoch_length=data.epoch_length,
                                 shuffle_buffer=data.shuffle_buffer)
        collate = collate_cached
    else:
        from .sa1b import collate_sa1b, sa1b_dataset

        dataset = sa1b_dataset(expand_urls(data.shards), encoder_size=encoder_size, max_masks=1,
                               seed=cfg.train.seed, resampled=data.resampled,
                               epoch_length=data.epoch_length,
                               shuffle_buffer=data.shuffle_buffer, keep_raw=True)
        dataset.set_epoch(epoch)
        collate = collate_sa1b
    # a loader-owned generator keeps DataLoader seeding off the global RNG (exact resume)
    return DataLoader(dataset, batch_size=data.batch_size, num_workers=data.num_workers,
                      collate_fn=collate, drop_last=True,
                      generator=torch.Generator().manual_seed(seed))


def phase1_task(cfg: Config, accelerator) -> Task:
    """The student (:func:`~distill.init.build_model`), its encoder's distillation step and the
    loader; a live teacher on the accelerator's device unless ``data.cache`` is set."""
    model = build_model(cfg.model)
    if cfg.data.cache:
        checked_shards(cfg.data.cache, "data.cache")  # a typo fails here, not as "no batch"
    else:
        checked_shards(cfg.data.shards, "data.shards")
    teacher_fn = None
    if not cfg.data.cache:
        teacher = build_teacher(cfg.teacher, device=accelerator.device, seed=cfg.train.seed)
        teacher_fn = teacher
    step = DistillStep(model.image_encoder, loss=cfg.train.embed_loss, teacher_fn=teacher_fn)
    return Task(model=model, step_module=step,
                make_loader=lambda epoch: make_phase1_loader(cfg, encoder_size=model.encoder_size,
                                                             epoch=epoch))
