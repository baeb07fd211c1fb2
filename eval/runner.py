"""The evaluation loop: per image, every prompt in batched decoder calls; images split over
processes; per-image records gathered on the main process and scored there.

Modes:

* ``box`` - each ground-truth instance prompted with its own box, multimask output, the mask
  with the highest predicted IoU kept; mIoU overall and by size.
* ``box-from-detector`` - a detector's boxes prompt the model the same way; the masks, with the
  detector's scores and categories, are scored by COCOeval / LVISEval (mask AP).
* ``point`` - simulated clicks (:mod:`eval.clicks`): round r gives all r clicks so far, with
  multimask output and the best-scored mask kept, in every round, as the official
  EfficientViT-SAM evaluation does. By default the previous round's low-res logits are *not*
  fed back as ``mask_input`` (``feed_logits=True``, ``--feed-logits``, does): the official
  figures are measured from the clicks alone, and each round then measures the prompts, not the
  decoder's memory of its own mistakes.

Crowd annotations (``iscrowd: 1``) are skipped in the mIoU modes by default: a crowd region
covers many objects, so one object's mask IoU against it means little. The official script
keeps them; ``include_crowd=True`` (``--include-crowd``) does too, to compare exactly.
COCOeval handles crowds itself in ``box-from-detector``.

Bad data is skipped and counted, never prompted or scored: the summary's ``skipped`` holds a
count for every :data:`eval.datasets.SKIP_REASONS` key (ground truth with a bad RLE or polygon,
a malformed, degenerate or off-image box, an empty mask; detections with a bad box or score or
none of their box on the image). In ``box-from-detector`` the ground truth given to the scorer
leaves out the annotations whose segmentation fails validation.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from effvit_sam.errors import UserError
from effvit_sam.geometry import xywh_to_xyxy
from effvit_sam.masks import mask_to_rle

from .clicks import Click, clicks_to_arrays, first_click, next_click
from .coco_metrics import LVIS_MAX_DETS, coco_segm_ap, lvis_segm_ap
from .datasets import SKIP_REASONS, EvalDataset, Instance, load_detections
from .metrics import InstanceResult, mask_iou, miou_by_category, miou_table, size_counts
from .predictors import BatchPredictor, predict_best

logger = logging.getLogger(__name__)

MODES = ("box", "box-from-detector", "point")
REPORTED_CLICKS = (1, 3, 5)


@dataclass(frozen=True)
class EvalTask:
    """What to evaluate. ``limit``: only the first N images (sorted ids), for quick runs;
    ``feed_logits``: point mode feeds each round's low-res logits to the next (off by default);
    ``include_crowd``: mIoU modes also prompt crowd regions (skipped by default);
    ``box_noise``: box mode moves every box coordinate by ``N(0, box_noise * side)`` pixels
    (SAM's training noise: at most 20 px, then clipped to the image), drawn from a generator
    seeded by the image id, so every model gets the same boxes (0: the exact boxes).
    """

    mode: str
    num_clicks: int = 5
    limit: int | None = None
    detections: str | None = None
    feed_logits: bool = False
    include_crowd: bool = False
    box_noise: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.box_noise <= 1.0:
            raise ValueError(f"box_noise must be in [0, 1], got {self.box_noise}")
        if self.box_noise and self.mode != "box":
            raise ValueError("box_noise applies to box mode only")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.num_clicks < 1:
            raise ValueError(f"num_clicks must be >= 1, got {self.num_clicks}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if (self.mode == "box-from-detector") != (self.detections is not None):
            raise ValueError("a detections file is needed by, and only by, box-from-detector")
        if self.detections is not None and not Path(self.detections).is_file():
            # checked here, before any model is built; its content is checked when it is read
            raise UserError(f"detections file not found: {self.detections}")


@dataclass
class ImageRecord:
    """What one image contributed; these are what the processes gather."""

    image_id: int
    instances: list[InstanceResult] = field(default_factory=list)
    detections: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    failed: str | None = None


def _usable(instances: list[Instance]) -> tuple[list[Instance], list[np.ndarray], Counter]:
    """Instances with a non-empty mask (an empty one would crash the click simulator), their
    masks, and the count of the others (``empty_mask``). Boxes were checked by the dataset."""
    kept, masks = [], []
    for inst in instances:
        mask = inst.mask()
        if mask.any():
            kept.append(inst)
            masks.append(mask)
    return kept, masks, Counter({"empty_mask": len(instances) - len(kept)})


BOX_NOISE_MAX_PX = 20.0
"""SAM's cap on its training box noise, in pixels."""


def noisy_boxes(boxes: np.ndarray, noise: float, image_size: tuple[int, int],
                rng: np.random.Generator) -> np.ndarray:
    """``K x 4`` XYXY boxes with every coordinate moved by ``N(0, noise * side)`` pixels (at
    most :data:`BOX_NOISE_MAX_PX`), clipped to the ``(h, w)`` image, corners kept ordered."""
    side = np.maximum(np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, 1), 1)
    shift = np.clip(rng.standard_normal(boxes.shape) * noise * side, -BOX_NOISE_MAX_PX,
                    BOX_NOISE_MAX_PX)
    h, w = image_size
    out = np.clip(boxes + shift, 0, [w, h, w, h])
    return np.concatenate([np.minimum(out[:, :2], out[:, 2:]), np.maximum(out[:, :2], out[:, 2:])],
                          1)


