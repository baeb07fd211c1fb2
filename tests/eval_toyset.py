"""Hand-built COCO- and LVIS-format sets for the evaluator tests (numpy masks -> RLE).

Image 1 is 64 x 80 (H x W), image 2 is 120 x 100. Instances (x/y ranges inclusive):

====  =====  ===  ==============================================  =====  ======
ann   image  cat  shape                                            area   size
====  =====  ===  ==============================================  =====  ======
11    1      1    square x 10..29, y 5..24                        400    small
12    1      2    triangle: row y = 30..59 covers x 40..40+(y-30)  465    small
13    1      1    crowd region x 0..9, y 50..63 (COCO only)        140    small
21    2      1    rectangle x 20..59, y 30..79                     2000   medium
22    2      1    rectangle x 0..99, y 20..115                     9600   large
====  =====  ===  ==============================================  =====  ======

Every bbox is the tight box of its mask, so a box-filling predictor is exact on rectangles and
gets 465 / (30 * 30) on the triangle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from effvit_sam.masks import mask_to_box_xywh, mask_to_rle

SIZES = {1: (64, 80), 2: (120, 100)}


def _box_mask(image_id: int, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
    mask = np.zeros(SIZES[image_id], dtype=bool)
    mask[y0: y1 + 1, x0: x1 + 1] = True
    return mask


def _triangle() -> np.ndarray:
    mask = np.zeros(SIZES[1], dtype=bool)
    for y in range(30, 60):
        mask[y, 40: 40 + (y - 30) + 1] = True
    return mask


def toy_masks() -> dict[int, tuple[int, int, np.ndarray, bool]]:
    """``ann_id -> (image_id, category_id, mask, iscrowd)``."""
    return {
        11: (1, 1, _box_mask(1, 10, 29, 5, 24), False),
        12: (1, 2, _triangle(), False),
        13: (1, 1, _box_mask(1, 0, 9, 50, 63), True),
        21: (2, 1, _box_mask(2, 20, 59, 30, 79), False),
        22: (2, 1, _box_mask(2, 0, 99, 20, 115), False),
    }


def tight_bbox(mask: np.ndarray) -> list[float]:
    """The toy set's boxes: the package's one whole-pixel convention."""
    return mask_to_box_xywh(mask)


def write_image(path: Path, image_id: int) -> np.ndarray:
    """A seeded random RGB image (its content identifies it to the fake predictors)."""
    rng = np.random.default_rng(image_id)
    image = rng.integers(0, 256, (*SIZES[image_id], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return image


def image_key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def _rel(kind: str, image_id: int) -> Path:
    name = f"{image_id:012d}.png"
    return Path("val2017") / name if kind == "lvis" else Path(name)


def write_toyset(root: Path, kind: str = "coco", *, ann_ids: tuple[int, ...] | None = None
                 ) -> tuple[Path, Path, dict[str, list[tuple[np.ndarray, np.ndarray]]]]:
    """Write images and annotations under ``root``; return (annotations, images dir, truth).

    ``truth`` maps an image's content key to its ``(box XYXY, mask)`` pairs (crowds included),
    for the oracle predictors. LVIS images are stored as ``val2017/<name>`` and found through
    ``coco_url``; LVIS has no crowd annotations, so ann 13 is left out there.
    """
    images_dir = root / "images"
    masks = toy_masks()
    if ann_ids is not None:
        masks = {k: v for k, v in masks.items() if k in ann_ids}
    if kind == "lvis":
        masks = {k: v for k, v in masks.items() if not v[3]}
    images, keys = [], {}
    for image_id, (h, w) in SIZES.items():
        rel = _rel(kind, image_id)
        keys[image_id] = image_key(write_image(images_dir / rel, image_id))  # PNG: lossless
        info = {"id": image_id, "height": h, "width": w}
        if kind == "lvis":
            info |= {"coco_url": f"http://images.cocodataset.org/val2017/{rel.name}",
                     "neg_category_ids": [], "not_exhaustive_category_ids": []}
        else:
            info["file_name"] = rel.name
        images.append(info)
    truth: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {k: [] for k in keys.values()}
    annotations = []
    for ann_id, (image_id, cat, mask, crowd) in masks.items():
        bbox = tight_bbox(mask)
        ann = {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox,
               "area": float(mask.sum()), "segmentation": mask_to_rle(mask)}
        if kind == "coco":
            ann["iscrowd"] = int(crowd)
        annotations.append(ann)
        xyxy = np.array([bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]])
        truth[keys[image_id]].append((xyxy, mask))
    categories = [{"id": 1, "name": "thing"}, {"id": 2, "name": "wedge"}]
    if kind == "lvis":
        categories[0]["frequency"], categories[1]["frequency"] = "f", "r"
    path = root / f"{kind}_val.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))
    return path, images_dir, truth




def _pack(targets: list[np.ndarray], multimask_output: bool) -> tuple[np.ndarray, np.ndarray]:
    """Masks ``K x M x H x W`` with the target in slot 1 and the highest score there, so the
    runner's best-mask choice is exercised (M = 3: an empty and a full decoy around it)."""
    stack = np.stack(targets)
    if not multimask_output:
        return stack[:, None], np.full((len(targets), 1), 0.9)
    decoys = np.zeros_like(stack), np.ones_like(stack)
    masks = np.stack([decoys[0], stack, decoys[1]], axis=1)
    return masks, np.tile(np.array([0.3, 0.9, 0.5]), (len(targets), 1))


