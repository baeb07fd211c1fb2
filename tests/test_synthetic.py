"""Synthetic SA-1B shards and COCO / LVIS sets, checked with an independent reader.

The shards are read back with ``tarfile`` + ``json`` + ``pycocotools.mask`` only (not with
``distill.sa1b``); the eval sets with ``pycocotools.coco.COCO`` and ``lvis.LVIS``.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image
from scipy import ndimage

from distill.synthetic import MIN_VISIBLE_AREA, SHAPES, make_scene, scene_size
from distill.synthetic_writers import boundary_stability, write_eval_set, write_sa1b_shards
from effvit_sam.cli import main as cli_main

NUM_SHARDS, PER_SHARD, SIZE = 2, 4, 256
ANN_KEYS = {"id", "segmentation", "bbox", "area", "predicted_iou", "stability_score",
            "point_coords", "crop_box"}


def read_shard(path: Path) -> dict[str, dict]:
    """Independent SA-1B reader: ``{stem: {"jpg": ndarray, "json": dict}}`` in member order."""
    samples: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            stem, ext = member.name.rsplit(".", 1)
            data = tar.extractfile(member).read()
            if ext == "jpg":
                value = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            else:
                value = json.loads(data)
            samples.setdefault(stem, {})[ext] = value
    return samples


def decode(ann: dict) -> np.ndarray:
    return mask_util.decode(ann["segmentation"]).astype(bool)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_sa1b_shards(out, num_shards=NUM_SHARDS, images_per_shard=PER_SHARD, seed=3,
                      image_size=SIZE)
    return out


@pytest.fixture(scope="module")
def samples(shard_dir) -> dict[str, dict]:
    merged: dict[str, dict] = {}
    for path in sorted(shard_dir.glob("*.tar")):
        merged.update(read_shard(path))
    return merged


def test_shard_names_members_paired_and_ids_unique(shard_dir):
    assert sorted(p.name for p in shard_dir.iterdir()) == ["sa_000000.tar", "sa_000001.tar"]
    ids = []
    for path in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(path) as tar:
            names = tar.getnames()
        assert len(names) == 2 * PER_SHARD
        for jpg, js in zip(names[::2], names[1::2], strict=True):  # pairs, jpg then json
            assert re.fullmatch(r"sa_\d+\.jpg", jpg) and js == jpg[:-4] + ".json"
            ids.append(int(jpg[3:-4]))
    assert ids == list(range(1, NUM_SHARDS * PER_SHARD + 1))


def test_json_schema_and_masks_consistent(samples):
    for stem, sample in samples.items():
        image, record = sample["jpg"], sample["json"]
        h, w = image.shape[:2]
        assert set(record) == {"image", "annotations"}
        assert record["image"] == {"image_id": int(stem[3:]), "width": w, "height": h,
                                   "file_name": f"{stem}.jpg"}
        assert max(h, w) == SIZE
        ann_ids = [a["id"] for a in record["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)
        for ann in record["annotations"]:
            assert set(ann) == ANN_KEYS
            assert ann["segmentation"]["size"] == [h, w]
            assert isinstance(ann["segmentation"]["counts"], str)
            mask = decode(ann)
            assert mask.shape == (h, w)
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                   ys.max() - ys.min() + 1]
            assert ann["area"] == mask.sum() >= MIN_VISIBLE_AREA
            [[x, y]] = ann["point_coords"]
            assert mask[int(y), int(x)]
            assert ann["crop_box"] == [0, 0, w, h]
            assert ann["predicted_iou"] == 1.0
            assert 0.0 <= ann["stability_score"] <= 1.0


def test_objects_parts_and_occlusion(samples):
    """Wholes (masks inside no other mask) are disjoint visible parts, 3..30 per image; every
    other mask is a strict part of exactly one whole."""
    parts_seen = 0
    for sample in samples.values():
        masks = [decode(a) for a in sample["json"]["annotations"]]
        inside = [[j for j, other in enumerate(masks) if j != i and not (m & ~other).any()]
                  for i, m in enumerate(masks)]
        wholes = [m for m, parents in zip(masks, inside, strict=True) if not parents]
        assert 3 <= len(wholes) <= 30
        union = np.logical_or.reduce(wholes)
        assert union.sum() == sum(int(m.sum()) for m in wholes)  # disjoint: occlusion resolved
        for m, parents in zip(masks, inside, strict=True):
            if parents:
                assert len(parents) == 1 and m.sum() < masks[parents[0]].sum()
                parts_seen += 1
    assert parts_seen > 0


def test_objects_stand_out_from_their_surroundings(samples):
    """Colour changes across object boundaries far more than inside objects or background."""
    across, within = [], []
    for sample in samples.values():
        image = sample["jpg"].astype(np.float32)
        labels = np.zeros(image.shape[:2], dtype=np.int32)
        for i, ann in enumerate(sample["json"]["annotations"], start=1):
            labels[decode(ann)] = i  # parts come after their wholes, so they label on top
        for axis in (0, 1):
            diff = np.abs(np.diff(image, axis=axis)).sum(-1)
            edge = np.diff(labels, axis=axis) != 0
            across.append(diff[edge])
            within.append(diff[~edge])
    ratio = np.concatenate(across).mean() / np.concatenate(within).mean()
    assert ratio > 4.0, ratio


def test_scene_variety():
    """Across a few scenes: every shape, rings with holes, tiny and thin objects, both
    orientations, and masks that are the visible (occluded) parts."""
    categories, holes, tiny, thin, orientations = set(), 0, 0, 0, set()
    for seed in range(12):
        rng = np.random.default_rng(seed)
        size = scene_size(rng, 320)
        scene = make_scene(rng, size=size)
        assert scene.image.shape == (*size, 3) and scene.image.dtype == np.uint8
        orientations.add(size[0] > size[1])
        for obj in scene.objects:
            categories.add(obj.category)
            area = int(obj.mask.sum())
            if obj.category == "ring" and ndimage.binary_fill_holes(obj.mask).sum() > area:
                holes += 1
            tiny += obj.parent is None and area < 100
            thin += obj.category == "line" and boundary_stability(obj.mask) < 0.2
    assert categories == {*SHAPES, "part"}
    assert holes and tiny and thin
    assert orientations == {True, False}


def test_same_seed_same_bytes_other_seed_differs(shard_dir, tmp_path):
    write_sa1b_shards(tmp_path / "a", num_shards=1, images_per_shard=PER_SHARD, seed=3,
                      image_size=SIZE)
    write_sa1b_shards(tmp_path / "b", num_shards=1, images_per_shard=PER_SHARD, seed=4,
                      image_size=SIZE)
    first = (shard_dir / "sa_000000.tar").read_bytes()
    assert (tmp_path / "a" / "sa_000000.tar").read_bytes() == first
    assert (tmp_path / "b" / "sa_000000.tar").read_bytes() != first


def test_boundary_stability_hand_computed():
    square = np.ones((3, 3), dtype=bool)  # erodes to 1 pixel, dilates to 9 + 12 = 21
    assert boundary_stability(square) == pytest.approx(1 / 21)
    assert boundary_stability(np.ones((1, 7), dtype=bool)) == 0.0  # a 1-pixel line


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="at least 32"):
        make_scene(np.random.default_rng(0), size=(16, 64))
    with pytest.raises(ValueError, match="at least one shard"):
        write_sa1b_shards("/nonexistent", num_shards=0, images_per_shard=1)
    with pytest.raises(ValueError, match="'coco' or 'lvis'"):
        write_eval_set("/nonexistent", num_images=1, fmt="voc")
    with pytest.raises(SystemExit):
        cli_main(["make-shards", "--out", "/nonexistent", "--num-shards", "0",
                  "--images-per-shard", "1"])


def test_make_shards_cli(tmp_path):
    assert cli_main(["make-shards", "--out", str(tmp_path), "--num-shards", "1",
                     "--images-per-shard", "2", "--image-size", "96", "--seed", "1"]) == 0
    samples = read_shard(tmp_path / "sa_000000.tar")
    assert sorted(samples) == ["sa_1", "sa_2"]
    assert all(max(s["jpg"].shape[:2]) == 96 for s in samples.values())


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("coco")
    assert cli_main(["make-eval-set", "--out", str(out), "--num-images", "4", "--seed", "3",
                     "--image-size", str(SIZE)]) == 0
    return out


def test_coco_set_loads_and_matches_images(coco_set, samples):
    from pycocotools.coco import COCO

    coco = COCO(str(coco_set / "annotations" / "instances_val.json"))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == sorted(SHAPES)
    assert len(coco.getImgIds()) == 4
    shard_images = [s["jpg"] for s in samples.values()]
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = np.asarray(Image.open(coco_set / "images" / img["file_name"]).convert("RGB"))
        assert pixels.shape == (img["height"], img["width"], 3)
        # Eval scenes come from their own seed stream: none repeats a training image.
        assert not any(p.shape == pixels.shape and (p == pixels).all() for p in shard_images)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert 3 <= len(anns) <= 30
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        for ann, mask in zip(anns, masks, strict=True):
            assert ann["area"] == mask.sum() and ann["iscrowd"] == 0
            assert ann["bbox"] == list(mask_util.toBbox(mask_util.encode(
                np.asfortranarray(mask.astype(np.uint8)))))
        assert np.logical_or.reduce(masks).sum() == sum(m.sum() for m in masks)  # no parts


def test_coco_eval_scores_ground_truth_perfectly(coco_set):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO(str(coco_set / "annotations" / "instances_val.json"))
    results = [{"image_id": a["image_id"], "category_id": a["category_id"],
                "segmentation": a["segmentation"], "score": 1.0}
               for a in coco.dataset["annotations"]]
    evaluator = COCOeval(coco, coco.loadRes(results), "segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_lvis_set_loads_and_is_consistent(tmp_path):
    from lvis import LVIS

    from eval.coco_metrics import lvis_segm_ap

    path = write_eval_set(tmp_path, num_images=4, seed=5, image_size=SIZE, fmt="lvis")
    assert path == tmp_path / "annotations" / "lvis_v1_val.json"
    lvis = LVIS(str(path))
    all_cats = set(lvis.get_cat_ids())
    for img in lvis.load_imgs(lvis.get_img_ids()):
        assert img["coco_url"].startswith("http://images.cocodataset.org/val2017/")
        file = tmp_path / "images" / img["coco_url"].rsplit("/", 1)[1]
        assert Image.open(file).size == (img["width"], img["height"])
        anns = lvis.load_anns(lvis.get_ann_ids(img_ids=[img["id"]]))
        present = {a["category_id"] for a in anns}
        assert img["neg_category_ids"] == sorted(all_cats - present)
        assert img["not_exhaustive_category_ids"] == []
        for ann in anns:
            assert ann["area"] == lvis.ann_to_mask(ann).sum()
    for cat in lvis.load_cats(None):
        anns = [a for a in lvis.dataset["annotations"] if a["category_id"] == cat["id"]]
        assert cat["instance_count"] == len(anns)
        assert cat["image_count"] == len({a["image_id"] for a in anns})
        assert cat["frequency"] in "rcf" and cat["synset"] == f"{cat['name']}.n.01"
    assert {c["frequency"] for c in lvis.load_cats(None)} == {"r", "c", "f"}

    results = [{"image_id": a["image_id"], "category_id": a["category_id"],
                "segmentation": a["segmentation"], "score": 1.0}
               for a in lvis.dataset["annotations"]]
    # The project's scorer (LVISEval under NumPy 2): ground truth as detections is perfect in
    # every frequency group, so the set exercises APr / APc / APf.
    scores = lvis_segm_ap(path, results, lvis.get_img_ids())
    for key in ("AP", "APr", "APc", "APf"):
        assert scores[key] == pytest.approx(100.0), key
