"""COCO- and LVIS-format evaluation sets: images, ground-truth instances and their masks.

Both formats share one reader. COCO images are found through ``file_name`` under ``--images``;
LVIS v1 images carry no ``file_name`` but a ``coco_url`` whose last two parts
(``val2017/000000397133.jpg``) locate them in a COCO image folder, so ``--images`` may point at
the COCO root (holding ``train2017/`` and ``val2017/``) or straight at the one folder.

Nothing in a file is trusted. The file's flavour must match the ``kind`` asked for (an LVIS
file has categories with ``frequency`` and images with ``not_exhaustive_category_ids``; a COCO
file has neither), else a :class:`~effvit_sam.errors.UserError` says what the file looks like.
Ground-truth instances whose segmentation is bad (:func:`effvit_sam.masks.segmentation_to_rle`)
or whose box is malformed, degenerate or off the image are skipped and counted by reason
(:data:`GT_SKIP_REASONS`); so are detections with a bad box or score
(:data:`DETECTION_SKIP_REASONS`). Bad data is never prompted or scored: pycocotools would decode
a too-short RLE from uninitialised memory, and two runs would disagree.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from effvit_sam.errors import UserError
from effvit_sam.geometry import xywh_to_xyxy
from effvit_sam.masks import rle_to_mask, segmentation_to_rle
from effvit_sam.predictor_inputs import BORDER_TOLERANCE

logger = logging.getLogger(__name__)

DATASET_KINDS = ("coco", "lvis")
SMALL_AREA = 32**2
"""COCO size buckets by annotation ``area``: small < 32^2 <= medium < 96^2 <= large."""
MEDIUM_AREA = 96**2
SIZE_BUCKETS = ("small", "medium", "large")
GT_SKIP_REASONS = ("bad_rle", "bad_polygon", "bad_box", "degenerate_box", "box_off_image",
                   "empty_mask")
"""Why a ground-truth instance is not prompted: its RLE or polygons fail validation; its bbox is
not 4 finite numbers; its width or height is <= 0; it lies more than
:data:`~effvit_sam.predictor_inputs.BORDER_TOLERANCE` px outside the image or does not overlap
it; its mask is empty (checked by the runner, which decodes it)."""
DETECTION_SKIP_REASONS = ("detection_bad_box", "detection_bad_score", "detection_off_image")
"""Why a detection is not used: its bbox is not 4 finite numbers with positive width and height;
its score is not a finite number; it has no area left once clipped to the image (the runner)."""
SKIP_REASONS = GT_SKIP_REASONS + DETECTION_SKIP_REASONS
"""The keys of a summary's ``skipped`` counts."""


def size_bucket(area: float) -> str:
    """The COCO size bucket of an instance with annotation ``area`` (pixels)."""
    if area < SMALL_AREA:
        return "small"
    return "medium" if area < MEDIUM_AREA else "large"


@dataclass(frozen=True)
class Instance:
    """One ground-truth object. ``box_xyxy`` in original-image pixels."""

    ann_id: int
    image_id: int
    category_id: int
    box_xyxy: np.ndarray
    area: float
    rle: dict

    @property
    def size(self) -> str:
        return size_bucket(self.area)

    def mask(self) -> np.ndarray:
        """The ``H x W`` bool ground-truth mask."""
        return rle_to_mask(self.rle)


def _all_have(items: list, key: str) -> bool:
    return bool(items) and all(isinstance(x, dict) and key in x for x in items)


def _any_has(items: list, key: str) -> bool:
    return any(isinstance(x, dict) and key in x for x in items)


def _lacking(items: list, key: str, what: str) -> str:
    return f"{sum(not (isinstance(x, dict) and key in x) for x in items)} of {len(items)} {what} " \
        f"have no {key!r}"


