"""Phase 1: the student's image encoder learns to reproduce the teacher's embeddings.

Targets come from the teacher-embedding cache (``data.cache``) or from a live teacher run on
the raw image of each SA-1B sample; both give the same losses up to fp16 rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from effvit_sam import build_sam
from effvit_sam.modeling import EfficientViTSam

from .cache import cached_dataset, collate_cached, expand_urls
from .config import Config
from .engine import Task, train
from .losses import embedding_loss
from .teacher import Teacher, build_teacher

log = logging.getLogger(__name__)


def raw_images(batch: dict) -> list[np.ndarray]:
    """The batch's ``image_raw`` (uint8 ``3 x H x W`` tensors) as ``H x W x 3`` arrays."""
    return [image.permute(1, 2, 0).cpu().numpy() for image in batch["image_raw"]]


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


def build_student(cfg: Config) -> EfficientViTSam:
    """The student model, optionally initialised from ``model.init`` (strictly).

    Phase 1 trains only the image encoder; ``model.decoder_from`` (e.g. the teacher's weights)
    puts a prompt encoder and mask decoder next to it, so the run's ``pretrained/`` folder is a
    complete model that can be evaluated before phase 2.
    """
    from .phase2 import load_decoder_from, load_init

    model = build_sam(cfg.model.name)
    if cfg.model.init:
        load_init(model, cfg.model.init)
    if cfg.model.decoder_from:
        load_decoder_from(model, cfg.model.decoder_from)
    return model


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
    model = build_student(cfg)
    teacher_fn = None
    if not cfg.data.cache:
        teacher = build_teacher(cfg.teacher, device=accelerator.device, seed=cfg.train.seed)
        teacher_fn = teacher
    step = DistillStep(model.image_encoder, loss=cfg.train.embed_loss, teacher_fn=teacher_fn)
    return Task(model=model, step_module=step,
                make_loader=lambda epoch: make_phase1_loader(cfg, encoder_size=model.encoder_size,
                                                             epoch=epoch))


def run_phase1(cfg: Config, *, resume: str | None = None):
    if cfg.phase != 1:
        raise ValueError(f"this is a phase-{cfg.phase} config; run it with 'effvit-sam finetune'")
    return train(cfg, phase1_task, resume=resume)


@torch.no_grad()
def embedding_mse(encoder: nn.Module, teacher: Teacher, batches: Iterable[dict], *,
                  max_batches: int | None = None) -> float:
    """Mean squared error between student and teacher embeddings over ``batches``
    (SA-1B batches with ``image`` and ``image_raw``), the encoder in eval mode."""
    was_training = encoder.training
    encoder.eval()
    total, count = 0.0, 0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        device = next(encoder.parameters()).device
        target = teacher(raw_images(batch)).to(device)
        student = encoder(batch["image"].to(device))
        total += float(((student - target) ** 2).mean()) * len(target)
        count += len(target)
    encoder.train(was_training)
    if count == 0:
        raise ValueError("no batches to measure the embedding MSE on")
    return total / count
