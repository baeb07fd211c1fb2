"""Evaluator building blocks: click simulator, IoU summaries, dataset reading, AP scorers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from effvit_sam.errors import UserError
from effvit_sam.masks import mask_to_rle, segmentation_to_rle
from eval.clicks import PAD_LABEL, Click, clicks_to_arrays, first_click, next_click
from eval.coco_metrics import coco_segm_ap, lvis_segm_ap
from eval.datasets import SKIP_REASONS, EvalDataset, load_detections
from eval.metrics import InstanceResult, mask_iou, miou_by_category, miou_table

from .eval_toyset import toy_masks, write_toyset


def square(shape=(40, 40), x0=5, x1=25, y0=10, y1=30) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0: y1 + 1, x0: x1 + 1] = True
    return mask


# --- clicks -------------------------------------------------------------------------------

def test_first_click_is_the_centre_of_an_odd_square():
    assert first_click(square()) == Click(15, 20, True)  # 21 x 21 square x 5..25, y 10..30


def test_first_click_on_even_square_takes_first_of_tied_centre_pixels():
    # 20 x 20 at x 10..29, y 5..24: pixels x 19..20, y 14..15 all lie 10 px from the boundary
    assert first_click(square((64, 80), 10, 29, 5, 24)) == Click(19, 14, True)


def test_image_border_counts_as_boundary():
    # the region touches the left border: without padding its farthest point would be x = 0
    assert first_click(square((11, 30), 0, 29, 0, 10)) == Click(5, 5, True)


def test_farthest_from_boundary_on_the_crop_equals_the_whole_image_transform():
    # The evaluator transforms only the region's bounding box; the answer (ties included) must
    # be the whole padded image's, as the official click protocol computes it.
    from scipy.ndimage import distance_transform_edt

    from eval.clicks import farthest_from_boundary

    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = rng.integers(5, 60, 2)
        region = rng.random((h, w)) < rng.uniform(0.05, 0.9)
        region[: rng.integers(0, h)] = False  # regions away from the top edge too
        if not region.any():
            continue
        dist = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
        y, x = divmod(int(np.argmax(dist)), w)
        assert farthest_from_boundary(region) == (x, y, float(dist[y, x]))


def test_next_click_false_negative_region_gets_positive_click():
    gt = square()
    pred = square(x1=14)  # left part found; the missing part is x 15..25 (11 wide), y 10..30
    # FN distance peaks at 6 in column x = 20 for rows y 15..25; row-major first: y = 15
    assert next_click(gt, pred) == Click(20, 15, True)


def test_next_click_false_positive_region_gets_negative_click():
    gt = square()
    pred = gt | square(x0=27, x1=37, y0=0, y1=39)  # big spill to the right of the object
    click = next_click(gt, pred)
    assert click == Click(32, 5, False)  # centre column of the 11-wide spill, first row at 6


def test_next_click_picks_the_larger_error_region():
    gt = square()
    small_fn = gt.copy()
    small_fn[20, 15] = False  # one-pixel hole (FN distance 1)
    big_fp = square(x0=27, x1=37, y0=0, y1=39)  # FP distance 6
    assert not next_click(gt, small_fn | big_fp).positive
    big_fn = gt & ~square(x0=10, x1=20, y0=15, y1=25)  # 11 x 11 hole: FN distance 6
    tiny_fp = np.zeros_like(gt)
    tiny_fp[0, 0] = True
    assert next_click(gt, big_fn | tiny_fp) == Click(15, 20, True)


def test_next_click_tie_goes_to_the_false_positives():
    gt = square(x0=5, x1=9, y0=5, y1=9)  # 5 x 5 object, found nowhere
    pred = square(x0=25, x1=29, y0=25, y1=29)  # a 5 x 5 spill elsewhere: both peak at 3
    assert next_click(gt, pred) == Click(27, 27, False)


def test_next_click_none_when_exact_and_errors_on_bad_input():
    assert next_click(square(), square()) is None
    with pytest.raises(ValueError, match="empty"):
        first_click(np.zeros((5, 5), dtype=bool))
    with pytest.raises(ValueError, match="shape"):
        next_click(square(), square((30, 30)))


def test_clicks_to_arrays_pads_missing_clicks():
    coords, labels = clicks_to_arrays([[Click(1, 2, True), Click(3, 4, False)],
                                       [Click(5, 6, True), None]])
    assert coords.tolist() == [[[1, 2], [3, 4]], [[5, 6], [0, 0]]]
    assert labels.tolist() == [[1, 0], [1, PAD_LABEL]]


# --- IoU summaries ------------------------------------------------------------------------

def test_mask_iou_hand_values():
    a = square((10, 10), 0, 4, 0, 9)  # 50 px
    b = square((10, 10), 3, 9, 0, 9)  # 70 px, overlap 20 px
    assert mask_iou(a, b) == pytest.approx(20 / 100)
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0


def test_miou_table_overall_and_by_size():
    results = [InstanceResult(1, 1, "small", (0.5, 0.7)), InstanceResult(2, 1, "small", (1.0, 1.0)),
               InstanceResult(3, 2, "large", (0.2, 0.4))]
    box = miou_table(results)
    assert box["mIoU"] == pytest.approx(100 * (0.5 + 1.0 + 0.2) / 3)
    assert box["mIoU_small"] == pytest.approx(75.0)
    assert box["mIoU_medium"] is None
    assert box["mIoU_large"] == pytest.approx(20.0)
    clicks = miou_table(results, rounds=[2])
    assert clicks["mIoU@2click"] == pytest.approx(100 * 2.1 / 3)


def test_miou_by_category_worst_first_named_and_per_round():
    results = [InstanceResult(1, 1, "small", (0.5, 0.9), 7),
               InstanceResult(2, 1, "large", (1.0, 1.0), 7),
               InstanceResult(3, 2, "large", (0.2, 0.4), 9),
               InstanceResult(4, 2, "small", (0.6, 0.6))]
    box = miou_by_category(results, {7: "ring", 9: "line"})
    assert list(box) == ["line", "ring"]  # worst first; the uncategorised instance left out
    assert box["line"] == {"count": 1, "mIoU": pytest.approx(20.0)}
    assert box["ring"] == {"count": 2, "mIoU": pytest.approx(75.0)}
    clicks = miou_by_category(results, {9: "line"}, rounds=[1, 2])
    assert clicks["7"] == {"count": 2, "mIoU@1click": pytest.approx(75.0),
                           "mIoU@2click": pytest.approx(95.0)}  # unnamed: keyed by its id
    assert clicks["line"]["mIoU@2click"] == pytest.approx(40.0) and list(clicks) == ["line", "7"]


# --- datasets -----------------------------------------------------------------------------

def test_coco_dataset_reads_instances_skips_crowds(tmp_path):
    ann, images, _ = write_toyset(tmp_path, "coco")
    ds = EvalDataset("coco", ann, images)
    assert ds.image_ids == [1, 2]
    inst = ds.instances(1)
    assert [i.ann_id for i in inst] == [11, 12]
    assert [i.ann_id for i in ds.instances(1, skip_crowd=False)] == [11, 12, 13]
    assert inst[0].box_xyxy.tolist() == [10, 5, 30, 25]
    assert [i.size for i in ds.instances(2)] == ["medium", "large"]
    np.testing.assert_array_equal(inst[1].mask(), toy_masks()[12][2])
    assert ds.load_image(2).shape == (120, 100, 3)


def test_lvis_images_found_through_coco_url(tmp_path):
    ann, images, _ = write_toyset(tmp_path, "lvis")
    for root in (images, images / "val2017"):  # the COCO root or the split folder itself
        ds = EvalDataset("lvis", ann, root)
        assert ds.image_path(1).name == "000000000001.png"
        assert ds.load_image(1).shape == (64, 80, 3)


def test_dataset_rejects_bad_input(tmp_path):
    ann, images, _ = write_toyset(tmp_path, "coco")
    with pytest.raises(ValueError, match="dataset must be"):
        EvalDataset("voc", ann, images)
    with pytest.raises(FileNotFoundError):
        EvalDataset("coco", tmp_path / "missing.json", images)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="annotations"):
        EvalDataset("coco", bad, images)


def test_polygon_and_uncompressed_rle_decode_like_compressed():
    mask = square((12, 10), 2, 6, 3, 8)
    flat = mask.flatten(order="F").astype(int)  # COCO RLE runs go down columns, zeros first
    runs, current, count = [], 0, 0
    for v in flat:
        if v != current:
            runs.append(count)
            current, count = v, 0
        count += 1
    runs.append(count)
    from pycocotools import mask as mask_utils
    rle = segmentation_to_rle({"size": [12, 10], "counts": runs}, 12, 10)
    np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
    poly = segmentation_to_rle([[2, 3, 7, 3, 7, 9, 2, 9]], 12, 10)  # corners of the pixels
    assert abs(int(mask_utils.area(poly)) - int(mask.sum())) <= 12  # rasterised edges differ
    with pytest.raises(ValueError, match="unsupported"):
        segmentation_to_rle("nope", 12, 10)


def test_load_detections_groups_and_caps(tmp_path):
    ann, images, _ = write_toyset(tmp_path, "coco")
    ds = EvalDataset("coco", ann, images)
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": s}
            for s in (0.1, 0.9, 0.5)] + [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1],
                                          "score": 1.0}]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    grouped, skipped = load_detections(path, ds, max_per_image=2)
    assert [d["score"] for d in grouped[1]] == [0.9, 0.5] and grouped[2] == []
    assert skipped == {}
    path.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]))
    with pytest.raises(ValueError, match="category_id"):
        load_detections(path, ds)


TOO_SHORT = {"size": [64, 80], "counts": "0"}  # pycocotools would decode uninitialised memory


def break_annotations(path, changes: dict[int, dict]) -> None:
    """Rewrite a toy set's annotation file: ``changes[ann_id]`` is merged into that annotation."""
    data = json.loads(path.read_text())
    for ann in data["annotations"]:
        ann.update(changes.get(ann["id"], {}))
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change, reason", [
    ({"segmentation": TOO_SHORT}, "bad_rle"),
    ({"segmentation": {"size": [64, 80], "counts": "0Pl"}}, "bad_rle"),  # ends inside a value
    ({"segmentation": {"size": [80, 64], "counts": mask_to_rle(np.ones((80, 64), bool))[
        "counts"]}}, "bad_rle"),  # an RLE of another image size
    ({"segmentation": [[10, 5, 30, 5, 30]]}, "bad_polygon"),
    ({"segmentation": [[10, 5, 30, 5, float("nan"), 25]]}, "bad_polygon"),
    ({"bbox": [200, 5, 20, 20]}, "box_off_image"),  # image 1 is 80 wide
    ({"bbox": [70, 5, 12, 20]}, "box_off_image"),  # 2 px past the right edge
    ({"bbox": [-5, -30, 20, 20]}, "box_off_image"),
    ({"bbox": [10, 5, 0, 20]}, "degenerate_box"),
    ({"bbox": [10, 5, 20, -3]}, "degenerate_box"),
    ({"bbox": [10, 5, float("nan"), 20]}, "bad_box"),
    ({"bbox": [10, 5, 20]}, "bad_box"),
    ({"bbox": "10 5 20 20"}, "bad_box"),
])
def test_bad_ground_truth_is_skipped_and_counted(tmp_path, change, reason):
    ann, images, _ = write_toyset(tmp_path, "coco")
    break_annotations(ann, {11: change})
    instances, skipped = EvalDataset("coco", ann, images).checked_instances(1)
    assert [i.ann_id for i in instances] == [12] and skipped == {reason: 1}


