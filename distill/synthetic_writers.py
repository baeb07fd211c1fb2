"""Write synthetic scenes (:mod:`distill.synthetic`) as SA-1B shards or COCO / LVIS val sets.

* SA-1B: ``DIR/sa_000000.tar ...``, each holding ``sa_<image_id>.jpg`` + ``sa_<image_id>.json``
  pairs in the exact SA-1B layout (COCO RLE masks with string counts, XYWH boxes, areas,
  ``predicted_iou``, ``stability_score``, ``point_coords``, ``crop_box``).
* COCO: ``DIR/annotations/instances_val.json`` + ``DIR/images/<012d id>.jpg``.
* LVIS v1: ``DIR/annotations/lvis_v1_val.json`` + the same images, found through the basename of
  each image's ``coco_url`` (as real LVIS v1 images have no ``file_name``).

Every image draws from its own generator seeded by ``(seed, stream, image_id)``, so output
bytes depend only on the arguments, and training shards and eval sets made with the same seed
never share an image. Files are written atomically.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image
from tqdm import tqdm

from effvit_sam.io import atomic_write
from effvit_sam.masks import mask_to_rle

from .synthetic import PART, SHAPES, Scene, make_scene, scene_size

logger = logging.getLogger(__name__)

JPEG_QUALITY = 92
SHARD_STREAM, EVAL_STREAM = 0, 1  # seed-sequence streams: shards and eval sets never overlap
COCO_URL = "http://images.cocodataset.org/val2017/{}"

LVIS_FREQUENCY = {"ellipse": "f", "polygon": "f", "blob": "c", "ring": "c",
                  "line": "r", "limbed": "r"}
"""Fixed LVIS frequency group per category, so every synthetic set has rare, common and
frequent categories (real LVIS assigns them from training-set image counts)."""


def scene_for(seed: int, stream: int, image_id: int, *, long_side: int) -> Scene:
    """The scene of ``image_id`` in a set made with ``seed`` (``stream``: shards 0, eval 1)."""
    rng = np.random.default_rng([seed, stream, image_id])
    return make_scene(rng, size=scene_size(rng, long_side))


def jpeg_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def boundary_stability(mask: np.ndarray) -> float:
    """IoU of a (cropped) mask eroded and dilated by one pixel (4-neighbourhood).

    SA-1B's ``stability_score`` is the IoU of the mask thresholded a little above and below its
    logit cut-off; for an exact binary mask the analogue is this one-pixel boundary wobble, low
    for thin parts and high for compact objects.
    """
    crop = np.pad(mask, 1)
    core = crop[1:-1, 1:-1]
    neighbours = (crop[:-2, 1:-1], crop[2:, 1:-1], crop[1:-1, :-2], crop[1:-1, 2:])
    eroded = np.logical_and.reduce((core, *neighbours)).sum()
    dilated = np.logical_or.reduce((core, *neighbours)).sum()
    # The dilation also grows one pixel outside the crop on each side it touches.
    dilated += mask[0].sum() + mask[-1].sum() + mask[:, 0].sum() + mask[:, -1].sum()
    return float(eroded / dilated)


def sa1b_record(scene: Scene, *, image_id: int, rng: np.random.Generator) -> dict:
    """The SA-1B json of ``scene`` (``rng`` picks each mask's ``point_coords``)."""
    h, w = scene.image.shape[:2]
    annotations = []
    for ann_id, obj in enumerate(scene.objects):
        rle = mask_to_rle(obj.mask)
        x, y, bw, bh = (int(v) for v in mask_util.toBbox(rle))
        crop = obj.mask[y: y + bh, x: x + bw]
        flat = np.flatnonzero(crop)
        row, col = divmod(int(flat[rng.integers(flat.size)]), bw)
        annotations.append({
            "id": image_id * 1000 + ann_id,
            "segmentation": rle,
            "bbox": [float(x), float(y), float(bw), float(bh)],
            "area": int(mask_util.area(rle)),
            # Exact ground truth: the mask is its own best prediction.
            "predicted_iou": 1.0,
            "stability_score": round(boundary_stability(crop), 6),
            "point_coords": [[float(x + col), float(y + row)]],
            "crop_box": [0.0, 0.0, float(w), float(h)],
        })
    file_name = f"sa_{image_id}.jpg"
    return {"image": {"image_id": image_id, "width": w, "height": h, "file_name": file_name},
            "annotations": annotations}


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed metadata (mtime 0, root, 0644) so the same arguments give the same bytes.
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_sa1b_shards(out_dir: str | Path, *, num_shards: int, images_per_shard: int,
                      seed: int = 0, image_size: int = 512) -> list[Path]:
    """Write ``num_shards`` SA-1B tar shards of ``images_per_shard`` scenes each.

    Image ids run from 1 across shards (shard ``s`` holds ids ``s * M + 1 .. (s + 1) * M``), so
    they are unique across the set. ``image_size`` is the long side in pixels.
    """
    if num_shards < 1 or images_per_shard < 1:
        raise ValueError(f"need at least one shard and one image per shard, got {num_shards} "
                         f"shards of {images_per_shard}")
    out_dir = Path(out_dir)
    paths = []
    with tqdm(total=num_shards * images_per_shard, desc="make-shards", unit="img") as bar:
        for shard in range(num_shards):
            ids = range(shard * images_per_shard + 1, (shard + 1) * images_per_shard + 1)

            def write(tmp: str, ids: range = ids) -> None:
                # Streamed into the temporary file: a shard never sits in memory whole.
                with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                    for image_id in ids:
                        scene = scene_for(seed, SHARD_STREAM, image_id, long_side=image_size)
                        rng = np.random.default_rng([seed, SHARD_STREAM, image_id, 1])
                        record = sa1b_record(scene, image_id=image_id, rng=rng)
                        _add_member(tar, f"sa_{image_id}.jpg", jpeg_bytes(scene.image))
                        _add_member(tar, f"sa_{image_id}.json", json.dumps(record).encode())
                        bar.update()

            path = out_dir / f"sa_{shard:06d}.tar"
            atomic_write(path, write)
            paths.append(path)
    logger.info("wrote %d shards to %s", num_shards, out_dir)
    return paths


def write_eval_set(out_dir: str | Path, *, num_images: int, seed: int = 0,
                   image_size: int = 512, fmt: str = "coco") -> Path:
    """Write a COCO- or LVIS-v1-format validation set; return the annotation file's path.

    Only whole objects are annotated (category = shape, ids 1.. in :data:`SHAPES` order);
    segmentations are RLE with string counts, ``area`` is the mask area, ``iscrowd`` 0. The
    scenes annotate every object, so for LVIS ``not_exhaustive_category_ids`` is empty and
    ``neg_category_ids`` lists every category absent from the image.
    """
    if fmt not in ("coco", "lvis"):
        raise ValueError(f"format must be 'coco' or 'lvis', got {fmt!r}")
    if num_images < 1:
        raise ValueError(f"need at least one image, got {num_images}")
    out_dir = Path(out_dir)
    cat_ids = {name: i + 1 for i, name in enumerate(SHAPES)}
    images, annotations = [], []
    for image_id in tqdm(range(1, num_images + 1), desc=f"make-eval-set ({fmt})", unit="img"):
        scene = scene_for(seed, EVAL_STREAM, image_id, long_side=image_size)
        h, w = scene.image.shape[:2]
        file_name = f"{image_id:012d}.jpg"
        data = jpeg_bytes(scene.image)
        atomic_write(out_dir / "images" / file_name, lambda p, d=data: Path(p).write_bytes(d))
        present = set()
        for obj in scene.objects:
            if obj.category == PART:
                continue
            rle = mask_to_rle(obj.mask)
            present.add(cat_ids[obj.category])
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": cat_ids[obj.category], "segmentation": rle,
                "area": int(mask_util.area(rle)),
                "bbox": [float(v) for v in mask_util.toBbox(rle)], "iscrowd": 0,
            })
        image = {"id": image_id, "width": w, "height": h}
        if fmt == "coco":
            image["file_name"] = file_name
        else:
            image.update(coco_url=COCO_URL.format(file_name), flickr_url="", license=1,
                         date_captured="", not_exhaustive_category_ids=[],
                         neg_category_ids=sorted(set(cat_ids.values()) - present))
        images.append(image)
    if fmt == "coco":
        categories = [{"id": i, "name": n, "supercategory": "shape"} for n, i in cat_ids.items()]
        name = "instances_val.json"
    else:
        categories = _lvis_categories(cat_ids, annotations)
        name = "lvis_v1_val.json"
    dataset = {"info": {"description": f"effvit-sam synthetic {fmt} val set, seed {seed}"},
               "licenses": [{"id": 1, "name": "synthetic", "url": ""}],
               "images": images, "annotations": annotations, "categories": categories}
    path = out_dir / "annotations" / name
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(dataset)))
    logger.info("wrote %d images, %d annotations to %s", len(images), len(annotations), path)
    return path


def _lvis_categories(cat_ids: dict[str, int], annotations: list[dict]) -> list[dict]:
    """LVIS v1 category records with image and instance counts taken from ``annotations``."""
    categories = []
    for name, cid in cat_ids.items():
        anns = [a for a in annotations if a["category_id"] == cid]
        categories.append({
            "id": cid, "name": name, "synset": f"{name}.n.01", "synonyms": [name],
            "def": f"a synthetic {name}-shaped object", "frequency": LVIS_FREQUENCY[name],
            "image_count": len({a["image_id"] for a in anns}), "instance_count": len(anns),
        })
    return categories
