"""COCO / LVIS files and mask folders to SA-1B shards, checked by an independent reader
(tarfile + json + pycocotools), not by the package's own SA-1B reader alone."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from distill.convert import convert_coco, convert_mask_folder, held_out, label_image_to_rles
from effvit_sam.errors import UserError

H, W = 40, 60


def _rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _source_mask(segmentation, h: int = H, w: int = W) -> np.ndarray:
    """What pycocotools itself makes of a COCO segmentation (the ground truth)."""
    if isinstance(segmentation, list):
        rle = mask_util.merge(mask_util.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation["counts"], list):
        rle = mask_util.frPyObjects(segmentation, h, w)
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
    return mask_util.decode(rle).astype(bool)


def read_shards(out: Path) -> dict[int, tuple[bytes, list[np.ndarray]]]:
    """Independent reader: image id -> (jpg bytes, masks) from every ``sa_*.tar``."""
    found = {}
    for shard in sorted(out.glob("sa_*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                record = json.loads(data)
                image_id = record["image"]["image_id"]
                masks = [mask_util.decode({"size": a["segmentation"]["size"],
                                           "counts": a["segmentation"]["counts"].encode()})
                         .astype(bool) for a in record["annotations"]]
                for a, m in zip(record["annotations"], masks, strict=True):
                    x, y = (int(v) for v in a["point_coords"][0])
                    assert m[y, x], "point_coords must lie inside the mask"
                    assert a["area"] == int(m.sum())
                found[image_id] = (members[f"sa_{image_id}.jpg"], masks)
    return found


@pytest.fixture()
def coco_set(tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "a.jpg", quality=90)
    Image.fromarray(pixels).save(images / "b.png")
    Image.fromarray(pixels[..., 0]).save(images / "c.png")  # greyscale
    square = _rect(5, 20, 10, 30)
    compressed = mask_util.encode(np.asfortranarray(_rect(22, 38, 35, 55).astype(np.uint8)))
    square_counts = mask_util.encode(np.asfortranarray(square.astype(np.uint8)))["counts"].decode()
    runs = [W * H // 2, W * H - W * H // 2]  # column-major runs: the left half empty
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
         "segmentation": [[10, 5, 30, 5, 30, 20, 10, 20]]},                  # polygon
        {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0,
         "segmentation": {"size": [H, W], "counts": compressed["counts"].decode()}},
        {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 1,               # crowd
         "segmentation": {"size": [H, W], "counts": runs}},
        {"id": 4, "image_id": 2, "category_id": 1, "iscrowd": 0,
         "segmentation": {"size": [H, W], "counts": runs}},                    # uncompressed
        {"id": 5, "image_id": 3, "category_id": 1, "iscrowd": 0,
         "segmentation": {"size": [H, W], "counts": square_counts}},
        {"id": 6, "image_id": 3, "category_id": 1, "iscrowd": 0,
         "segmentation": {"size": [H, W], "counts": [H * W]}},                 # empty
    ]
    data = {"images": [{"id": i, "file_name": n, "height": H, "width": W}
                       for i, n in ((1, "a.jpg"), (2, "b.png"), (3, "c.png"))],
            "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    ann_path = tmp_path / "instances.json"
    ann_path.write_text(json.dumps(data))
    return ann_path, images, data


def test_coco_round_trip_every_mask_identical(coco_set, tmp_path: Path) -> None:
    ann_path, images, data = coco_set
    report = convert_coco(ann_path, images, tmp_path / "out", images_per_shard=2)
    assert [p.name for p in report.shards] == ["sa_000000.tar", "sa_000001.tar"]
    assert report.images == 3 and report.masks == 4
    assert report.skipped["crowd"] == 1 and report.skipped["empty_mask"] == 1
    found = read_shards(tmp_path / "out")
    assert sorted(found) == [1, 2, 3]
    for image_id, (_, masks) in found.items():
        want = [_source_mask(a["segmentation"]) for a in data["annotations"]
                if a["image_id"] == image_id and not a["iscrowd"] and a["id"] != 6]
        assert len(masks) == len(want)
        for got, expected in zip(masks, want, strict=True):
            np.testing.assert_array_equal(got, expected)
    # a baseline RGB JPEG is copied byte for byte; PNGs (colour and grey) are re-encoded
    assert found[1][0] == (images / "a.jpg").read_bytes()
    for image_id in (2, 3):
        with Image.open(io.BytesIO(found[image_id][0])) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (W, H)


def test_coco_shards_read_by_the_training_reader(coco_set, tmp_path: Path) -> None:
    from distill.sa1b import sa1b_dataset

    ann_path, images, _ = coco_set
    report = convert_coco(ann_path, images, tmp_path / "out", images_per_shard=10)
    samples = list(sa1b_dataset([str(p) for p in report.shards], encoder_size=256,
                                max_masks=8))
    assert sorted(len(s["masks"]) for s in samples) == [1, 1, 2]


def test_val_fraction_is_deterministic_and_disjoint(coco_set, tmp_path: Path) -> None:
    ann_path, images, data = coco_set
    ids = [im["id"] for im in data["images"]]
    seed = next(s for s in range(100)
                if 0 < sum(held_out(i, seed=s, fraction=0.5) for i in ids) < len(ids))
    report = convert_coco(ann_path, images, tmp_path / "out", val_fraction=0.5, seed=seed)
    val = json.loads(report.val_annotations.read_text())
    val_ids = {im["id"] for im in val["images"]}
    assert val_ids == {i for i in ids if held_out(i, seed=seed, fraction=0.5)}
    assert {a["image_id"] for a in val["annotations"]} <= val_ids
    assert set(read_shards(tmp_path / "out")).isdisjoint(val_ids)
    again = convert_coco(ann_path, images, tmp_path / "again", val_fraction=0.5, seed=seed)
    assert [p.read_bytes() for p in again.shards] == [p.read_bytes() for p in report.shards]


def test_lvis_images_found_through_coco_url(coco_set, tmp_path: Path) -> None:
    ann_path, images, data = coco_set
    for im in data["images"]:
        im["coco_url"] = f"http://images.cocodataset.org/val2017/{im.pop('file_name')}"
    ann_path.write_text(json.dumps(data))
    report = convert_coco(ann_path, images, tmp_path / "out")
    assert report.images == 3


def test_mask_folder_round_trip_8_and_16_bit(tmp_path: Path) -> None:
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    labels8 = np.zeros((H, W), np.uint8)
    labels8[2:10, 3:20], labels8[20:35, 30:50] = 1, 7
    labels16 = np.zeros((H, W), np.uint16)
    labels16[5:15, 5:15], labels16[30:39, 1:59] = 300, 1000
    for name, labels in (("x", labels8), ("y", labels16)):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
            root / "images" / f"{name}.png")
        Image.fromarray(labels).save(root / "masks" / f"{name}.png")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "images" / "z.png")  # no mask
    report = convert_mask_folder(root, tmp_path / "out")
    assert report.images == 2 and report.masks == 4 and report.skipped["missing_image"] == 1
    found = read_shards(tmp_path / "out")
    for image_id, labels in ((1, labels8), (2, labels16)):
        want = [labels == v for v in np.unique(labels) if v]
        for got, expected in zip(found[image_id][1], want, strict=True):
            np.testing.assert_array_equal(got, expected)


def test_label_image_rejects_colour_labels() -> None:
    labels = np.zeros((4, 4, 3), np.uint8)
    labels[0, 0] = (1, 2, 3)
    with pytest.raises(ValueError, match="equal channels"):
        label_image_to_rles(labels)


@pytest.mark.parametrize("kwargs, message", [
    (dict(val_fraction=1.0), "--val-fraction"),
    (dict(images_per_shard=0), "--images-per-shard"),
])
def test_bad_arguments(coco_set, tmp_path: Path, kwargs, message) -> None:
    ann_path, images, _ = coco_set
    with pytest.raises(UserError, match=message):
        convert_coco(ann_path, images, tmp_path / "out", **kwargs)


def test_missing_inputs_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="annotation file not found"):
        convert_coco(tmp_path / "nope.json", tmp_path, tmp_path / "out")
    with pytest.raises(UserError, match="images/ and masks/"):
        convert_mask_folder(tmp_path, tmp_path / "out")


def test_make_shards_command_converts(coco_set, tmp_path: Path, capsys) -> None:
    from effvit_sam.cli import main

    ann_path, images, _ = coco_set
    code = main(["make-shards", "--from-coco", str(ann_path), "--images", str(images),
                 "--out", str(tmp_path / "out"), "--images-per-shard", "2"])
    assert code == 0
    assert "3 images, 4 masks in 2 shards" in capsys.readouterr().out
    assert main(["make-shards", "--from-coco", str(tmp_path / "nope.json"), "--images",
                 str(images), "--out", str(tmp_path / "x")]) == 2
    assert "annotation file not found" in capsys.readouterr().err
