"""Tiled everything mode with a second, magnified look at small objects.

A tile is shown to the model at its encoder frame (a 256-pixel tile to a 256-pixel model: 1x),
where an object a dozen pixels across is three low-res logits wide: the model finds it but draws
it coarsely and scores it low (a made wafer's particles reach IoU 0.9 for a quarter of them at
1x, four in five at 2x; README, issue #16). :class:`ZoomTileSegmenter` runs SAM's generator on
the tile as :class:`~effvit_sam.tiled_everything.AutomaticTileSegmenter` does, but keeps the
candidates below its thresholds too; every candidate whose box fits ``max_side`` pixels is
decoded again in a window of ``1 / zoom`` of the tile around it (resized to the encoder frame,
so seen ``zoom`` times larger; the windows of a tile are encoded in one batched call), clicked
at its innermost pixel. The better-scored of the two masks (SAM's predicted IoU) stands for the
object: larger objects keep their 1x mask (blobs 72 % at IoU 0.9 at 1x, 48 % at 2x), small ones
gain. Then SAM's own filters and box NMS run on the result, with the generator's thresholds, so
with nothing small in a tile the masks are the plain generator's.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from segment_anything.utils.amg import calculate_stability_score
from torchvision.ops.boxes import batched_nms

from .masks import inclusive_box_to_xywh
from .tiled import Window
from .tiled_everything import AutomaticTileSegmenter, Found
from .tiled_masks import CroppedMask

CANDIDATE_IOU = 0.2
"""Predicted IoU from which a small 1x candidate is looked at again (SAM keeps from 0.88): a
particle a few pixels from the nearest grid point is found from outside it and scored 0.2-0.4
at 1x."""
DUPLICATE_IOU = 0.5
"""Box IoU above which small candidates are one object, looked at again once (the best-scored;
the others keep their 1x masks and meet the zoomed one in the final box NMS)."""


def innermost_pixel(mask: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of a pixel of ``mask`` farthest (in 4-neighbour erosions) from its border;
    among those, the one nearest the mask's centroid. ``mask`` must not be empty."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        raise ValueError("innermost_pixel of an empty mask")
    core = np.pad(mask.astype(bool), 1)
    while True:
        eroded = core.copy()
        eroded[1:-1, 1:-1] &= core[:-2, 1:-1] & core[2:, 1:-1] & core[1:-1, :-2] & core[1:-1, 2:]
        eroded[0, :] = eroded[-1, :] = eroded[:, 0] = eroded[:, -1] = False
        if not eroded.any():
            break
        core = eroded
    cy, cx = ys.mean(), xs.mean()
    ry, rx = np.nonzero(core[1:-1, 1:-1])
    best = int(np.argmin((ry - cy) ** 2 + (rx - cx) ** 2))
    return int(rx[best]), int(ry[best])


def zoom_window(box_xywh, zoom: float, height: int, width: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: a window of ``1 / zoom`` of the tile's longer side (square where the
    tile allows), centred on the box and moved inside the tile."""
    side = max(1, round(max(height, width) / zoom))
    sw, sh = min(side, width), min(side, height)
    x, y, w, h = box_xywh
    x0 = min(max(0, int(round(x + w / 2 - sw / 2))), width - sw)
    y0 = min(max(0, int(round(y + h / 2 - sh / 2))), height - sh)
    return x0, y0, x0 + sw, y0 + sh


def tile_segmenter(generator, zoom: float | None = None) -> AutomaticTileSegmenter:
    """The tile segmenter of tiled everything mode: SAM's generator per tile, with the zoomed
    second look at small objects when ``zoom`` is given."""
    if zoom is None:
        return AutomaticTileSegmenter(generator)
    return ZoomTileSegmenter(generator, zoom=zoom)


def _nms(records: list[dict], iou: float) -> list[int]:
    """Indices of ``records`` kept by SAM's box NMS (its boxes: inclusive pixel extents, scored
    by predicted IoU), best first."""
    if not records:
        return []
    boxes = torch.tensor([[x, y, x + w - 1, y + h - 1] for x, y, w, h in
                          (r["bbox"] for r in records)], dtype=torch.float)
    scores = torch.tensor([r["predicted_iou"] for r in records])
    return batched_nms(boxes, scores, torch.zeros(len(records), dtype=torch.long),
                       iou_threshold=iou).tolist()