def test_ground_truth_box_within_a_pixel_of_the_border_is_kept(tmp_path):
    ann, images, _ = write_toyset(tmp_path, "coco")
    break_annotations(ann, {11: {"bbox": [-0.5, -1.0, 81.0, 65.0]}})  # 1 px out at most
    instances, skipped = EvalDataset("coco", ann, images).checked_instances(1)
    assert [i.ann_id for i in instances] == [11, 12] and skipped == {}


def test_scorer_ground_truth_leaves_out_bad_segmentations(tmp_path):
    ann, images, _ = write_toyset(tmp_path, "coco")
    break_annotations(ann, {11: {"segmentation": TOO_SHORT}, 13: {"segmentation": [[1, 2]]}})
    ds = EvalDataset("coco", ann, images)
    gt, skipped = ds.scorable_data([1, 2])
    assert skipped == {"bad_rle": 1, "bad_polygon": 1}  # the crowd (13) is scored: checked too
    assert sorted(a["id"] for a in gt["annotations"]) == [12, 21, 22]
    assert len(ds.data["annotations"]) == 5  # the dataset itself is untouched
    assert ds.scorable_data([2]) == (ds.data, {})  # --limit: only the scored images are read


def test_dataset_kind_checked_against_the_file_both_ways(tmp_path):
    coco_ann, coco_images, _ = write_toyset(tmp_path / "c", "coco")
    lvis_ann, lvis_images, _ = write_toyset(tmp_path / "l", "lvis")
    with pytest.raises(UserError) as err:
        EvalDataset("lvis", coco_ann, coco_images)
    assert str(err.value) == (f"{coco_ann} looks like a COCO file (images have file_name, "
                              "categories have no 'frequency'); use --dataset coco")
    with pytest.raises(UserError) as err:
        EvalDataset("coco", lvis_ann, lvis_images)
    assert str(err.value) == (
        f"{lvis_ann} looks like an LVIS file (images have coco_url and "
        "not_exhaustive_category_ids but no file_name, categories have 'frequency'); use "
        "--dataset lvis")
    data = json.loads(lvis_ann.read_text())
    del data["categories"][1]["frequency"]
    del data["images"][0]["neg_category_ids"]
    lvis_ann.write_text(json.dumps(data))
    with pytest.raises(UserError, match="is not a complete LVIS file: 1 of 2 images have no "
                       "'neg_category_ids'; 1 of 2 categories have no 'frequency'"):
        EvalDataset("lvis", lvis_ann, lvis_images)
    with pytest.raises(UserError, match="looks like an LVIS file"):
        EvalDataset("coco", lvis_ann, lvis_images)


