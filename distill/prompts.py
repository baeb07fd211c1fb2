"""Phase-2 prompt sampling from ground-truth masks, always with a seeded ``torch.Generator``.

Masks arrive in the low-resolution prompt frame: SAM's padded 1024 frame divided by a stride,
``K x 256 x 256`` (stride :data:`LOW_RES_STRIDE`, 4) for a 64 x 64 embedding, ``K x 384 x 384``
(stride 8/3) for a model whose embedding is 96 x 96; the stride is read from the masks' width.
A low-res pixel ``(row, col)`` is the prompt-frame point at the centre of its cell, ``(x, y) =
((col + 1/2) * stride, (row + 1/2) * stride)``: ``(col * 4 + 2, row * 4 + 2)`` at 256.
"""

from __future__ import annotations

import torch

from effvit_sam.geometry import LOW_RES_MASK_SIZE, PROMPT_FRAME
from eval.clicks import first_click, next_click

LOW_RES_STRIDE = PROMPT_FRAME // LOW_RES_MASK_SIZE


def low_res_stride(width: int) -> float:
    """Prompt-frame pixels per low-res pixel for masks ``width`` wide (4.0 at 256)."""
    return PROMPT_FRAME / width


def pixels_to_points(flat_index: torch.Tensor, width: int = LOW_RES_MASK_SIZE) -> torch.Tensor:
    """Flat low-res pixel indices (``...``) of masks ``width`` wide to prompt-frame ``(x, y)``
    points (``... x 2``)."""
    rows = torch.div(flat_index, width, rounding_mode="floor")
    cols = flat_index % width
    stride = low_res_stride(width)
    return torch.stack([(cols + 0.5) * stride, (rows + 0.5) * stride], -1).float()


