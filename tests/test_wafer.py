"""The made wafer images (distill/wafer.py): pixels, ground truth, seams, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill.wafer import CATEGORIES, DEFECT_COLOURS, DIE, PAD, Wafer, WaferLayout
from effvit_sam import cli
from effvit_sam.errors import UserError
from effvit_sam.masks import rle_to_box_xywh, rle_to_mask
from effvit_sam.tiled import tile_grid
from effvit_sam.tiled_source import open_source


@pytest.fixture(scope="module")
def wafer() -> Wafer:
    return Wafer(520, 610, seed=5, layout=WaferLayout(160, 20), defects_per_mpx=60,
                 seam_tile=256, seam_overlap=32)


def test_ground_truth_matches_the_pixels(wafer):
    image = wafer.read(0, 0, wafer.width, wafer.height)
    doc = wafer.coco("w.tif")
    names = {c["id"]: c["name"] for c in doc["categories"]}
    assert [c["name"] for c in doc["categories"]] == list(CATEGORIES)
    kinds = [names[a["category_id"]] for a in doc["annotations"]]
    assert kinds.count("die") == len(wafer.layout.dies(520, 610)) == 3 * 4  # edge dies clipped
    assert {"scratch", "particle", "blob"} <= set(kinds)
    defects = np.zeros((520, 610), bool)
    dies = np.zeros((520, 610), bool)
    for ann, kind in zip(doc["annotations"], kinds, strict=True):
        mask = rle_to_mask(ann["segmentation"])
        assert ann["area"] == int(mask.sum()) > 0
        assert ann["bbox"] == rle_to_box_xywh(ann["segmentation"])
        if kind == "die":
            assert not (dies & mask).any()  # dies are disjoint
            dies |= mask
            continue
        assert not (defects & mask).any()  # defects never overlap each other
        defects |= mask
        # a defect is flat in its own colour, far from the die body and the pads
        assert (image[mask] == DEFECT_COLOURS[kind]).all()
        for colour in (DIE, PAD):
            assert np.abs(image[mask].astype(int) - colour).sum(-1).min() > 60
    assert not (dies & defects).any()  # a die's mask is its visible body
    body = image[dies].astype(int)
    assert (np.abs(body - DIE).sum(-1) < 40).mean() > 0.5  # mostly die-coloured


def test_some_defects_cross_the_seams(wafer):
    windows = tile_grid(520, 610, 256, 32)
    anns = [a for a in wafer.coco("w.tif")["annotations"] if a["category_id"] > 1]
    crossing = [a for a in anns if a["crosses_seam"]]
    assert len(crossing) >= 3
    for a in anns:
        x, y, w, h = a["bbox"]
        seen = [v for v in windows if v.x0 < x + w and x < v.x1 and v.y0 < y + h and y < v.y1]
        cut = [v for v in seen
               if not (v.x0 <= x and v.y0 <= y and x + w <= v.x1 and y + h <= v.y1)]
        assert a["crosses_seam"] == bool(cut)


def test_same_pixels_from_any_window_and_from_the_tiff(tmp_path, wafer):
    whole = wafer.read(0, 0, wafer.width, wafer.height)
    assert np.array_equal(wafer.read(100, 37, 300, 290), whole[37:290, 100:300])
    path = tmp_path / "w.tif"
    wafer.write_tiff(path, tile=128)
    with open_source(path) as source:
        assert not source.memory_mapped  # tiled BigTIFF: read tile by tile
        assert np.array_equal(source.read(0, 0, wafer.width, wafer.height), whole)
    assert Wafer(520, 610, seed=5, layout=WaferLayout(160, 20), defects_per_mpx=60,
                 seam_tile=256, seam_overlap=32).defects == wafer.defects  # seeded


def test_make_wafer_command(tmp_path, capsys):
    out = tmp_path / "w.tif"
    argv = ["make-wafer", str(out), "--height", "300", "--width", "420", "--die", "128",
            "--street", "16", "--seam-tile", "128", "--seam-overlap", "16", "--tiff-tile", "64"]
    assert cli.main(argv) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["images"] == [{"id": 1, "file_name": "w.tif", "height": 300, "width": 420}]
    assert open_source(out).read(0, 0, 420, 300).shape == (300, 420, 3)
    assert f"{len(doc['annotations'])} annotations" in capsys.readouterr().out
    assert cli.main(["make-wafer", str(tmp_path / "w.png")]) == 2
    assert "must be a .tif" in capsys.readouterr().err
    with pytest.raises(UserError, match="at least 64"):
        Wafer(40, 400)