def _fill_box(shape: tuple[int, int], box: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = box
    mask = np.zeros(shape, dtype=bool)
    mask[int(np.floor(y0)): int(np.ceil(y1)), int(np.floor(x0)): int(np.ceil(x1))] = True
    return mask


class FakePredictor:
    """Base of the test predictors: records the calls and the image it was given."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.shape = (0, 0)
        self.key = ""

    def set_image(self, image: np.ndarray) -> None:
        self.shape, self.key = image.shape[:2], image_key(image)

    def predict_batch(self, *, boxes=None, points=None, labels=None, mask_input=None,
                      multimask_output):
        self.calls.append({"boxes": boxes, "points": points, "labels": labels,
                           "mask_input": mask_input, "multimask": multimask_output})
        if boxes is not None:
            targets = [self.for_box(np.asarray(b)) for b in boxes]
        else:
            targets = [self.for_points(p, lab) for p, lab in zip(points, labels, strict=True)]
        masks, scores = _pack(targets, multimask_output)
        # low-res logits that name their call and slot: (call number, slot index)
        low_res = np.zeros((*masks.shape[:2], 256, 256), dtype=np.float32)
        low_res[:, :, 0, 0] = len(self.calls)
        low_res[:, :, 0, 1] = np.arange(masks.shape[1])
        return masks, scores, low_res


class OraclePredictor(FakePredictor):
    """Returns the ground truth: the mask whose box is the prompt box, or the smallest mask
    holding every positive click and no negative one; a box matching nothing is filled.
    (Nested objects make the clicks ambiguous, as for a real model: use sets without them.)"""

    def __init__(self, truth: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> None:
        super().__init__()
        self.truth = truth

    def for_box(self, box: np.ndarray) -> np.ndarray:
        for xyxy, mask in self.truth[self.key]:
            if np.allclose(xyxy, box):
                return mask
        return _fill_box(self.shape, box)

    def for_points(self, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        def fits(mask: np.ndarray) -> bool:
            return all(mask[y, x] == bool(label)
                       for (x, y), label in zip(points.astype(int), labels, strict=True)
                       if label in (0, 1))

        return min((m for _, m in self.truth[self.key] if fits(m)), key=lambda m: m.sum())


class BoxFillPredictor(FakePredictor):
    """Known error: every box prompt gives the filled box."""

    def for_box(self, box: np.ndarray) -> np.ndarray:
        return _fill_box(self.shape, box)


class SquareClickPredictor(FakePredictor):
    """Known error: the union of (2r+1)^2 squares around the positive clicks, minus those
    around the negative ones; padding points (label -1) are ignored."""

    def __init__(self, radius: int = 2) -> None:
        super().__init__()
        self.radius = radius

    def for_points(self, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        mask = np.zeros(self.shape, dtype=bool)
        r = self.radius
        for positive in (True, False):
            for (x, y), label in zip(points.astype(int), labels, strict=True):
                if label == int(positive):
                    mask[max(y - r, 0): y + r + 1, max(x - r, 0): x + r + 1] = positive
        return mask


def truth_from_dataset(dataset) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Oracle truth for any :class:`eval.datasets.EvalDataset` (crowds included)."""
    truth = {}
    for image_id in dataset.image_ids:
        key = image_key(dataset.load_image(image_id))
        truth[key] = [(inst.box_xyxy, inst.mask())
                      for inst in dataset.instances(image_id, skip_crowd=False)]
    return truth
