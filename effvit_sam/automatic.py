"""Automatic ("everything") mask generation: a point grid, per-crop decoding, NMS.

The same algorithm and records as ``segment_anything.SamAutomaticMaskGenerator`` (its helpers in
``segment_anything.utils.amg`` are reused), with bounded memory for very large images: SAM
upscales every mask of a batch to full resolution as float logits and pads crop masks to the
whole image before run-length encoding, which for a 6000 x 8000 scan is tens of GB. Here the
decoder's low-res logits are filtered by predicted IoU first, then upscaled a few masks at a
time, thresholded and run-length encoded at once; only RLEs are kept. The records equal SAM's.

Less work for the same masks: each batch of grid points is one call of the fast path's
many-prompt decoder (:class:`effvit_sam.inference.decoder.FastMaskDecoder`); candidates are
upscaled transposed, so their masks come out in RLE's column-major order and every run boundary
of a chunk comes from one comparison and one ``nonzero`` (SAM scans all changes once per mask);
``low_res_stability=True`` also drops clearly unstable candidates before upscaling them.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from segment_anything.utils.amg import (
    MaskData,
    area_from_rle,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    remove_small_regions,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_points,
)
from torch import nn
from torchvision.ops.boxes import batched_nms, box_area
from tqdm import tqdm

from . import geometry
from .inference import FastPathOptions, mask_upscale
from .inference.decoder import FastMaskDecoder
from .mask_rle import crop_runs_transposed, extend_mask_data, rles_from_runs
from .masks import inclusive_box_to_xywh
from .predictor import EfficientViTSamPredictor, EncodedImage
from .predictor_inputs import as_rgb_image

logger = logging.getLogger(__name__)

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
_CHUNK_BYTES = 128 << 20
"""Full-resolution work per chunk of masks (float logits, bool masks, RLE temporaries)."""
LOW_RES_STABILITY_MARGIN = 0.05
"""With ``low_res_stability``, candidates whose stability on the 256 x 256 logits is below
``stability_score_thresh`` minus this margin are dropped before upscaling (SAM's full-resolution
stability still decides for the rest). Low- and full-resolution stability differ by a few
hundredths on thin masks; the margin keeps those (README: masks matched)."""


class EfficientViTSamAutomaticMaskGenerator:
    """Masks for a whole image from a grid of single-point prompts (SAM's options and records).

    ``generate(image)`` returns one dict per mask: ``segmentation`` (``H x W`` bool, or an RLE
    per ``output_mode``), ``area``, ``bbox`` (XYWH as SAM writes it: ``w = x1 - x0`` of the
    inclusive pixel extents), ``predicted_iou``, ``stability_score``, ``point_coords``
    (``[[x, y]]`` original pixels) and ``crop_box`` (XYWH). ``crop_n_layers > 0`` adds
    overlapping crops (layer i has ``2**i x 2**i`` crops), each encoded on its own. ``fast``
    (True, False or a ``FastPathOptions``: ``exact()`` keeps float32 on bf16 CPUs, where ``auto``
    runs a bf16 encoder) and ``device`` go to :class:`EfficientViTSamPredictor` (``fast`` has the
    many-prompt decoder, :class:`effvit_sam.inference.decoder.FastMaskDecoder`, which decodes
    each batch of ``points_per_batch`` grid points in one call).

    ``low_res_stability`` (off by default: SAM's algorithm exactly) drops candidates whose
    stability score on the low-res logits is below ``stability_score_thresh -``
    :data:`LOW_RES_STABILITY_MARGIN` before they are upscaled; the kept masks and their records
    are SAM's, a mask whose low- and full-resolution stability differ by more than the margin
    can be lost (``effvit-sam bench-decoder`` reports masks matched against SAM's generator).
    Non-finite or out-of-range options raise ``ValueError`` naming the option.
    """

    def __init__(self, model: nn.Module, *, points_per_side: int | None = 32,
                 points_per_batch: int = 64, pred_iou_thresh: float = 0.88,
                 stability_score_thresh: float = 0.95, stability_score_offset: float = 1.0,
                 box_nms_thresh: float = 0.7, crop_n_layers: int = 0, crop_nms_thresh: float = 0.7,
                 crop_overlap_ratio: float = 512 / 1500, crop_n_points_downscale_factor: int = 1,
                 point_grids: list[np.ndarray] | None = None, min_mask_region_area: int = 0,
                 output_mode: str = "binary_mask", progress: bool = False,
                 device: str | torch.device | None = None, fast: bool | FastPathOptions = True,
                 low_res_stability: bool = False) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        for name, value in (("points_per_side", points_per_side),
                            ("points_per_batch", points_per_batch),
                            ("crop_n_layers", crop_n_layers),
                            ("crop_n_points_downscale_factor", crop_n_points_downscale_factor)):
            if value is not None and (isinstance(value, bool) or
                                      not isinstance(value, (int, np.integer))):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if points_per_batch < 1 or crop_n_layers < 0 or crop_n_points_downscale_factor < 1:
            raise ValueError("points_per_batch and crop_n_points_downscale_factor must be >= 1, "
                             "crop_n_layers >= 0")
        # NaN compares false with everything: these checks reject it (SAM's `thresh > 0` tests
        # would silently switch a NaN filter off).
        for name, value in (("pred_iou_thresh", pred_iou_thresh),
                            ("stability_score_thresh", stability_score_thresh),
                            ("box_nms_thresh", box_nms_thresh),
                            ("crop_nms_thresh", crop_nms_thresh),
                            ("crop_overlap_ratio", crop_overlap_ratio)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 <= stability_score_offset < math.inf:
            raise ValueError(f"stability_score_offset must be finite and >= 0, got "
                             f"{stability_score_offset}")
        if not 0 <= min_mask_region_area < math.inf:
            raise ValueError(f"min_mask_region_area must be finite and >= 0, got "
                             f"{min_mask_region_area}")
        if points_per_side is not None:
            if points_per_side < 1:
                raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
            grids = build_all_layer_point_grids(points_per_side, crop_n_layers,
                                                crop_n_points_downscale_factor)
        else:
            grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
            if len(grids) != crop_n_layers + 1:
                raise ValueError(f"point_grids needs one grid per crop layer ({crop_n_layers + 1}),"
                                 f" got {len(grids)}")
            for g in grids:
                if g.ndim != 2 or g.shape[1] != 2 or g.min() < 0 or g.max() > 1:
                    raise ValueError("each point grid must be M x 2 (x, y) normalised to [0, 1]")
        if min_mask_region_area > 0:
            try:
                import cv2  # noqa: F401  (SAM's remove_small_regions uses OpenCV)
            except ImportError as err:
                raise ImportError("min_mask_region_area > 0 needs OpenCV: pip install "
                                  "opencv-python-headless") from err
        self.predictor = EfficientViTSamPredictor(model, device=device, fast=fast)
        self.point_grids = grids
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.progress = progress
        self.low_res_stability = low_res_stability

    @torch.inference_mode()
    def generate(self, image, image_format: str = "RGB", *,
                 encoded: EncodedImage | None = None) -> list[dict[str, Any]]:
        """Records for every mask found in ``image`` (``H x W x 3`` uint8 or PIL, see class).

        ``encoded``: the whole image's embedding when the caller already has it (a predictor's
        ``images[0]`` after ``set_image(image)`` with the same model), so the whole-image crop is
        not encoded again; crops of later layers are still encoded.
        """
        rgb = as_rgb_image(image, image_format)
        if encoded is not None and tuple(encoded.original_size) != rgb.shape[:2]:
            raise ValueError(f"encoded is for a {encoded.original_size} image, the image is "
                             f"{rgb.shape[:2]}")
        data = self._generate_masks(rgb, encoded)
        if self.min_mask_region_area > 0:
            data = self._remove_small_regions(data)
        records = []
        for i, rle in enumerate(data["rles"]):
            if self.output_mode == "coco_rle":
                segmentation = coco_encode_rle(rle)
            elif self.output_mode == "binary_mask":
                segmentation = rle_to_mask(rle)
            else:
                segmentation = rle
            records.append({
                "segmentation": segmentation,
                "area": area_from_rle(rle),
                # whole-pixel COCO box, as everywhere in the package (effvit_sam.masks);
                # SAM's records say w = x1 - x0 of the inclusive extents, one pixel less
                "bbox": inclusive_box_to_xywh(data["boxes"][i].tolist()),
                "predicted_iou": data["iou_preds"][i].item(),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": data["stability_score"][i].item(),
                "crop_box": box_xyxy_to_xywh(data["crop_boxes"][i]).tolist(),
            })
        return records

    def _generate_masks(self, image: np.ndarray, encoded: EncodedImage | None) -> MaskData:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers,
                                                     self.crop_overlap_ratio)
        batches = sum(-(-len(self.point_grids[i]) // self.points_per_batch) for i in layer_idxs)
        data = MaskData()
        with tqdm(total=batches, desc="everything", unit="batch", disable=not self.progress,
                  leave=False) as bar:
            for crop_box, layer_idx in zip(crop_boxes, layer_idxs, strict=True):
                whole = list(crop_box) == [0, 0, image.shape[1], image.shape[0]]
                extend_mask_data(data, self._process_crop(image, crop_box, layer_idx, bar,
                                                 encoded if whole else None))
        if len(crop_boxes) > 1 and len(data["rles"]):
            # Prefer masks from smaller crops (more detail) among duplicates across crops.
            scores = 1 / box_area(data["crop_boxes"])
            keep = batched_nms(data["boxes"].float(), scores,
                               torch.zeros_like(data["boxes"][:, 0]),
                               iou_threshold=self.crop_nms_thresh)
            data.filter(keep)
        data.to_numpy()
        logger.info("%d masks from %d crops", len(data["rles"]), len(crop_boxes))
        return data

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer_idx: int,
                      bar: tqdm, encoded: EncodedImage | None = None) -> MaskData:
        x0, y0, x1, y1 = crop_box
        if encoded is None:
            self.predictor.set_image(image[y0:y1, x0:x1])
            encoded = self.predictor.images[0]
        crop_h, crop_w = encoded.original_size
        points = self.point_grids[layer_idx] * np.array([[crop_w, crop_h]])
        data = MaskData(rles=[], boxes=torch.zeros(0, 4, dtype=torch.int64),
                        iou_preds=torch.zeros(0), points=torch.zeros(0, 2, dtype=torch.float64),
                        stability_score=torch.zeros(0))
        for start in range(0, len(points), self.points_per_batch):
            batch = points[start: start + self.points_per_batch]
            extend_mask_data(data, self._process_batch(encoded, batch, crop_box, image.shape[:2]))
            bar.update(1)
        self.predictor.reset_image()
        if len(data["rles"]):
            keep = batched_nms(data["boxes"].float(), data["iou_preds"],
                               torch.zeros_like(data["boxes"][:, 0]),
                               iou_threshold=self.box_nms_thresh)
            data.filter(keep)
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = torch.tensor([crop_box] * len(data["rles"]),
                                          dtype=torch.int64).reshape(-1, 4)
        return data

    def _process_batch(self, encoded: EncodedImage, points: np.ndarray, crop_box: list[int],
                       orig_size: tuple[int, int]) -> MaskData:
        """One decoder call for ``K`` grid points (crop pixels); RLEs in the whole image."""
        predictor = self.predictor
        coords = torch.as_tensor(geometry.apply_coords(points, encoded.original_size,
                                                       predictor.prompt_frame),
                                 device=predictor.device)
        labels = torch.ones(len(coords), dtype=torch.int, device=predictor.device)
        decoder = predictor.model.mask_decoder
        if self.pred_iou_thresh > 0.0 and isinstance(decoder, FastMaskDecoder):
            # Only candidates above pred_iou_thresh are upscaled inside the decoder.
            low_res, iou, index = decoder.forward_kept(
                **predictor.decoder_inputs(encoded, coords[:, None], labels[:, None]),
                multimask_output=True, iou_threshold=self.pred_iou_thresh)
            pts = torch.as_tensor(points)[index.cpu() // decoder.num_multimask_outputs]
        else:
            low_res, iou = predictor.decode_low_res(encoded, coords[:, None], labels[:, None],
                                                    multimask_output=True)
            masks_per_point = low_res.shape[1]
            low_res, iou = low_res.flatten(0, 1), iou.flatten(0, 1)
            pts = torch.as_tensor(points.repeat(masks_per_point, axis=0))
            if self.pred_iou_thresh > 0.0:
                keep = iou > self.pred_iou_thresh
                low_res, iou, pts = low_res[keep], iou[keep], pts[keep.cpu()]
        if self.low_res_stability and self.stability_score_thresh > 0.0:
            keep = self._low_res_stability(low_res, encoded.input_size) >= \
                self.stability_score_thresh - LOW_RES_STABILITY_MARGIN
            low_res, iou, pts = low_res[keep], iou[keep], pts[keep.cpu()]
        out = MaskData(rles=[], boxes=torch.zeros(0, 4, dtype=torch.int64), iou_preds=iou[:0].cpu(),
                       points=pts[:0], stability_score=torch.zeros(0))
        crop_h, crop_w = encoded.original_size
        per_mask = max(crop_h * crop_w * 4, orig_size[0] * crop_w * 3)
        step = max(1, _CHUNK_BYTES // per_mask)
        # Upscaled transposed (crop columns as rows): bilinear resizing is separable, so this is
        # the same interpolation, and the masks come out in the column-major order of RLEs.
        low_res_t = low_res.transpose(-1, -2)
        input_t = tuple(encoded.input_size[::-1])
        for i in range(0, len(low_res), step):
            masks_t, stability = self._upscale_transposed(low_res_t[i: i + step], input_t,
                                                          (crop_w, crop_h))
            chunk = MaskData(iou_preds=iou[i: i + step], points=pts[i: i + step],
                             stability_score=stability)
            if self.stability_score_thresh > 0.0:
                keep = chunk["stability_score"] >= self.stability_score_thresh
                chunk.filter(keep)
                masks_t = masks_t[keep]
            runs = crop_runs_transposed(masks_t, crop_box, orig_size, boxes=True)
            del masks_t
            # (y0, x0, y1, x1) of the transposed masks -> XYXY
            chunk["boxes"] = runs.boxes[:, [1, 0, 3, 2]]
            keep = ~is_box_near_crop_edge(chunk["boxes"], crop_box,
                                          [0, 0, orig_size[1], orig_size[0]])
            if not torch.all(keep):
                chunk.filter(keep)
                runs = runs.select(keep)
            chunk["rles"] = rles_from_runs(runs, crop_box, orig_size)
            for key in ("iou_preds", "stability_score", "boxes"):
                chunk[key] = chunk[key].cpu()
            extend_mask_data(out, chunk)
        return out

    def _upscale_transposed(self, low_res_t: torch.Tensor, input_t: tuple[int, int],
                            size_t: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Transposed ``K x 256 x 256`` logits to transposed boolean masks of ``size_t`` and
        SAM's stability scores (``K``): on the CPU in one pass per mask with no float image
        (``inference.mask_upscale``), else through the float logits."""
        threshold, offset = self.predictor.mask_threshold, self.stability_score_offset
        frame = self.predictor.prompt_frame
        fused = mask_upscale.upscale_to_masks(low_res_t, input_t, size_t, frame, threshold,
                                              count_above=(threshold + offset,
                                                           threshold - offset))
        if fused is not None:
            masks_t, counts = fused
            # SAM's int32 counts and their float32 ratio
            counts = counts.to(torch.int32)
            return masks_t, counts[:, 0] / counts[:, 1]
        logits_t = geometry.postprocess_masks_lean(low_res_t[:, None], input_t, size_t,
                                                   frame)[:, 0]
        stability = calculate_stability_score(logits_t, threshold, offset)
        return logits_t > threshold, stability

    def _low_res_stability(self, low_res: torch.Tensor,
                           input_size: tuple[int, int]) -> torch.Tensor:
        """SAM's stability score of ``K x 256 x 256`` logits over the part that covers the image
        (the rest is the prompt frame's padding, cropped away by the upscaling): ``K``."""
        scale = geometry.LOW_RES_MASK_SIZE / self.predictor.prompt_frame
        rows, cols = (math.ceil(v * scale) for v in input_size)
        return calculate_stability_score(low_res[:, :rows, :cols], self.predictor.mask_threshold,
                                         self.stability_score_offset)

    def _remove_small_regions(self, data: MaskData) -> MaskData:
        """SAM's hole/island removal and re-NMS, one full-size mask in memory at a time."""
        if not len(data["rles"]):
            return data
        boxes, scores = [], []
        for i, rle in enumerate(data["rles"]):
            mask = rle_to_mask(rle)
            mask, changed_holes = remove_small_regions(mask, self.min_mask_region_area, "holes")
            mask, changed_islands = remove_small_regions(mask, self.min_mask_region_area,
                                                         "islands")
            tensor = torch.as_tensor(mask)[None]
            boxes.append(batched_mask_to_box(tensor)[0])
            unchanged = not (changed_holes or changed_islands)
            # Changed masks score 0 so that NMS prefers masks that needed no clean-up.
            scores.append(float(unchanged))
            if not unchanged:
                data["rles"][i] = mask_to_rle_pytorch(tensor)[0]
        boxes_t = torch.stack(boxes)
        keep = batched_nms(boxes_t.float(), torch.as_tensor(scores), torch.zeros(len(boxes)),
                           iou_threshold=max(self.box_nms_thresh, self.crop_nms_thresh))
        data["boxes"] = boxes_t.numpy()
        data.filter(keep)
        return data
