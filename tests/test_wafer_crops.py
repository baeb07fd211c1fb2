"""Wafer training crops (distill/wafer_crops.py) and the model seam recall of bench-tiled."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from distill.wafer import Wafer
from distill.wafer_crops import MIN_VISIBLE_AREA, wafer_crop, write_crops
from effvit_sam import cli
from effvit_sam.masks import rle_to_mask
from effvit_sam.tiled_masks import CroppedMask
from effvit_sam.tools import bench_tiled, tiled_recall


def test_crop_labels_are_the_wafer_ground_truth_clipped_to_the_window():
    size, wafer_size, per_wafer = 300, 700, 2
    objects = 0
    for index in range(4):
        image, labels = wafer_crop(3, index, size=size, wafer_size=wafer_size,
                                   crops_per_wafer=per_wafer)
        wafer = Wafer(wafer_size, wafer_size, seed=3000 + index // per_wafer)
        rng = np.random.default_rng([3, index])
        x0, y0 = (int(v) for v in rng.integers(0, wafer_size - size + 1, size=2))
        np.testing.assert_array_equal(image, wafer.read(x0, y0, x0 + size, y0 + size))
        expected = []
        for ann in wafer.coco("w.tif")["annotations"]:
            part = rle_to_mask(ann["segmentation"])[y0: y0 + size, x0: x0 + size]
            if part.sum() >= MIN_VISIBLE_AREA:
                expected.append(part)
        assert labels.max() == len(expected) >= 1
        objects += len(expected)
        found = [labels == k for k in range(1, labels.max() + 1)]
        for part in expected:  # each clipped object is exactly one label, in any order
            assert sum(np.array_equal(part, f) for f in found) == 1
        assert (labels == 0).sum() == size * size - sum(int(p.sum()) for p in expected)
    assert objects >= 5  # cut dies (and defects), more than one object per crop
    again = wafer_crop(3, 1, size=size, wafer_size=wafer_size, crops_per_wafer=per_wafer)
    np.testing.assert_array_equal(again[1], wafer_crop(3, 1, size=size, wafer_size=wafer_size,
                                                       crops_per_wafer=per_wafer)[1])


def test_command_writes_the_from_masks_layout_and_refuses_a_full_folder(tmp_path, capsys):
    out = tmp_path / "crops"
    argv = ["make-wafer-crops", "--out", str(out), "--num-images", "3", "--crop-size", "128",
            "--wafer-size", "700"]
    assert cli.main(argv) == 0
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == sorted(p.name for p in (out / "masks").iterdir()) == [
        "wafer_0000.png", "wafer_0001.png", "wafer_0002.png"]
    with Image.open(out / "images" / names[0]) as im, Image.open(out / "masks" / names[0]) as m:
        assert im.mode == "RGB" and m.mode == "L" and im.size == m.size == (128, 128)
    total = sum(int(np.asarray(Image.open(out / "masks" / n)).max()) for n in names)
    assert f"with {total} objects" in capsys.readouterr().out
    assert cli.main(argv) == 2
    assert "is not empty" in capsys.readouterr().err
    with pytest.raises(Exception, match="larger than --wafer-size"):
        write_crops(tmp_path / "x", num_images=1, size=800, wafer_size=700)


def test_seam_recall_counts_each_category_and_misses_what_is_not_merged():
    wafer = Wafer(700, 700, seed=2, defects_per_mpx=40, seam_tile=256, seam_overlap=32)
    size = (700, 700)
    found = [(kind, CroppedMask.from_window(crop, x0, y0, size))
             for kind, crop, x0, y0 in wafer.objects() if crop.any()]
    crossing = [(k, o) for k, o in found if wafer.crosses_seam(o.rect)]

    class Merged:  # what the recall reads of a MergedMask
        def __init__(self, obj):
            self.rle, self.bbox_xywh = obj.to_rle(), obj.bbox_xywh

    hits, totals = tiled_recall.recall(crossing, [Merged(o) for _, o in found])
    assert hits == totals and sum(totals.values()) == len(crossing) and totals["die"] >= 3
    dropped = next(k for k, _ in crossing if k != "die")
    kept = [Merged(o) for k, o in crossing if k != dropped]
    hits, _ = tiled_recall.recall(crossing, kept, "exact")
    assert hits[dropped] == 0 and hits["die"] == totals["die"]
    # A mask of 70 % of each die: found (IoU 0.7 >= 0.5), not precise (< 0.9).
    dies = [o for k, o in crossing if k == "die"]
    parts = [Merged(CroppedMask.from_window(o.mask[:, : o.mask.shape[1] * 7 // 10], o.x0, o.y0,
                                            size)) for o in dies]
    assert tiled_recall.recall(crossing, parts)[0].get("die", 0) == 0
    assert tiled_recall.recall(crossing, parts, iou=0.5)[0]["die"] == len(dies)
    # The other side: masks no object explains at IoU 0.5. The exact masks and the 70 % dies are
    # all explained; a mask of a street, and a box far larger than a particle, are not.
    exact = [Merged(o) for _, o in found]
    assert tiled_recall.unmatched(exact, found) == 0
    assert tiled_recall.unmatched(parts, found) == 0
    # a box of twice the sides around a particle: it covers the particle, at IoU < 0.5
    particle = next(o for k, o in found if k == "particle")
    h, w = particle.mask.shape
    around = CroppedMask.from_window(np.ones((2 * h, 2 * w), bool), max(0, particle.x0 - w // 2),
                                     max(0, particle.y0 - h // 2), size)
    street = np.ones((3, 40), bool)  # a thin strip at the image's corner
    junk = [Merged(around),
            Merged(CroppedMask.from_window(street, 0, 0, size))]
    assert tiled_recall.unmatched(exact + junk, found) == 2


def test_bench_seam_model_part_reports_recall_and_writes_the_overview(tmp_path):
    argv = ["--part", "everything", "--workdir", str(tmp_path), "--everything-size", "300",
            "--model", "efficientvit-sam-tiny", "--no-fast", "--tile", "128", "--overlap", "16",
            "--throughput-tiles", "1", "--points-per-side", "2", "--seam-model",
            "--seam-points-per-side", "2", "--overview", str(tmp_path / "ov.png"),
            "--report", str(tmp_path / "r.json")]
    assert bench_tiled.main(argv) == 0
    (report,) = json.loads((tmp_path / "r.json").read_text())
    seams = report["model_seams"]
    assert seams["seam_crossing"] == report["oracle"]["seam_crossing"] > 0
    assert 0 <= seams["seam_crossing_iou_0.9"] <= seams["seam_crossing"]
    assert sum(int(v.split("/")[1]) for v in seams["per_category"].values()) == \
        seams["seam_crossing"]
    for kind, strict in seams["per_category"].items():  # IoU 0.5 finds at least what 0.9 does
        loose = seams["per_category_iou_0.5"][kind]
        assert loose.split("/")[1] == strict.split("/")[1]
        assert int(loose.split("/")[0]) >= int(strict.split("/")[0])
    assert 0 <= seams["masks_matching_no_object"] <= seams["merged_masks"]
    assert (seams["pred_iou_thresh"], seams["stability_score_thresh"]) == (0.88, 0.95)
    with Image.open(tmp_path / "ov.png") as im:
        assert im.size == (300, 300)