def describe_format(data: dict) -> str:
    """What marks a COCO-format dict as COCO or LVIS, e.g. ``"images have file_name,
    categories have no 'frequency'"``."""
    images, categories = data["images"], data["categories"]
    fields = [k for k in ("file_name", "coco_url", "not_exhaustive_category_ids")
              if _all_have(images, k)]
    text = "images have " + " and ".join(fields) if fields else "images have no file_name"
    if fields and "file_name" not in fields:
        text += " but no file_name"
    has_frequency = _all_have(categories, "frequency")
    return text + (", categories have 'frequency'" if has_frequency
                   else ", categories have no 'frequency'")


def check_format(kind: str, data: dict, path: Path) -> None:
    """Raise a :class:`UserError` when ``data`` is not a ``kind`` ("coco"/"lvis") file.

    LVIS needs ``frequency`` on every category (APr/APc/APf) and ``not_exhaustive_category_ids``
    and ``neg_category_ids`` on every image (LVISEval reads them); a COCO file has none of them.
    """
    images, categories = data["images"], data["categories"]
    lvis_image_keys = ("not_exhaustive_category_ids", "neg_category_ids")
    if kind == "lvis":
        missing = [_lacking(images, k, "images") for k in lvis_image_keys
                   if not _all_have(images, k)]
        if not _all_have(categories, "frequency"):
            missing.append(_lacking(categories, "frequency", "categories"))
        if not missing:
            return
        if not any(_any_has(images, k) for k in lvis_image_keys) and not _any_has(
                categories, "frequency"):
            raise UserError(f"{path} looks like a COCO file ({describe_format(data)}); use "
                            "--dataset coco")
        raise UserError(f"{path} is not a complete LVIS file: {'; '.join(missing)}")
    lvis_marks = [f"images have {k!r}" for k in lvis_image_keys if _any_has(images, k)]
    if _any_has(categories, "frequency"):
        lvis_marks.append("categories have 'frequency'")
    if lvis_marks:
        raise UserError(f"{path} looks like an LVIS file ({describe_format(data)}); use "
                        "--dataset lvis")