class ZoomTileSegmenter(AutomaticTileSegmenter):
    """:class:`AutomaticTileSegmenter` with small objects decoded again at ``zoom`` times the
    magnification (module docstring).

    ``zoom``: how much closer the second look is (2: a window of half the tile). ``max_side``:
    the largest box side (tile pixels) looked at again (default: a quarter of the zoom window,
    32 pixels for a 256 tile at 2x; 0: none, the plain generator's masks). ``candidate_iou`` /
    ``candidate_stability``: the relaxed thresholds a 1x candidate must pass to be looked at
    again. ``clicks``: clicks in the zoomed window (the second at the innermost pixel of the
    first's mask). Counters: ``looked_again``, ``replaced``. The generator must have
    ``crop_n_layers == 0`` and ``min_mask_region_area == 0`` (its thresholds and box NMS are
    applied here, after the second look).
    """

    def __init__(self, generator, *, zoom: float = 2.0, max_side: int | None = None,
                 candidate_iou: float = CANDIDATE_IOU, candidate_stability: float = 0.0,
                 clicks: int = 2) -> None:
        super().__init__(generator)
        if not (math.isfinite(zoom) and zoom > 1.0):
            raise ValueError(f"zoom must be a finite number > 1, got {zoom}")
        if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int)
                                     or max_side < 0):
            raise ValueError(f"max_side must be an integer >= 0, got {max_side!r}")
        for name, value in (("candidate_iou", candidate_iou),
                            ("candidate_stability", candidate_stability)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if isinstance(clicks, bool) or not isinstance(clicks, int) or clicks < 1:
            raise ValueError(f"clicks must be a positive integer, got {clicks!r}")
        if generator.crop_n_layers != 0 or generator.min_mask_region_area != 0:
            raise ValueError("the zoomed second look needs a generator with crop_n_layers=0 and "
                             "min_mask_region_area=0")
        self.zoom, self.max_side, self.clicks = float(zoom), max_side, clicks
        self.candidate_iou, self.candidate_stability = candidate_iou, candidate_stability
        # the same predictor and grid; relaxed thresholds, no NMS (both applied after the zoom)
        self.relaxed = copy.copy(generator)
        self.relaxed.pred_iou_thresh = min(candidate_iou, generator.pred_iou_thresh)
        self.relaxed.stability_score_thresh = min(candidate_stability,
                                                  generator.stability_score_thresh)
        self.relaxed.box_nms_thresh = 1.0
        self.relaxed.output_mode = "binary_mask"
        self.looked_again = self.replaced = 0  # counters over this object's life

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "zoom": self.zoom, "zoom_max_side": self.max_side,
                "zoom_candidate_iou": self.candidate_iou,
                "zoom_candidate_stability": self.candidate_stability, "zoom_clicks": self.clicks}

    def _max_side(self, height: int, width: int) -> int:
        if self.max_side is not None:
            return self.max_side
        return max(1, round(max(height, width) / self.zoom / 4))

    def segment(self, image: np.ndarray, encoded: Any, window: Window,
                image_size: tuple[int, int]) -> list[Found]:
        g = self.generator
        records = self.relaxed.generate(image, encoded=encoded)
        height, width = image.shape[:2]
        limit = self._max_side(height, width)
        small = [r for r in records if r["area"] and max(r["bbox"][2:]) <= limit]
        self._look_again(image, [small[i] for i in _nms(small, DUPLICATE_IOU)])
        # SAM's filters as its generator applies them (a threshold of 0 is no filter)
        kept = [r for r in records
                if (g.pred_iou_thresh <= 0.0 or r["predicted_iou"] > g.pred_iou_thresh)
                and (g.stability_score_thresh <= 0.0
                     or r["stability_score"] >= g.stability_score_thresh)]
        kept = [kept[i] for i in _nms(kept, g.box_nms_thresh)]
        out = []
        for r in kept:
            crop = CroppedMask.from_window(r["segmentation"], window.x0, window.y0, image_size)
            if crop.mask.size:
                out.append((crop, float(r["predicted_iou"]), float(r["stability_score"])))
        return out

    @torch.inference_mode()
    def _look_again(self, image: np.ndarray, records: list[dict]) -> None:
        """Decode each record's object again in a zoomed window: clicked at the innermost pixel
        of its 1x mask, then (``clicks`` > 1) again at the innermost pixel of the zoomed mask.
        Where the zoomed mask scores higher and does not run into the window's edge inside the
        tile (a cut object), it replaces the record's mask, box and scores (in place)."""
        if not records:
            return
        g, predictor = self.generator, self.generator.predictor
        height, width = image.shape[:2]
        rects = [zoom_window(r["bbox"], self.zoom, height, width) for r in records]
        masks = [r["segmentation"][y0:y1, x0:x1] for r, (x0, y0, x1, y1) in
                 zip(records, rects, strict=True)]
        predictor.set_images([image[y0:y1, x0:x1] for x0, y0, x1, y1 in rects])
        try:
            for _ in range(self.clicks):
                prompts = []
                for mask in masks:
                    x, y = innermost_pixel(mask)
                    prompts.append({"points": np.array([[x + 0.5, y + 0.5]]),
                                    "labels": np.array([1])})
                results = predictor.predict_batch(prompts, multimask_output=True,
                                                  return_logits=True)
                best = []  # (logits, score, mask) of each record's best-scored zoomed mask
                for logits, scores, _ in results:
                    chosen = logits[int(np.argmax(scores))]
                    best.append((chosen, float(scores.max()), chosen > predictor.mask_threshold))
                # the next click goes inside the zoomed mask (the previous one if it is empty)
                masks = [zoomed if zoomed.any() else old
                         for (_, _, zoomed), old in zip(best, masks, strict=True)]
        finally:
            predictor.reset_image()
        self.looked_again += len(records)
        for r, rect, (logits, score, mask) in zip(records, rects, best, strict=True):
            if score <= r["predicted_iou"] or not mask.any() or \
                    _meets_inner_edge(mask, rect, height, width):
                continue
            x0, y0, x1, y1 = rect
            full = np.zeros((height, width), dtype=bool)
            full[y0:y1, x0:x1] = mask
            ys, xs = np.nonzero(full)
            r["segmentation"] = full
            r["area"] = int(full.sum())
            r["bbox"] = inclusive_box_to_xywh([xs.min(), ys.min(), xs.max(), ys.max()])
            r["predicted_iou"] = score
            r["stability_score"] = float(calculate_stability_score(
                torch.as_tensor(logits)[None], predictor.mask_threshold,
                g.stability_score_offset)[0])
            self.replaced += 1


def _meets_inner_edge(mask: np.ndarray, rect: tuple[int, int, int, int], height: int,
                      width: int) -> bool:
    """Whether ``mask`` (in the window ``rect`` of an ``height x width`` tile) touches a window
    edge that is not the tile's own edge: the object goes on beyond the window."""
    x0, y0, x1, y1 = rect
    return bool((x0 > 0 and mask[:, 0].any()) or (y0 > 0 and mask[0].any())
                or (x1 < width and mask[:, -1].any()) or (y1 < height and mask[-1].any()))
