"""``python -m eval.ceiling``: the mIoU ceiling of SAM's 256 x 256 mask logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill.cli import make_eval_set_main
from effvit_sam.errors import run_command
from eval.ceiling import ceiling_mask, main
from eval.metrics import mask_iou


def test_a_square_on_the_logit_grid_loses_only_its_corners() -> None:
    # On a 1024 x 1024 image each logit covers 4 x 4 pixels. Along a side of a square of whole
    # cells bilinear crosses 0 halfway between cell centres, on the side itself; at a corner
    # only 0.625^2 of the weight is inside, so the corner pixel falls out.
    mask = np.zeros((1024, 1024), bool)
    mask[100:300, 400:640] = True
    lost = np.argwhere(ceiling_mask(mask) != mask)
    assert sorted(map(tuple, lost)) == [(100, 400), (100, 639), (299, 400), (299, 639)]


def test_thin_and_tiny_objects_lose_and_large_ones_do_not() -> None:
    size = (768, 1024)
    big = np.zeros(size, bool)
    big[101:503, 203:711] = True          # off the grid: only its outline may move
    line = np.zeros(size, bool)
    line[300:302, 100:900] = True         # 2 px wide: half a logit
    dot = np.zeros(size, bool)
    dot[401:404, 501:504] = True          # 3 x 3 px
    assert mask_iou(ceiling_mask(big), big) > 0.99
    assert mask_iou(ceiling_mask(line), line) < 0.6
    assert mask_iou(ceiling_mask(dot), dot) < 0.6
    # the ceiling of a 2-pixel line is less than a 6-pixel one's
    wide = np.zeros(size, bool)
    wide[300:306, 100:900] = True
    assert mask_iou(ceiling_mask(wide), wide) > mask_iou(ceiling_mask(line), line)


def test_cli_on_a_made_set(tmp_path, capsys) -> None:
    root = tmp_path / "set"
    assert make_eval_set_main(["--out", str(root), "--num-images", "2", "--image-size", "160",
                               "--format", "coco"]) == 0
    (ann,) = (root / "annotations").glob("*.json")
    out = tmp_path / "ceiling.json"
    assert main(["--dataset", "coco", "--annotations", str(ann), "--images",
                 str(root / "images"), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    n = len(json.loads(ann.read_text())["annotations"])
    assert report["images"] == 2 and report["instances"] == n
    assert 50.0 < report["mIoU"] < 100.0
    assert report["median_IoU"] >= report["mIoU"] - 25.0
    # per category: every instance counted once, the overall mIoU their count-weighted mean
    data = json.loads(ann.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    counts = {}
    for a in data["annotations"]:
        counts[names[a["category_id"]]] = counts.get(names[a["category_id"]], 0) + 1
    rows = report["by_category"]
    assert {k: v["count"] for k, v in rows.items()} == counts
    weighted = sum(v["count"] * v["mIoU"] for v in rows.values()) / n
    assert weighted == pytest.approx(report["mIoU"], abs=0.02)
    assert [v["mIoU"] for v in rows.values()] == sorted(v["mIoU"] for v in rows.values())
    printed = capsys.readouterr().out
    assert "mIoU" in printed and f"mIoU {next(iter(rows))}" in printed


@pytest.mark.parametrize("argv, message", [
    (["--limit", "0"], "--limit must be >= 1"),
    (["--annotations", "missing.json"], "annotation file not found"),
    (["--annotations", "BROKEN"], "--annotations "),  # a JSON list, not a COCO dict
])
def test_cli_errors(tmp_path, capsys, argv, message) -> None:
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    base = {"--dataset": "coco", "--annotations": str(ann), "--images": str(tmp_path)}
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2]")
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        base[flag] = str(broken) if value == "BROKEN" else value
    args = [x for kv in base.items() for x in kv]
    assert run_command("python -m eval.ceiling", main, args) == 2
    assert message in capsys.readouterr().err