def _check_structure(data, path: Path) -> None:
    """The parts of a COCO-format dict every reader relies on, else a UserError naming them."""
    if not isinstance(data, dict):
        raise UserError(f"{path} is not COCO-format: the top level is a {type(data).__name__}, "
                        "not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise UserError(f"{path} is not COCO-format: no {key!r} list")
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not all(
                isinstance(img.get(k), int) and not isinstance(img.get(k), bool)
                for k in ("id", "height", "width")) or min(img["height"], img["width"]) < 1:
            raise UserError(f"{path}: image {i} needs an int 'id' and positive int 'height' "
                            f"and 'width', got {str(img)[:120]}")
    required = {"annotations": ("id", "image_id", "category_id", "area"), "categories": ("id",)}
    for key, fields in required.items():
        for i, item in enumerate(data[key]):
            if not isinstance(item, dict) or not all(f in item for f in fields):
                raise UserError(f"{path}: {key} entry {i} is not an object with "
                                f"{', '.join(map(repr, fields))}: {str(item)[:120]}")


def _check_box(bbox, height: int, width: int) -> str | None:
    """Why a GT ``bbox`` (XYWH pixels) of an ``height x width`` image cannot be a prompt (a
    :data:`GT_SKIP_REASONS` key), or ``None`` when it can."""
    if (not isinstance(bbox, list | tuple) or len(bbox) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
            or not all(math.isfinite(v) for v in bbox)):
        return "bad_box"
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return "degenerate_box"
    tol = BORDER_TOLERANCE
    outside = x < -tol or y < -tol or x + w > width + tol or y + h > height + tol
    if outside or x + w <= 0 or y + h <= 0 or x >= width or y >= height:
        return "box_off_image"
    return None


def _segmentation_reason(segmentation) -> str:
    return "bad_polygon" if isinstance(segmentation, list) else "bad_rle"


class EvalDataset:
    """A COCO-format annotation file (COCO or LVIS flavour, checked against ``kind``) and its
    image folder."""

    def __init__(self, kind: str, annotations: str | Path, images: str | Path) -> None:
        if kind not in DATASET_KINDS:
            raise ValueError(f"dataset must be one of {DATASET_KINDS}, got {kind!r}")
        self.kind = kind
        self.annotations_path = Path(annotations)
        self.images_dir = Path(images)
        if not self.annotations_path.is_file():
            raise FileNotFoundError(f"annotation file not found: {self.annotations_path}")
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.images_dir}")
        try:
            with open(self.annotations_path) as f:
                self.data: dict = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{self.annotations_path} is not JSON: {err}") from None
        _check_structure(self.data, self.annotations_path)
        check_format(kind, self.data, self.annotations_path)
        self.images = {img["id"]: img for img in self.data["images"]}
        self._anns: dict[int, list[dict]] = {i: [] for i in self.images}
        for ann in self.data["annotations"]:
            if ann.get("image_id") not in self._anns:
                raise UserError(f"{self.annotations_path}: annotation {ann.get('id')} names "
                                f"unknown image {ann.get('image_id')!r}")
            self._anns[ann["image_id"]].append(ann)

    @property
    def image_ids(self) -> list[int]:
        """All image ids, sorted (the order every process slices the same way)."""
        return sorted(self.images)

    def category_names(self) -> dict[int, str]:
        """Category id to its ``name`` (the id as text where a category has none), as the
        per-category reports key them."""
        return {c["id"]: str(c.get("name", c["id"])) for c in self.data["categories"]}

    def image_path(self, image_id: int) -> Path:
        info = self.images[image_id]
        if "file_name" in info:
            candidates = [self.images_dir / info["file_name"]]
        elif "coco_url" in info:
            split, name = info["coco_url"].rstrip("/").split("/")[-2:]
            candidates = [self.images_dir / split / name, self.images_dir / name]
        else:
            raise ValueError(f"image {image_id} has neither file_name nor coco_url")
        for path in candidates:
            if path.is_file():
                return path
        raise FileNotFoundError(f"image {image_id} not found; looked for "
                                + ", ".join(str(p) for p in candidates))

    def load_image(self, image_id: int) -> np.ndarray:
        """The image as ``H x W x 3`` uint8 RGB."""
        with Image.open(self.image_path(image_id)) as img:
            array = np.asarray(img.convert("RGB"))
        info = self.images[image_id]
        if array.shape[:2] != (info["height"], info["width"]):
            raise ValueError(f"image {image_id} is {array.shape[1]}x{array.shape[0]} but the "
                             f"annotations say {info['width']}x{info['height']}")
        return array

    def instances(self, image_id: int, *, skip_crowd: bool = True) -> list[Instance]:
        """The usable ground-truth instances of one image (see :meth:`checked_instances`)."""
        return self.checked_instances(image_id, skip_crowd=skip_crowd)[0]

    def checked_instances(self, image_id: int, *, skip_crowd: bool = True
                          ) -> tuple[list[Instance], Counter]:
        """Ground-truth instances of one image, in annotation order, and the skipped ones'
        counts by :data:`GT_SKIP_REASONS` (a bad box is reported before a bad segmentation).

        Crowd regions (``iscrowd: 1``) are skipped by default, and not counted: they mark many
        objects at once, so a single-object mask IoU against them means nothing (COCOeval
        ignores them too).
        """
        info = self.images[image_id]
        h, w = info["height"], info["width"]
        out, skipped = [], Counter()
        for ann in self._anns[image_id]:
            if skip_crowd and ann.get("iscrowd", 0):
                continue
            reason = _check_box(ann.get("bbox"), h, w)
            if reason is None:
                try:
                    rle = segmentation_to_rle(ann.get("segmentation"), h, w)
                except (TypeError, ValueError) as err:
                    reason = _segmentation_reason(ann.get("segmentation"))
                    logger.warning("image %d annotation %s: %s", image_id, ann["id"], err)
            if reason is not None:
                skipped[reason] += 1
                continue
            out.append(Instance(ann_id=int(ann["id"]), image_id=image_id,
                                category_id=int(ann["category_id"]),
                                box_xyxy=xywh_to_xyxy(ann["bbox"]), area=float(ann["area"]),
                                rle=rle))
        return out, skipped

    def scorable_data(self, image_ids: list[int]) -> tuple[dict, Counter]:
        """The dataset dict for COCOeval / LVISEval with the annotations of ``image_ids`` whose
        segmentation fails validation left out (the scorers would decode them unchecked), and
        their counts (``bad_rle`` / ``bad_polygon``). Returns :attr:`data` itself when none is."""
        bad_ids, skipped = set(), Counter()
        for image_id in image_ids:
            info = self.images[image_id]
            for ann in self._anns[image_id]:
                seg = ann.get("segmentation")
                try:
                    segmentation_to_rle(seg, info["height"], info["width"])
                except (TypeError, ValueError) as err:
                    bad_ids.add(id(ann))
                    skipped[_segmentation_reason(seg)] += 1
                    logger.warning("image %d annotation %s not scored: %s", image_id,
                                   ann["id"], err)
        if not bad_ids:
            return self.data, skipped
        kept = [a for a in self.data["annotations"] if id(a) not in bad_ids]
        return {**self.data, "annotations": kept}, skipped


