"""COCO- and LVIS-format evaluation sets: images, ground-truth instances and their masks.

Both formats share one reader. COCO images are found through ``file_name`` under ``--images``;
LVIS v1 images carry no ``file_name`` but a ``coco_url`` whose last two parts
(``val2017/000000397133.jpg``) locate them in a COCO image folder, so ``--images`` may point at
the COCO root (holding ``train2017/`` and ``val2017/``) or straight at the one folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from effvit_sam.geometry import xywh_to_xyxy
from effvit_sam.masks import rle_to_mask, segmentation_to_rle

logger = logging.getLogger(__name__)

DATASET_KINDS = ("coco", "lvis")
SMALL_AREA = 32**2
"""COCO size buckets by annotation ``area``: small < 32^2 <= medium < 96^2 <= large."""
MEDIUM_AREA = 96**2
SIZE_BUCKETS = ("small", "medium", "large")


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


class EvalDataset:
    """A COCO-format annotation file (COCO or LVIS flavour) and its image folder."""

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
        with open(self.annotations_path) as f:
            self.data: dict = json.load(f)
        for key in ("images", "annotations", "categories"):
            if key not in self.data:
                raise ValueError(f"{self.annotations_path} is not COCO-format: no {key!r} list")
        self.images = {int(img["id"]): img for img in self.data["images"]}
        self._anns: dict[int, list[dict]] = {i: [] for i in self.images}
        for ann in self.data["annotations"]:
            if int(ann["image_id"]) not in self._anns:
                raise ValueError(f"annotation {ann.get('id')} names unknown image "
                                 f"{ann['image_id']}")
            self._anns[int(ann["image_id"])].append(ann)

    @property
    def image_ids(self) -> list[int]:
        """All image ids, sorted (the order every process slices the same way)."""
        return sorted(self.images)

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
        """Ground-truth instances of one image, in annotation order.

        Crowd regions (``iscrowd: 1``) are skipped by default: they mark many objects at once,
        so a single-object mask IoU against them means nothing (COCOeval ignores them too).
        """
        info = self.images[image_id]
        h, w = int(info["height"]), int(info["width"])
        out = []
        for ann in self._anns[image_id]:
            if skip_crowd and ann.get("iscrowd", 0):
                continue
            out.append(Instance(ann_id=int(ann["id"]), image_id=image_id,
                                category_id=int(ann["category_id"]),
                                box_xyxy=xywh_to_xyxy(ann["bbox"]), area=float(ann["area"]),
                                rle=segmentation_to_rle(ann["segmentation"], h, w)))
        return out


def load_detections(path: str | Path, dataset: EvalDataset, *,
                    max_per_image: int | None = None) -> dict[int, list[dict]]:
    """A COCO results file (``image_id``, ``category_id``, ``bbox`` XYWH, ``score``) by image.

    Detections on images not in ``dataset`` are dropped (a detector run on a superset);
    ``max_per_image`` keeps the highest-scoring ones (LVIS evaluates at most 300 per image).
    """
    with open(path) as f:
        results = json.load(f)
    if not isinstance(results, list):
        raise ValueError(f"{path} is not a COCO results list")
    by_image: dict[int, list[dict]] = {i: [] for i in dataset.images}
    dropped = 0
    for det in results:
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in det:
                raise ValueError(f"detection without {key!r} in {path}: {det}")
        if int(det["image_id"]) in by_image:
            by_image[int(det["image_id"])].append(det)
        else:
            dropped += 1
    if dropped:
        logger.warning("dropped %d detections on images not in the dataset", dropped)
    if max_per_image is not None:
        for image_id, dets in by_image.items():
            dets.sort(key=lambda d: -float(d["score"]))
            by_image[image_id] = dets[:max_per_image]
    return by_image
