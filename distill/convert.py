"""Your own data as SA-1B shards: COCO / LVIS annotation files and folders of instance masks.

``effvit-sam make-shards --from-coco ANN.json --images DIR --out OUT`` (LVIS: ``--from-lvis``;
image + instance-label folders: ``--from-masks DIR``) writes ``OUT/sa_000000.tar ...`` in the
layout :mod:`distill.sa1b` reads (and phase 2 trains on): per image ``sa_<id>.jpg`` and
``sa_<id>.json`` with COCO-RLE masks, XYWH boxes, areas, ``point_coords`` and ``crop_box``.

* Polygons and (un)compressed RLE are turned into compressed RLE by pycocotools, through
  :mod:`effvit_sam.masks`; crowd regions (``iscrowd: 1``) and empty masks are skipped and
  counted (a crowd region marks many objects at once: no prompt should ask for it).
* Images are copied byte for byte when they already are baseline RGB JPEGs; anything else
  (PNG, TIFF, greyscale, CMYK, 16-bit) is re-encoded as a JPEG at :data:`JPEG_QUALITY`.
* Shards are assigned deterministically: images sorted by id, ``images_per_shard`` to a shard.
* ``val_fraction`` holds images out by a hash of ``(seed, image id)`` and writes them as a
  COCO file ``OUT/val/instances_val.json`` (same image folder) for ``effvit-sam eval`` and for
  validation during fine-tuning; held-out images go into no shard.

A mask folder is ``DIR/images/NAME.{jpg,png,tif,...}`` with ``DIR/masks/NAME.{png,tif}``: an
instance-label image of the same size (0 = background, each other value one instance; 8- or
16-bit), the usual layout of medical and industrial sets.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from effvit_sam.errors import UserError
from effvit_sam.io import atomic_write, read_json, write_json
from effvit_sam.masks import rle_area, rle_to_box_xywh, rle_to_mask, segmentation_to_rle

logger = logging.getLogger(__name__)

JPEG_QUALITY = 95
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
SKIP_REASONS = ("crowd", "empty_mask", "bad_segmentation", "missing_image", "size_mismatch")


@dataclass
class ConvertReport:
    """What a conversion wrote and skipped (``skipped``: counts by reason)."""

    shards: list[Path] = field(default_factory=list)
    images: int = 0
    masks: int = 0
    val_images: int = 0
    val_annotations: Path | None = None
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()) if v) or "none"
        val = f"; {self.val_images} held out in {self.val_annotations}" if self.val_images else ""
        return (f"{self.images} images, {self.masks} masks in {len(self.shards)} shards{val}; "
                f"skipped: {skipped}")


@dataclass(frozen=True)
class _Image:
    """One source image and its masks (compressed RLEs of its size)."""

    image_id: int
    path: Path
    height: int
    width: int
    rles: list[dict]


def held_out(image_id: int, *, seed: int, fraction: float) -> bool:
    """Whether ``image_id`` goes to the validation split (a stable hash, not Python's)."""
    digest = hashlib.sha256(f"{seed}/{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def jpeg_payload(path: Path) -> tuple[bytes, tuple[int, int]]:
    """The image's bytes as an RGB JPEG, and its ``(h, w)``: copied when it already is one."""
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            size = (im.height, im.width)
            if im.format == "JPEG" and im.mode == "RGB":
                return data, size
            rgb = _to_rgb(im)
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path} is not a readable image: {err}") from None
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue(), size


def _to_rgb(im: Image.Image) -> np.ndarray:
    """RGB uint8 of any PIL image; 16-bit and float greyscale are scaled by their range."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(im, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        scaled = np.zeros_like(array) if hi <= lo else (array - lo) / (hi - lo) * 255
        return np.repeat(scaled.round().astype(np.uint8)[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def _point_inside(mask: np.ndarray) -> list[float]:
    """The mask pixel nearest its centroid, as ``(x, y)``: always inside, deterministic."""
    ys, xs = np.nonzero(mask)
    d = (ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2
    k = int(np.argmin(d))
    return [float(xs[k]), float(ys[k])]


def sa1b_record(item: _Image) -> dict:
    """The SA-1B json of one image: every mask with its box, area and an inside point."""
    annotations = []
    for k, rle in enumerate(item.rles):
        annotations.append({
            "id": item.image_id * 10_000 + k, "segmentation": rle,
            "bbox": rle_to_box_xywh(rle), "area": rle_area(rle),
            "predicted_iou": 1.0, "stability_score": 1.0,  # human annotations: no model scores
            "point_coords": [_point_inside(rle_to_mask(rle))],
            "crop_box": [0.0, 0.0, float(item.width), float(item.height)],
        })
    return {"image": {"image_id": item.image_id, "width": item.width, "height": item.height,
                      "file_name": f"sa_{item.image_id}.jpg"},
            "annotations": annotations}


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # fixed metadata: the same input gives the same bytes
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(items: list[_Image], out_dir: Path, *, images_per_shard: int,
                 report: ConvertReport, desc: str) -> None:
    """Write ``items`` (sorted by id) into shards of ``images_per_shard`` images, atomically."""
    if images_per_shard < 1:
        raise UserError(f"--images-per-shard must be at least 1, got {images_per_shard}")
    items = sorted(items, key=lambda it: it.image_id)
    with tqdm(total=len(items), desc=desc, unit="img") as bar:
        for start in range(0, len(items), images_per_shard):
            chunk = items[start: start + images_per_shard]

            def write(tmp: str, chunk: list[_Image] = chunk) -> None:
                with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                    for item in chunk:
                        jpg, size = jpeg_payload(item.path)
                        if size != (item.height, item.width):
                            raise UserError(f"{item.path} is {size[1]}x{size[0]} but its "
                                            f"annotations say {item.width}x{item.height}")
                        _add_member(tar, f"sa_{item.image_id}.jpg", jpg)
                        _add_member(tar, f"sa_{item.image_id}.json",
                                    json.dumps(sa1b_record(item)).encode())
                        bar.update()

            path = out_dir / f"sa_{start // images_per_shard:06d}.tar"
            atomic_write(path, write)
            report.shards.append(path)
            report.images += len(chunk)
            report.masks += sum(len(it.rles) for it in chunk)


def _image_file(image: dict, images_dir: Path) -> Path | None:
    names = [image.get("file_name")]
    if image.get("coco_url"):  # LVIS v1: split/name at the end of the URL
        parts = image["coco_url"].rstrip("/").split("/")
        names += ["/".join(parts[-2:]), parts[-1]]
    for name in filter(None, names):
        if (images_dir / name).is_file():
            return images_dir / name
    return None


def convert_coco(annotations: str | Path, images: str | Path, out: str | Path, *,
                 images_per_shard: int = 100, val_fraction: float = 0.0,
                 seed: int = 0) -> ConvertReport:
    """A COCO or LVIS v1 annotation file (+ its image folder) as SA-1B shards in ``out``."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    ann_path, images_dir, out_dir = Path(annotations), Path(images), Path(out)
    if not ann_path.is_file():
        raise UserError(f"annotation file not found: {ann_path}")
    if not images_dir.is_dir():
        raise UserError(f"image folder not found: {images_dir}")
    try:
        data = read_json(ann_path)
        image_list = {int(im["id"]): im for im in data["images"]}
        anns = data["annotations"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{ann_path} is not a COCO/LVIS annotation file: {err}") from None
    report = ConvertReport()
    per_image: dict[int, list[dict]] = {i: [] for i in image_list}
    for ann in anns:
        image = image_list.get(int(ann.get("image_id", -1)))
        if image is None:
            report.skipped["missing_image"] += 1
            continue
        if ann.get("iscrowd", 0):
            report.skipped["crowd"] += 1
            continue
        try:
            rle = segmentation_to_rle(ann["segmentation"], image["height"], image["width"])
            if isinstance(rle.get("counts"), bytes):
                rle = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
            area = rle_area(rle)
        except (KeyError, TypeError, ValueError) as err:
            logger.warning("annotation %s: bad segmentation (%s); skipped", ann.get("id"), err)
            report.skipped["bad_segmentation"] += 1
            continue
        if area == 0:
            report.skipped["empty_mask"] += 1
            continue
        per_image[int(image["id"])].append({"size": [int(v) for v in rle["size"]],
                                            "counts": rle["counts"]})
    train, val_ids = [], []
    for image_id, rles in per_image.items():
        image = image_list[image_id]
        path = _image_file(image, images_dir)
        if path is None:
            report.skipped["missing_image"] += 1
            continue
        if val_fraction and held_out(image_id, seed=seed, fraction=val_fraction):
            val_ids.append(image_id)
        elif rles:
            train.append(_Image(image_id, path, int(image["height"]), int(image["width"]), rles))
    write_shards(train, out_dir, images_per_shard=images_per_shard, report=report,
                 desc="make-shards (coco)")
    if val_ids:
        keep = set(val_ids)
        subset = {**data, "images": [image_list[i] for i in sorted(keep)],
                  "annotations": [a for a in anns if int(a.get("image_id", -1)) in keep]}
        report.val_annotations = out_dir / "val" / "instances_val.json"
        write_json(report.val_annotations, subset, indent=None)
        report.val_images = len(val_ids)
    return report


def _label_file(masks_dir: Path, stem: str) -> Path | None:
    for suffix in (".png", ".tif", ".tiff"):
        if (masks_dir / f"{stem}{suffix}").is_file():
            return masks_dir / f"{stem}{suffix}"
    return None


def label_image_to_rles(labels: np.ndarray) -> list[dict]:
    """Instance-label ``H x W`` array (0 = background) to one compressed RLE per instance, in
    increasing label order."""
    from effvit_sam.masks import mask_to_rle

    if labels.ndim == 3:  # an RGB-saved label image: all channels must agree
        if not (labels == labels[..., :1]).all():
            raise ValueError("an RGB label image must have equal channels (one label per pixel)")
        labels = labels[..., 0]
    return [mask_to_rle(labels == value) for value in np.unique(labels) if value != 0]


def convert_mask_folder(folder: str | Path, out: str | Path, *, images_per_shard: int = 100,
                        val_fraction: float = 0.0, seed: int = 0) -> ConvertReport:
    """``folder/images`` + ``folder/masks`` instance-label images as SA-1B shards in ``out``.

    Image ids are 1.. in the sorted order of the image names. With ``val_fraction`` the
    held-out images are written as a COCO file (``OUT/val/instances_val.json``, category 1
    ``object``, ``file_name`` relative to ``folder/images``).
    """
    root, out_dir = Path(folder), Path(out)
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise UserError(f"{root} must hold images/ and masks/ folders (an instance-label "
                        "image per image, same name)")
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    report = ConvertReport()
    train, val_images, val_anns = [], [], []
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for image_id, path in enumerate(files, start=1):
        label_path = _label_file(masks_dir, path.stem)
        if label_path is None:
            report.skipped["missing_image"] += 1
            logger.warning("%s has no mask file in %s; skipped", path.name, masks_dir)
            continue
        with Image.open(label_path) as im:
            labels = np.asarray(im)
        with Image.open(path) as im:
            size = (im.height, im.width)
        if labels.shape[:2] != size:
            report.skipped["size_mismatch"] += 1
            logger.warning("%s: mask %s is %s, image is %s; skipped", path.name,
                           label_path.name, labels.shape[:2], size)
            continue
        try:
            rles = label_image_to_rles(labels)
        except ValueError as err:
            raise UserError(f"{label_path}: {err}") from None
        if val_fraction and held_out(image_id, seed=seed, fraction=val_fraction):
            val_images.append({"id": image_id, "file_name": path.name,
                               "height": size[0], "width": size[1]})
            val_anns += [{"id": len(val_anns) + k + 1, "image_id": image_id, "category_id": 1,
                          "segmentation": rle, "area": rle_area(rle),
                          "bbox": rle_to_box_xywh(rle), "iscrowd": 0}
                         for k, rle in enumerate(rles)]
        elif rles:
            train.append(_Image(image_id, path, size[0], size[1], rles))
        else:
            report.skipped["empty_mask"] += 1
    write_shards(train, out_dir, images_per_shard=images_per_shard, report=report,
                 desc="make-shards (masks)")
    if val_images:
        report.val_annotations = out_dir / "val" / "instances_val.json"
        write_json(report.val_annotations, {
            "images": val_images, "annotations": val_anns,
            "categories": [{"id": 1, "name": "object", "supercategory": "object"}]},
            indent=None)
        report.val_images = len(val_images)
    return report


def convert_main(argv: list[str]) -> int:
    """``effvit-sam make-shards --from-coco ANN --images DIR --out OUT`` (or ``--from-lvis``,
    ``--from-masks DIR``) ``[--images-per-shard N] [--val-fraction F] [--seed S]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="effvit-sam make-shards",
                                     description="your own data as SA-1B shards")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-coco", metavar="ANN.json", help="a COCO annotation file")
    source.add_argument("--from-lvis", metavar="ANN.json", help="an LVIS v1 annotation file")
    source.add_argument("--from-masks", metavar="DIR",
                        help="a folder with images/ and masks/ (instance-label images)")
    parser.add_argument("--images", help="the image folder (--from-coco / --from-lvis)")
    parser.add_argument("--out", required=True, help="output folder for sa_*.tar")
    parser.add_argument("--images-per-shard", type=int, default=100)
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="hold this share of the images out as OUT/val/instances_val.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    args = parser.parse_args(argv)
    if args.from_masks:
        report = convert_mask_folder(args.from_masks, args.out,
                                     images_per_shard=args.images_per_shard,
                                     val_fraction=args.val_fraction, seed=args.seed)
    else:
        if not args.images:
            parser.error("--images is required with --from-coco / --from-lvis")
        report = convert_coco(args.from_coco or args.from_lvis, args.images, args.out,
                              images_per_shard=args.images_per_shard,
                              val_fraction=args.val_fraction, seed=args.seed)
    print(f"make-shards: {report.summary()}")
    return 0