def _check_detection(det: dict) -> str | None:
    """Why a detection cannot be used (a :data:`DETECTION_SKIP_REASONS` key), or ``None``."""
    bbox, score = det["bbox"], det["score"]
    if (not isinstance(bbox, list | tuple) or len(bbox) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
            or not all(math.isfinite(v) for v in bbox) or bbox[2] <= 0 or bbox[3] <= 0):
        return "detection_bad_box"
    if not isinstance(score, int | float) or isinstance(score, bool) or not math.isfinite(score):
        return "detection_bad_score"
    return None


def load_detections(path: str | Path, dataset: EvalDataset, *,
                    max_per_image: int | None = None) -> tuple[dict[int, list[dict]], Counter]:
    """A COCO results file (``image_id``, ``category_id``, ``bbox`` XYWH, ``score``) by image,
    and the counts of the detections skipped (:data:`DETECTION_SKIP_REASONS`).

    A file that is not JSON, not a list, or has an entry without those keys raises a
    :class:`UserError` naming it. Detections on images not in ``dataset`` are dropped (a
    detector run on a superset); ``max_per_image`` keeps the highest-scoring ones (LVIS
    evaluates at most 300 per image).
    """
    try:
        with open(path) as f:
            results = json.load(f)
    except FileNotFoundError:
        raise UserError(f"detections file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"detections file {path} is not JSON: {err}") from None
    if not isinstance(results, list):
        raise UserError(f"detections file {path} is not a COCO results list (the top level is "
                        f"a {type(results).__name__})")
    by_image: dict[int, list[dict]] = {i: [] for i in dataset.images}
    skipped, dropped = Counter(), 0
    for i, det in enumerate(results):
        if not isinstance(det, dict) or not all(
                k in det for k in ("image_id", "category_id", "bbox", "score")):
            raise UserError(f"detections file {path}: entry {i} is not an object with "
                            f"image_id, category_id, bbox and score: {str(det)[:120]}")
        reason = _check_detection(det)
        if reason is not None:
            skipped[reason] += 1
        elif det["image_id"] in by_image:
            by_image[det["image_id"]].append(det)
        else:
            dropped += 1
    if dropped:
        logger.warning("dropped %d detections on images not in the dataset", dropped)
    if skipped:
        logger.warning("skipped detections in %s: %s", path, dict(skipped))
    if max_per_image is not None:
        for image_id, dets in by_image.items():
            dets.sort(key=lambda d: -float(d["score"]))
            by_image[image_id] = dets[:max_per_image]
    return by_image, skipped


def open_dataset(kind: str, annotations: str | Path, images: str | Path) -> EvalDataset:
    """:class:`EvalDataset` for a command line: a missing file or a malformed annotation file
    becomes a :class:`UserError` naming it (exit code 2, no traceback)."""
    try:
        return EvalDataset(kind, annotations, images)
    except FileNotFoundError as err:
        raise UserError(str(err)) from None
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"--annotations {annotations}: {err}") from None
