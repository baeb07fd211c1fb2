"""The recipe log's probe scripts (``distill/scripts/``) on a tiny made set and a saved model:
they run, and their figures keep the invariants they must."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.cli import make_eval_set_main
from effvit_sam import build_sam, save_pretrained

SCRIPTS = Path(__file__).resolve().parents[1] / "distill" / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"probe_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def made_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    assert make_eval_set_main(["--out", str(root / "set"), "--num-images", "2", "--image-size",
                               "160", "--format", "coco", "--seed", "3"]) == 0
    (ann,) = (root / "set" / "annotations").glob("*.json")
    torch.manual_seed(0)
    model_dir = root / "model"
    save_pretrained(build_sam("efficientvit-sam-tiny").eval(), model_dir)
    return model_dir, ann, root / "set" / "images"


def test_box_failures_figures_and_overlay(made_set, tmp_path) -> None:
    model_dir, ann, images = made_set
    sheet = tmp_path / "worst.jpg"
    report = _script("box_failures").main(str(model_dir), str(ann), str(images), 2, str(sheet),
                                          worst=2, min_area=0)
    n = len(json.loads(ann.read_text())["annotations"])
    assert report["instances"] == n
    assert sum(report[s]["instances"] for s in ("small", "medium", "large")) == n
    assert report["large"] == {"instances": 0}  # 160-pixel images: none of 96 x 96
    assert 0.0 <= report["mIoU"] <= 100.0
    # a GT mask lies inside its own box, so cutting a mask to the box removes only false
    # positives (its IoU cannot fall), and the best of three by true IoU is at least the chosen
    assert report["mIoU_masks_cut_to_box"] >= report["mIoU"] - 1e-9
    assert report["mIoU_best_of_three_by_true_iou"] >= report["mIoU"] - 1e-9
    assert 0.0 <= report["share_of_false_positive_pixels_outside_box"] <= 1.0
    from PIL import Image

    sizes = [(i["width"], i["height"]) for i in json.loads(ann.read_text())["images"]]
    with Image.open(sheet) as im:  # two rows, each an image and its overlay side by side
        assert im.width in {2 * w for w, _ in sizes}
        assert im.height >= 2 * min(h for _, h in sizes)


def test_box_failures_in_box_mask() -> None:
    inside = _script("box_failures")._in_box(np.array([[1.5, 0.0, 3.0, 2.2]]), 4, 5)
    want = np.zeros((4, 5), bool)
    want[0:3, 1:3] = True  # x 1..2 (floor 1.5, ceil 3.0), y 0..2 (ceil 2.2 = 3)
    np.testing.assert_array_equal(inside[0], want)


def test_prompt_following_runs(made_set) -> None:
    model_dir, ann, images = made_set
    report = _script("prompt_following").main(str(model_dir), str(ann), str(images), 2)
    assert report["instances"] == len(json.loads(ann.read_text())["annotations"])
    assert 0.0 <= report["mean_pairwise_IoU_between_boxes_predictions"] <= 1.0


def test_cpu_step_times_real_training_steps(tmp_path) -> None:
    from distill.synthetic_writers import write_sa1b_shards

    (shard,) = write_sa1b_shards(tmp_path, num_shards=1, images_per_shard=4, seed=5,
                                 image_size=160)
    seconds = _script("cpu_step").main("smoke_phase2", [
        f"data.shards={shard}", "data.batch_size=1", "data.max_masks=2", "data.num_workers=0"],
        steps=2)
    assert 0.0 < seconds < 60.0


def test_wafer_zoom_on_a_small_wafer(made_set) -> None:
    model_dir, _, _ = made_set
    zoom = _script("wafer_zoom")
    report = zoom.main(str(model_dir), size=512, seed=1, windows=(128, 64))
    from distill.wafer import Wafer

    defects = Wafer(512, 512, seed=1, seam_tile=256, seam_overlap=32).defects
    kinds = {d.kind for d in defects}
    assert set(report) == {f"{k} {w}" for k in kinds for w in (128, 64)}
    for key, row in report.items():
        kind = key.split()[0]
        assert row["count"] == sum(d.kind == kind for d in defects)
        assert 0.0 <= row["chosen_mIoU"] <= row["oracle_mIoU"] <= 1.0
        assert row["chosen_share_iou_0.9"] <= row["oracle_share_iou_0.9"]
    # windows stay inside the image and are centred where they can be
    assert zoom.window_around(10.0, 500.0, 64, 512, 512) == (0, 448, 64, 512)
    assert zoom.window_around(200.5, 300.0, 64, 512, 512) == (168, 268, 232, 332)


@pytest.mark.parametrize("feed", [False, True])
def test_click_rounds_matches_the_point_evaluation(made_set, feed: bool) -> None:
    """The probe's kept-mask mIoU per round is ``eval point``'s own (same clicks, same choice),
    its oracle is never below it, and every correction click is counted once by its sign."""
    from PIL import Image
    from pycocotools.coco import COCO

    from effvit_sam import from_pretrained
    from eval.datasets import Instance
    from eval.predictors import SamBatchPredictor
    from eval.runner import eval_image_clicks

    _, ann, images = made_set  # the bundled (trained) model: a random one masks everything
    model_dir = SCRIPTS.parents[1] / "effvit_sam" / "bundled" / "efficientvit-sam-mini"
    report = _script("click_rounds").main(str(model_dir), str(ann), str(images), 2,
                                          feed_logits=feed)
    coco = COCO(str(ann))
    predictor = SamBatchPredictor(from_pretrained(model_dir).eval())
    rounds = []
    for img_id in coco.getImgIds()[:2]:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=False))
        image = np.asarray(Image.open(images / coco.loadImgs(img_id)[0]["file_name"])
                           .convert("RGB"))
        instances = [Instance(a["id"], img_id, a["category_id"], np.zeros(4), a["area"], {})
                     for a in anns]
        gts = [coco.annToMask(a).astype(bool) for a in anns]
        rounds += [r.ious for r in eval_image_clicks(predictor, image, instances, gts,
                                                      num_clicks=3, feed_logits=feed)]
    overall = report["all"]
    assert overall["instances"] == len(rounds) == len(coco.getAnnIds(iscrowd=False))
    want = [round(100 * float(np.mean([r[k] for r in rounds])), 2) for k in range(3)]
    assert overall["mIoU_by_round"] == pytest.approx(want, abs=0.011)
    assert all(o >= k - 1e-9 for o, k in zip(overall["oracle_mIoU_by_round"],
                                              overall["mIoU_by_round"], strict=True))
    counted = overall["positive_clicks"]["count"] + overall["negative_clicks"]["count"]
    assert 0 < counted <= 2 * len(rounds)
    per_category = sum(v["instances"] for k, v in report.items() if k != "all")
    assert per_category == len(rounds)