def test_malformed_annotation_files_name_the_file(tmp_path):
    ann, images, _ = write_toyset(tmp_path, "coco")
    bad = tmp_path / "bad.json"
    for text, message in [("{not json", "is not JSON"), ("[1, 2]", "the top level is a list"),
                          (json.dumps({"images": [{"id": 1}], "annotations": [],
                                       "categories": []}), "image 0 needs an int 'id'"),
                          (json.dumps({"images": [], "annotations": [{"id": 1}],
                                       "categories": []}), "annotations entry 0 is not an "
                           "object with 'id', 'image_id', 'category_id', 'area'"),
                          (json.dumps({"images": [], "annotations": [{"id": 1, "image_id": 4,
                                       "category_id": 1, "area": 9}], "categories": []}),
                           "names unknown image 4")]:
        bad.write_text(text)
        with pytest.raises(UserError, match=message) as err:
            EvalDataset("coco", bad, images)
        assert str(bad) in str(err.value)


def test_detections_with_bad_boxes_or_scores_are_skipped_and_counted(tmp_path):
    ann, images, _ = write_toyset(tmp_path, "coco")
    ds = EvalDataset("coco", ann, images)
    good = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}
    dets = [good, {**good, "bbox": [0, 0, 0, 5]}, {**good, "bbox": [0, 0, 5]},
            {**good, "bbox": [0, float("inf"), 5, 5]}, {**good, "score": "high"},
            {**good, "score": float("nan")}, {**good, "score": None}]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    grouped, skipped = load_detections(path, ds)
    assert grouped[1] == [good] and skipped == {"detection_bad_box": 3, "detection_bad_score": 3}
    assert set(skipped) <= set(SKIP_REASONS)


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not JSON"),
    (json.dumps({"annotations": []}), "is not a COCO results list \\(the top level is a dict"),
    (json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]), "entry 0 is not an object"),
    (json.dumps([7]), "entry 0 is not an object with image_id, category_id, bbox and score"),
])
def test_malformed_detections_file_is_a_user_error_naming_it(tmp_path, text, message):
    ann, images, _ = write_toyset(tmp_path, "coco")
    path = tmp_path / "dets.json"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as err:
        load_detections(path, EvalDataset("coco", ann, images))
    assert str(path) in str(err.value)
    with pytest.raises(UserError, match="detections file not found"):
        load_detections(tmp_path / "none.json", EvalDataset("coco", ann, images))


