"""Phase 2: the whole model (encoder, prompt encoder, mask decoder) trained on SA-1B masks.

Per image, its K masks are all prompted the same way this step: by their (jittered) boxes with
probability ``prompts.box_prob``, otherwise by n ~ U{1..max_points} clicks inside each mask. A
single click is ambiguous, so it gets the three multimask outputs and only the best is trained;
boxes and several clicks get the single-mask output (with ``prompts.multimask_all`` every
prompt gets the three outputs, as the zero-shot evaluator decodes them). Then
``iterative_rounds`` correction rounds: a click from the error region of the previous
prediction is added (``prompts.correction_click``: a random error pixel, or the evaluator's
innermost one) and that prediction's low-res logits are fed back as ``mask_input``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader

from effvit_sam.inference.decoder import FastMaskDecoder
from effvit_sam.modeling import EfficientViTSam

from .cache import checked_shards, expand_urls
from .config import Config, PromptConfig
from .engine import Task
from .init import build_model
from .losses import DICE_WEIGHT, FOCAL_WEIGHT, IOU_WEIGHT, sam_mask_loss
from .prompts import (
    correction_clicks,
    farthest_correction_clicks,
    jitter_boxes,
    near_negatives,
    sample_points,
)


class FinetuneStep(nn.Module):
    """``forward(batch, generator) -> (loss, parts)`` for a batch of SA-1B samples.

    batch: ``image`` B x 3 x S x S; per image ``masks`` K x M x M (bool, low-res prompt
    frame, M = the decoder's low-res side: 256 for a 64 x 64 embedding), ``boxes`` K x 4 (XYXY
    prompt frame) and ``input_size`` (h, w) in the prompt frame.
    """

    def __init__(self, sam: EfficientViTSam, prompts: PromptConfig, *, mask_loss: str,
                 focal_weight: float = FOCAL_WEIGHT, dice_weight: float = DICE_WEIGHT,
                 iou_weight: float = IOU_WEIGHT, fast_decoder: bool = True) -> None:
        super().__init__()
        self.sam = sam
        # The same decoder modules behind FastMaskDecoder's algebra, kept out of the module tree
        # (its parameters are the decoder's own: no second state-dict entry, nothing for DDP).
        self.__dict__["_fast_decoder"] = FastMaskDecoder(sam.mask_decoder) if fast_decoder \
            else None
        self.prompts = prompts
        self.mask_loss = mask_loss
        self.weights = {"kind": mask_loss, "focal_weight": focal_weight,
                        "dice_weight": dice_weight, "iou_weight": iou_weight}

    def _first_prompt(self, masks: torch.Tensor, boxes: torch.Tensor, input_size, generator):
        cfg = self.prompts
        if float(torch.rand((), generator=generator)) < cfg.box_prob:
            box = jitter_boxes(boxes, scale=cfg.box_jitter, max_px=cfg.max_box_jitter_px,
                               generator=generator, input_size=tuple(input_size))
            return None, box, cfg.multimask_all
        num = int(torch.randint(1, cfg.max_points + 1, (), generator=generator))
        points = sample_points(masks, num, generator)
        if num > 1 and cfg.negative_prob > 0 and float(
                torch.rand((), generator=generator)) < cfg.negative_prob:
            # the first click stays positive; the others become negatives near the object
            neg = near_negatives(masks, boxes, num - 1, generator)
            points = (torch.cat([points[0][:, :1], neg], 1),
                      torch.cat([points[1][:, :1], torch.zeros_like(points[1][:, 1:])], 1))
        return points, None, num == 1 or cfg.multimask_all

    def _decode(self, embedding: torch.Tensor, points, box, mask_input, multimask: bool):
        if self._fast_decoder is None:
            return self.sam.decode(embedding, points=points, boxes=box, mask_input=mask_input,
                                   multimask_output=multimask)
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=box, masks=mask_input)
        return self._fast_decoder(embedding, self.sam.prompt_encoder.get_dense_pe(), sparse,
                                  dense, multimask)

    def _image_loss(self, embedding: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                    input_size, generator: torch.Generator):
        points, box, multimask = self._first_prompt(masks, boxes, input_size, generator)
        logits, iou = self._decode(embedding, points, box, None, multimask)
        loss, parts, best = sam_mask_loss(logits, iou, masks, **self.weights)
        rounds = [loss]
        previous = logits[torch.arange(len(best)), best].detach()
        for _ in range(self.prompts.iterative_rounds):
            if self.prompts.correction_click == "farthest":
                click, label = farthest_correction_clicks(previous, masks)
            else:
                click, label = correction_clicks(previous, masks, generator)
            points = (click, label) if points is None else (
                torch.cat([points[0], click], 1), torch.cat([points[1], label], 1))
            feed = self.prompts.feed_prob >= 1 or float(
                torch.rand((), generator=generator)) < self.prompts.feed_prob
            logits, iou = self._decode(embedding, points, box,
                                       previous[:, None] if feed else None,
                                       self.prompts.multimask_all)
            round_loss, round_parts, best = sam_mask_loss(logits, iou, masks, **self.weights)
            rounds.append(round_loss)
            parts["mask_last_round"] = round_parts["mask"]
            previous = logits[torch.arange(len(best)), best].detach()
        return torch.stack(rounds).mean(), parts

    def forward(self, batch: dict, generator: torch.Generator
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device = self.sam.device
        # a frozen encoder (train.freeze) needs no graph: decoder-only steps skip its backward
        frozen = not any(p.requires_grad for p in self.sam.image_encoder.parameters())
        with torch.no_grad() if frozen else contextlib.nullcontext():
            embeddings = self.sam.encode(batch["image"].to(device))
        losses, parts_all = [], []
        for i in range(len(embeddings)):
            masks = batch["masks"][i].to(device)
            if len(masks) == 0:  # an image without annotations teaches nothing
                continue
            loss, parts = self._image_loss(embeddings[i: i + 1], masks,
                                           batch["boxes"][i].to(device).float(),
                                           batch["input_size"][i], generator)
            losses.append(loss)
            parts_all.append(parts)
        if not losses:  # keep the graph connected so DDP's all-reduce still runs
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0, {}
        keys = parts_all[0].keys()
        parts = {k: torch.stack([p[k] for p in parts_all if k in p]).mean() for k in keys}
        return torch.stack(losses).mean(), parts


def make_phase2_loader(cfg: Config, *, encoder_size: int, mask_size: int, epoch: int,
                       shards: str | None = None) -> Iterable[dict]:
    """Batches for one epoch; ``mask_size``: the model's low-res mask side (its
    ``prompt_encoder.mask_input_size``), at which the targets are read."""
    from .sa1b import collate_sa1b, sa1b_dataset

    seed = cfg.train.seed + epoch
    data = cfg.data
    dataset = sa1b_dataset(expand_urls(shards or data.shards), encoder_size=encoder_size,
                           max_masks=data.max_masks, seed=cfg.train.seed,
                           resampled=data.resampled, epoch_length=data.epoch_length,
                           shuffle_buffer=data.shuffle_buffer, mask_size=mask_size)
    dataset.set_epoch(epoch)
    return DataLoader(dataset, batch_size=data.batch_size, num_workers=data.num_workers,
                      collate_fn=collate_sa1b, drop_last=True,
                      generator=torch.Generator().manual_seed(seed))


def phase2_task(cfg: Config, accelerator) -> Task:
    """The whole model (:func:`~distill.init.build_model`), its fine-tuning step and the loader."""
    model = build_model(cfg.model)
    checked_shards(cfg.data.shards, "data.shards")  # a typo fails here, not as "no batch"
    step = FinetuneStep(model, cfg.prompts, mask_loss=cfg.train.mask_loss,
                        focal_weight=cfg.train.focal_weight, dice_weight=cfg.train.dice_weight,
                        iou_weight=cfg.train.iou_weight, fast_decoder=cfg.train.fast_decoder)
    return Task(model=model, step_module=step,
                make_loader=lambda epoch: make_phase2_loader(
                    cfg, encoder_size=model.encoder_size, epoch=epoch,
                    mask_size=model.prompt_encoder.mask_input_size[0]))
