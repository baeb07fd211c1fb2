"""Mask IoU and the mIoU summaries (overall, by COCO size bucket and by category)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .datasets import SIZE_BUCKETS


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two ``H x W`` bool masks; two empty masks agree perfectly (1.0)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


@dataclass(frozen=True)
class InstanceResult:
    """One evaluated instance: its IoU after each prompt round (one round for box prompts)."""

    ann_id: int
    image_id: int
    size: str
    ious: tuple[float, ...]
    category_id: int | None = None


def miou_table(results: list[InstanceResult], *, rounds: list[int] | None = None,
               prefix: str = "mIoU") -> dict[str, float | None]:
    """mIoU in percent, overall and per size bucket, for each listed round (1-based).

    ``rounds=None`` summarises the single round of box prompts, keyed ``mIoU``, ``mIoU_small``,
    ...; with rounds the keys are ``mIoU@1click``, ``mIoU_small@1click``, .... Results are
    summed in ``(image_id, ann_id)`` order, so the process layout never changes the sum. An empty
    bucket gives ``None``.
    """
    ordered = sorted(results, key=lambda r: (r.image_id, r.ann_id))
    table: dict[str, float | None] = {}
    for round_ in rounds or [1]:
        suffix = f"@{round_}click" if rounds else ""
        for bucket in ("all", *SIZE_BUCKETS):
            chosen = [r.ious[round_ - 1] for r in ordered if bucket in ("all", r.size)]
            key = prefix if bucket == "all" else f"{prefix}_{bucket}"
            table[key + suffix] = 100.0 * float(np.mean(chosen)) if chosen else None
    return table


def size_counts(results: list[InstanceResult]) -> dict[str, int]:
    """How many instances fell in each size bucket (and in all)."""
    counts = {"all": len(results)} | {b: 0 for b in SIZE_BUCKETS}
    for r in results:
        counts[r.size] += 1
    return counts


def miou_by_category(results: list[InstanceResult], names: dict[int, str], *,
                     rounds: list[int] | None = None) -> dict[str, dict[str, float | int]]:
    """Per category (keyed by its name from ``names``, else its id): ``count`` and the overall
    mIoU keys of :func:`miou_table` (``mIoU``, or ``mIoU@1click``, ... with ``rounds``),
    worst first by the last round's mIoU; instances without a category are left out."""
    groups: dict[int, list[InstanceResult]] = {}
    for r in results:
        if r.category_id is not None:
            groups.setdefault(r.category_id, []).append(r)
    rows = {}
    for cat, members in groups.items():
        table = miou_table(members, rounds=rounds)
        overall = {k: v for k, v in table.items() if not k.split("@")[0].count("_")}
        rows[names.get(cat, str(cat))] = {"count": len(members), **overall}
    last = f"mIoU@{rounds[-1]}click" if rounds else "mIoU"
    return dict(sorted(rows.items(), key=lambda kv: (kv[1][last], kv[0])))