# --- AP scorers ---------------------------------------------------------------------------

def _results(ann_ids, scores, extra=()):
    masks = toy_masks()
    out = [{"image_id": masks[a][0], "category_id": masks[a][1], "score": s,
            "segmentation": mask_to_rle(masks[a][2])} for a, s in zip(ann_ids, scores, strict=True)]
    return out + list(extra)


def _false_positive(score=0.99):
    """A category-1 mask in image 1 over empty ground (x 50..70, y 2..20: 399 px, small)."""
    return {"image_id": 1, "category_id": 1, "score": score,
            "segmentation": mask_to_rle(square((64, 80), 50, 70, 2, 20))}


def test_coco_ap_is_100_for_ground_truth_masks(tmp_path):
    ann, images, _ = write_toyset(tmp_path, "coco")
    ds = EvalDataset("coco", ann, images)
    ap = coco_segm_ap(ds.data, _results([11, 12, 21, 22], [0.9, 0.8, 0.7, 0.6]), [1, 2])
    assert ap == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0, "APs": 100.0,
                                "APm": 100.0, "APl": 100.0})


def test_coco_ap_hand_computed_with_a_top_scored_false_positive(tmp_path):
    ann, images, _ = write_toyset(tmp_path, "coco")
    ds = EvalDataset("coco", ann, images)
    ap = coco_segm_ap(ds.data, _results([11, 12, 21, 22], [0.9, 0.8, 0.7, 0.6],
                                        [_false_positive()]), [1, 2])
    # category 1: FP then 3 TPs -> precision 3/4 at every recall level; category 2 exact
    assert ap["AP"] == pytest.approx(87.5) and ap["AP50"] == pytest.approx(87.5)
    # small: category 1 has one small GT, ranked behind the FP -> 1/2; category 2 -> 1
    assert ap["APs"] == pytest.approx(75.0)
    assert ap["APm"] == pytest.approx(100.0) and ap["APl"] == pytest.approx(100.0)
    # --limit: only image 2 scored -> no false positive there
    assert coco_segm_ap(ds.data, _results([21, 22], [0.7, 0.6]), [2])["AP"] == pytest.approx(100)


def test_lvis_ap_runs_under_numpy2_and_is_hand_computed(tmp_path):
    ann, images, _ = write_toyset(tmp_path, "lvis")
    exact = lvis_segm_ap(ann, _results([11, 12, 21, 22], [0.9, 0.8, 0.7, 0.6]), [1, 2])
    assert exact["AP"] == pytest.approx(100.0)
    assert exact["APr"] == pytest.approx(100.0) and exact["APf"] == pytest.approx(100.0)
    assert exact["APc"] is None  # no common category in the set
    ap = lvis_segm_ap(ann, _results([11, 12, 21, 22], [0.9, 0.8, 0.7, 0.6],
                                    [_false_positive()]), [1, 2])
    assert ap["AP"] == pytest.approx(87.5)
    assert ap["APf"] == pytest.approx(75.0)  # category 1 (frequent) pays for the FP
    assert ap["APr"] == pytest.approx(100.0)
    assert not hasattr(np, "float")  # the shim did not leak into numpy


def test_scorers_with_no_detections_give_zero(tmp_path):
    ann, images, _ = write_toyset(tmp_path, "coco")
    assert coco_segm_ap(EvalDataset("coco", ann, images).data, [], [1, 2])["AP"] == 0.0