def sample_in_regions(regions: torch.Tensor, num: int, generator: torch.Generator) -> torch.Tensor:
    """``num`` uniformly random pixels inside each of ``K x H x W`` boolean regions.

    Returns ``K x num`` flat indices; an empty region yields its centre pixel (callers mark
    such prompts with label -1 where it matters).
    """
    k = regions.shape[0]
    weights = regions.flatten(1).float().cpu()
    empty = weights.sum(1) == 0
    height, width = regions.shape[-2:]
    weights[empty, (height // 2) * width + width // 2] = 1.0
    picks = torch.multinomial(weights, num, replacement=True, generator=generator)
    return picks.view(k, num).to(regions.device)


def sample_points(masks: torch.Tensor, num: int, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` positive clicks inside each of ``K x H x W`` low-res masks (``H = W``).

    Returns ``(coords K x num x 2, labels K x num)`` in the prompt frame.
    """
    flat = sample_in_regions(masks.bool(), num, generator)
    coords = pixels_to_points(flat, masks.shape[-1])
    return coords, torch.ones(flat.shape, dtype=torch.int64, device=masks.device)


def near_negatives(masks: torch.Tensor, boxes: torch.Tensor, num: int,
                   generator: torch.Generator) -> torch.Tensor:
    """``num`` negative clicks per mask, uniformly in its prompt-frame XYXY box grown by half
    its size on each side, outside the mask (where a user's corrective negative clicks land).
    Returns ``K x num x 2`` prompt-frame points (a mask filling its grown box gets its centre
    pixel, see :func:`sample_in_regions`)."""
    k, height, width = masks.shape
    low = (boxes / low_res_stride(width)).to(masks.device)
    grow = torch.stack([low[:, 2] - low[:, 0], low[:, 3] - low[:, 1]] * 2, 1) * 0.5
    grown = low + grow * torch.tensor([-1.0, -1.0, 1.0, 1.0], device=masks.device)
    rows = torch.arange(height, device=masks.device)[None, :, None] + 0.5
    cols = torch.arange(width, device=masks.device)[None, None, :] + 0.5
    inside = ((cols >= grown[:, 0, None, None]) & (cols <= grown[:, 2, None, None])
              & (rows >= grown[:, 1, None, None]) & (rows <= grown[:, 3, None, None]))
    flat = sample_in_regions(inside & ~masks.bool(), num, generator)
    return pixels_to_points(flat, width)


def jitter_boxes(boxes: torch.Tensor, *, scale: float, max_px: float,
                 generator: torch.Generator, input_size: tuple[int, int]) -> torch.Tensor:
    """Add SAM-style noise to ``K x 4`` XYXY prompt-frame boxes.

    Each coordinate moves by ``N(0, scale * side)`` of its box side, capped at ``max_px`` pixels,
    then is clipped to the image (``input_size`` = ``(h, w)`` in the prompt frame).
    """
    if scale <= 0 or len(boxes) == 0:
        return boxes
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1)
    side = torch.stack([w, h, w, h], 1)
    noise = torch.randn(boxes.shape, generator=generator).to(boxes.device)
    shift = (noise * scale * side).clamp(-max_px, max_px)
    out = boxes + shift
    limits = torch.tensor([input_size[1], input_size[0]] * 2, dtype=out.dtype, device=out.device)
    out = torch.minimum(out.clamp(min=0), limits)
    # keep x0 <= x1 and y0 <= y1 after the noise
    x0, x1 = torch.minimum(out[:, 0], out[:, 2]), torch.maximum(out[:, 0], out[:, 2])
    y0, y1 = torch.minimum(out[:, 1], out[:, 3]), torch.maximum(out[:, 1], out[:, 3])
    return torch.stack([x0, y0, x1, y1], 1)


def correction_clicks(pred_logits: torch.Tensor, masks: torch.Tensor,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per prompt, sampled uniformly from the error region.

    ``pred_logits``: ``K x H x W`` previous low-res prediction; ``masks``: ``K x H x W`` truth.
    A pixel the prediction missed (false negative) becomes a positive click (label 1), one it
    wrongly covered (false positive) a negative click (label 0). Where the prediction is already
    perfect the click lands inside the mask as a positive (it confirms, as a user would).
    Returns ``(coords K x 1 x 2, labels K x 1)`` in the prompt frame.
    """
    pred = pred_logits > 0
    truth = masks.bool()
    error = pred ^ truth
    perfect = ~error.flatten(1).any(1)
    region = torch.where(perfect[:, None, None], truth, error)
    flat = sample_in_regions(region, 1, generator)
    labels = truth.flatten(1).gather(1, flat).long()
    return pixels_to_points(flat, masks.shape[-1]), labels


def farthest_correction_clicks(pred_logits: torch.Tensor, masks: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per prompt by the evaluator's rule (RITM's clicker,
    :func:`eval.clicks.next_click`) in the low-res frame: at the point of the larger error region
    farthest from its boundary, positive for missed pixels, negative for wrongly covered ones.
    Where the prediction is exact the click confirms at the mask's innermost pixel (label 1);
    an empty mask gets its centre pixel, label 0. Deterministic: no generator.

    ``pred_logits``, ``masks``: ``K x H x W`` (low-res). Returns ``(coords K x 1 x 2, labels
    K x 1)``.
    """
    pred = (pred_logits > 0).cpu().numpy()
    truth = masks.bool().cpu().numpy()
    height, width = truth.shape[-2:]
    flat, labels = [], []
    for gt, guess in zip(truth, pred, strict=True):
        click = next_click(gt, guess)
        if click is None and gt.any():
            click = first_click(gt)  # exact: confirm at the innermost pixel
        if click is None:
            flat.append((height // 2) * width + width // 2)
            labels.append(0)
        else:
            flat.append(click.y * width + click.x)
            labels.append(int(click.positive))
    device = masks.device
    coords = pixels_to_points(torch.tensor(flat, device=device)[:, None], width)
    return coords, torch.tensor(labels, dtype=torch.int64, device=device)[:, None]