def eval_image_boxes(predictor: BatchPredictor, image: np.ndarray, instances: list[Instance],
                     gts: list[np.ndarray], *, box_noise: float = 0.0) -> list[InstanceResult]:
    """GT-box prompts (moved by ``box_noise``, see :class:`EvalTask`) for all instances of one
    image in one batched call."""
    predictor.set_image(image)
    boxes = np.stack([inst.box_xyxy for inst in instances]).astype(np.float64)
    if box_noise:
        rng = np.random.default_rng([instances[0].image_id, 7])
        boxes = noisy_boxes(boxes, box_noise, image.shape[:2], rng)
    chosen, _, _ = predict_best(predictor, boxes=boxes, multimask_output=True)
    return [InstanceResult(inst.ann_id, inst.image_id, inst.size, (mask_iou(pred, gt),),
                           inst.category_id)
            for inst, pred, gt in zip(instances, chosen, gts, strict=True)]


def eval_image_clicks(predictor: BatchPredictor, image: np.ndarray, instances: list[Instance],
                      gts: list[np.ndarray], *, num_clicks: int,
                      feed_logits: bool = False) -> list[InstanceResult]:
    """``num_clicks`` rounds of simulated clicks; each round is one call for all instances.

    ``feed_logits``: from round 2 on, also give each instance's previous low-res logits (of
    the mask kept) as ``mask_input``, as SAM's interactive training loop does.
    """
    predictor.set_image(image)
    clicks: list[list[Click | None]] = [[first_click(gt)] for gt in gts]
    ious: list[list[float]] = [[] for _ in gts]
    previous = None
    for round_ in range(num_clicks):
        coords, labels = clicks_to_arrays(clicks)
        chosen, _, low_res = predict_best(predictor, points=coords, labels=labels,
                                          mask_input=previous, multimask_output=True)
        if feed_logits:
            previous = low_res[:, None]
        for i, (pred, gt) in enumerate(zip(chosen, gts, strict=True)):
            ious[i].append(mask_iou(pred, gt))
            if round_ + 1 < num_clicks:
                clicks[i].append(next_click(gt, pred))
    return [InstanceResult(inst.ann_id, inst.image_id, inst.size, tuple(iou), inst.category_id)
            for inst, iou in zip(instances, ious, strict=True)]


def eval_image_detections(predictor: BatchPredictor, image: np.ndarray, image_id: int,
                          detections: list[dict]) -> tuple[list[dict], Counter]:
    """Masks for a detector's boxes, as COCO results (RLE); also the count of boxes with no
    area on the image (``detection_off_image``).

    Boxes are clipped to the image first: detectors emit boxes a little outside it.
    """
    h, w = image.shape[:2]
    boxes = [np.clip(xywh_to_xyxy(d["bbox"]), 0, [w, h, w, h]) for d in detections]
    keep = [i for i, b in enumerate(boxes) if b[2] > b[0] and b[3] > b[1]]
    skipped = Counter({"detection_off_image": len(detections) - len(keep)})
    if not keep:
        return [], skipped
    predictor.set_image(image)
    chosen, _, _ = predict_best(predictor, boxes=np.stack([boxes[i] for i in keep]),
                                multimask_output=True)
    results = [{"image_id": image_id, "category_id": int(detections[i]["category_id"]),
                "segmentation": mask_to_rle(mask), "score": float(detections[i]["score"])}
               for i, mask in zip(keep, chosen, strict=True)]
    return results, skipped


def eval_image(task: EvalTask, predictor: BatchPredictor, dataset: EvalDataset, image_id: int,
               detections: list[dict] | None) -> ImageRecord:
    """Evaluate one image; an unreadable image is recorded as failed, not raised."""
    record = ImageRecord(image_id)
    try:
        image = dataset.load_image(image_id)
    except (OSError, ValueError) as err:
        logger.warning("skipping image %d: %s", image_id, err)
        record.failed = str(err)
        return record
    if task.mode == "box-from-detector":
        record.detections, record.skipped = eval_image_detections(
            predictor, image, image_id, detections or [])
        return record
    checked, skipped = dataset.checked_instances(image_id, skip_crowd=not task.include_crowd)
    instances, gts, empty = _usable(checked)
    record.skipped = skipped + empty
    if not instances:
        return record
    if task.mode == "box":
        record.instances = eval_image_boxes(predictor, image, instances, gts,
                                            box_noise=task.box_noise)
    else:
        record.instances = eval_image_clicks(predictor, image, instances, gts,
                                             num_clicks=task.num_clicks,
                                             feed_logits=task.feed_logits)
    return record


def run_evaluation(task: EvalTask, predictor: BatchPredictor, dataset: EvalDataset, *,
                   process_index: int = 0, num_processes: int = 1,
                   gather: Callable[[list], list] | None = None) -> dict | None:
    """Evaluate this process's slice of the images; on the main process, score everything.

    Process ``r`` of ``n`` takes images ``r, r + n, r + 2n, ...`` of the sorted (and limited)
    id list. ``gather`` collects every process's records on the main process (accelerate's
    ``gather_object``); it is the identity for one process. Returns the summary dict on the
    main process (``process_index == 0``), ``None`` elsewhere.
    """
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index {process_index} outside 0..{num_processes - 1}")
    if num_processes > 1 and gather is None:
        raise ValueError("several processes need a gather function (accelerate's gather_object)")
    image_ids = dataset.image_ids[: task.limit]
    mine = image_ids[process_index::num_processes]
    detections, detection_skips = None, Counter()
    if task.mode == "box-from-detector":
        max_dets = LVIS_MAX_DETS if dataset.kind == "lvis" else None
        detections, detection_skips = load_detections(task.detections, dataset,
                                                      max_per_image=max_dets)
    records = []
    for image_id in tqdm(mine, desc=f"eval {task.mode}", disable=process_index != 0):
        per_image = detections[image_id] if detections is not None else None
        records.append(eval_image(task, predictor, dataset, image_id, per_image))
    if num_processes > 1:
        records = gather(records)
    if process_index != 0:
        return None
    return summarize(task, dataset, records, skipped=detection_skips)


def summarize(task: EvalTask, dataset: EvalDataset, records: list[ImageRecord], *,
              skipped: Counter | None = None) -> dict:
    """Metrics and counts from every image's record (any order); ``skipped``: counts from
    outside the records (the detections file's), added to the records' own."""
    records = sorted(records, key=lambda r: r.image_id)
    failed = [r.image_id for r in records if r.failed]
    if records and len(failed) == len(records):
        raise RuntimeError(f"every image failed to load; first error: {records[0].failed}")
    counts = Counter(skipped or {})
    for r in records:
        counts.update(r.skipped)
    summary: dict = {"num_images": len(records) - len(failed), "failed_images": failed,
                     "skipped": {reason: counts[reason] for reason in SKIP_REASONS}}
    if task.mode == "box-from-detector":
        results = [d for r in records for d in r.detections]
        scored_ids = [r.image_id for r in records if not r.failed]
        summary["num_detections"] = len(results)
        gt, gt_skipped = dataset.scorable_data(scored_ids)
        for reason, n in gt_skipped.items():
            summary["skipped"][reason] += n
        if dataset.kind == "lvis":
            summary["metrics"] = _lvis_ap(dataset, gt, results, scored_ids)
        else:
            summary["metrics"] = coco_segm_ap(gt, results, scored_ids)
        return summary
    instances = [inst for r in records for inst in r.instances]
    summary["num_instances"] = size_counts(instances)
    rounds = None if task.mode == "box" else sorted(
        {c for c in REPORTED_CLICKS if c <= task.num_clicks} | {task.num_clicks})
    summary["metrics"] = miou_table(instances, rounds=rounds)
    summary["by_category"] = miou_by_category(instances, dataset.category_names(),
                                              rounds=rounds)
    return summary


def _lvis_ap(dataset: EvalDataset, gt: dict, results: list[dict], image_ids: list[int]) -> dict:
    """LVIS AP against ``gt``: the annotation file itself when nothing was left out of it, else
    a checked copy written to a temporary file (``lvis.LVIS`` reads only paths)."""
    if gt is dataset.data:
        return lvis_segm_ap(dataset.annotations_path, results, image_ids)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / dataset.annotations_path.name
        path.write_text(json.dumps(gt))
        return lvis_segm_ap(path, results, image_ids)
