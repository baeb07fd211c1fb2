"""The evaluation loop with oracle / known-error predictors (the CLI: test_eval_cli)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from effvit_sam.errors import UserError
from effvit_sam.masks import mask_to_rle
from eval.datasets import SKIP_REASONS, EvalDataset
from eval.report import format_table
from eval.runner import BOX_NOISE_MAX_PX, EvalTask, noisy_boxes, run_evaluation

from .eval_toyset import (
    BoxFillPredictor,
    OraclePredictor,
    SquareClickPredictor,
    image_key,
    tight_bbox,
    toy_masks,
    write_toyset,
)
from .test_eval_metrics import TOO_SHORT, break_annotations

TRIANGLE = 465 / 900  # IoU of the triangle with its filled box


def _run(tmp_path, kind, task, predictor_factory, **toy):
    ann, images, truth = write_toyset(tmp_path, kind, **toy)
    predictor = predictor_factory(truth)
    return run_evaluation(task, predictor, EvalDataset(kind, ann, images)), predictor


@pytest.mark.parametrize("kind", ["coco", "lvis"])
def test_box_oracle_gives_100_and_one_call_per_image(tmp_path, kind):
    summary, oracle = _run(tmp_path, kind, EvalTask("box"), OraclePredictor)
    assert summary["metrics"] == pytest.approx(
        {"mIoU": 100.0, "mIoU_small": 100.0, "mIoU_medium": 100.0, "mIoU_large": 100.0})
    assert summary["num_instances"] == {"all": 4, "small": 2, "medium": 1, "large": 1}
    assert [len(c["boxes"]) for c in oracle.calls] == [2, 2]  # crowd 13 skipped, batched
    assert all(c["multimask"] for c in oracle.calls)


def test_box_known_error_hand_computed(tmp_path):
    summary, _ = _run(tmp_path, "coco", EvalTask("box"), lambda truth: BoxFillPredictor())
    m = summary["metrics"]
    assert m["mIoU"] == pytest.approx(100 * (1 + TRIANGLE + 1 + 1) / 4)
    assert m["mIoU_small"] == pytest.approx(100 * (1 + TRIANGLE) / 2)
    assert m["mIoU_medium"] == pytest.approx(100.0) and m["mIoU_large"] == pytest.approx(100.0)


def test_include_crowd_prompts_crowd_regions_too(tmp_path):
    summary, oracle = _run(tmp_path, "coco", EvalTask("box", include_crowd=True),
                           lambda t: BoxFillPredictor())
    assert summary["num_instances"]["all"] == 5 and len(oracle.calls[0]["boxes"]) == 3
    # the crowd region is a rectangle: its filled box is exact
    assert summary["metrics"]["mIoU"] == pytest.approx(100 * (1 + TRIANGLE + 1 + 1 + 1) / 5)


def test_limit_takes_the_first_images(tmp_path):
    summary, _ = _run(tmp_path, "coco", EvalTask("box", limit=1), lambda t: BoxFillPredictor())
    assert summary["num_images"] == 1
    assert summary["metrics"]["mIoU"] == pytest.approx(100 * (1 + TRIANGLE) / 2)
    assert summary["metrics"]["mIoU_large"] is None


def test_box_noise_moves_every_box_the_same_way_for_every_model(tmp_path):
    exact, oracle = _run(tmp_path / "a", "coco", EvalTask("box"), lambda t: BoxFillPredictor())
    noisy, moved = _run(tmp_path / "b", "coco", EvalTask("box", box_noise=0.1),
                        lambda t: BoxFillPredictor())
    again, moved_again = _run(tmp_path / "c", "coco", EvalTask("box", box_noise=0.1),
                              lambda t: BoxFillPredictor())
    before = np.concatenate([c["boxes"] for c in oracle.calls])
    after = np.concatenate([c["boxes"] for c in moved.calls])
    assert after.shape == before.shape and not np.allclose(after, before)
    assert np.abs(after - before).max() <= BOX_NOISE_MAX_PX
    np.testing.assert_array_equal(after, np.concatenate([c["boxes"] for c in moved_again.calls]))
    assert again["metrics"] == noisy["metrics"]
    # a predictor that fills its box is exact on rectangles only for the exact box
    assert noisy["metrics"]["mIoU"] < exact["metrics"]["mIoU"] - 1


def test_noisy_boxes_are_capped_clipped_and_ordered():
    boxes = np.array([[10.0, 10, 50, 30], [0, 0, 400, 300], [90, 5, 99, 95]])
    rng = np.random.default_rng(0)
    assert np.array_equal(noisy_boxes(boxes, 0.0, (100, 100), rng), np.clip(boxes, 0, 100))
    out = noisy_boxes(np.repeat(boxes, 200, 0), 1.0, (100, 100), rng)
    assert (out >= 0).all() and (out[:, [0, 2]] <= 100).all() and (out[:, [1, 3]] <= 100).all()
    assert (out[:, 2] >= out[:, 0]).all() and (out[:, 3] >= out[:, 1]).all()
    small = out[:200]  # the 40 x 20 box, moved at most 20 px per coordinate
    assert np.abs(small - boxes[0]).max() <= BOX_NOISE_MAX_PX and np.abs(small - boxes[0]).std() > 5


def test_point_oracle_gives_100_after_every_click(tmp_path):
    # ann 22 contains ann 21, so a click in it is ambiguous even to an oracle: left out here
    summary, oracle = _run(tmp_path, "lvis", EvalTask("point", num_clicks=5), OraclePredictor,
                           ann_ids=(11, 12, 21))
    assert set(summary["metrics"]) == {f"mIoU{b}@{c}click" for c in (1, 3, 5)
                                       for b in ("", "_small", "_medium", "_large")}
    assert summary["metrics"]["mIoU_large@1click"] is None
    assert all(v == pytest.approx(100.0) for v in summary["metrics"].values() if v is not None)
    # 5 rounds per image, all instances of an image in each call, multimask in every round
    assert [c["points"].shape[:2] for c in oracle.calls] == \
        [(2, r) for r in range(1, 6)] + [(1, r) for r in range(1, 6)]
    assert all(c["multimask"] for c in oracle.calls)
    # exact after the first click: later "clicks" are SAM padding points
    assert (oracle.calls[4]["labels"][:, 1:] == -1).all()
    assert all(c["mask_input"] is None for c in oracle.calls)  # off by default


def test_point_feed_logits_passes_the_kept_low_res_mask_on(tmp_path):
    task = EvalTask("point", num_clicks=3, feed_logits=True)
    _, oracle = _run(tmp_path, "coco", task, OraclePredictor, ann_ids=(11, 12))
    assert oracle.calls[0]["mask_input"] is None
    for n, call in enumerate(oracle.calls[1:3], start=1):
        fed = call["mask_input"]
        assert fed.shape == (2, 1, 256, 256)
        # from call n, the slot the runner kept: 1 of 3 (the best-scored)
        assert fed[:, 0, 0, 0].tolist() == [n, n]
        assert fed[:, 0, 0, 1].tolist() == [1, 1]


def test_point_known_error_hand_computed(tmp_path):
    """A 20 x 20 square; each click adds a 5 x 5 square deep inside the still-missed part
    (the click sits >= 3 px from the error boundary), so k clicks give IoU k * 25 / 400."""
    summary, pred = _run(tmp_path, "coco", EvalTask("point", num_clicks=5),
                         lambda t: SquareClickPredictor(radius=2), ann_ids=(11,))
    m = summary["metrics"]
    assert m["mIoU@1click"] == pytest.approx(100 * 25 / 400)
    assert m["mIoU@3click"] == pytest.approx(100 * 75 / 400)
    assert m["mIoU@5click"] == pytest.approx(100 * 125 / 400)
    assert pred.calls[0]["points"][0, 0].tolist() == [19, 14]  # centre of the square
    assert (pred.calls[-1]["labels"] == 1).all()  # only misses: every click is positive


def _detections(path: Path, extra=()):
    """The ground-truth boxes of the non-crowd instances as detections, plus ``extra``."""
    dets = [{"image_id": img, "category_id": cat, "bbox": tight_bbox(mask), "score": s}
            for (img, cat, mask, crowd), s in zip(toy_masks().values(), (0.9, 0.8, 0.5, 0.7, 0.6),
                                                  strict=True) if not crowd]
    path.write_text(json.dumps(dets + list(extra)))
    return str(path)


FALSE_POSITIVE = {"image_id": 1, "category_id": 1, "bbox": [50, 2, 21, 19], "score": 0.99}


@pytest.mark.parametrize("kind", ["coco", "lvis"])
def test_detector_boxes_oracle_ap_100_and_false_positive(tmp_path, kind):
    task = EvalTask("box-from-detector", detections=_detections(tmp_path / "d.json"))
    summary, _ = _run(tmp_path, kind, task, OraclePredictor)
    assert summary["metrics"]["AP"] == pytest.approx(100.0)
    assert summary["num_detections"] == 4
    task = EvalTask("box-from-detector",
                    detections=_detections(tmp_path / "fp.json", [FALSE_POSITIVE]))
    summary, _ = _run(tmp_path, kind, task, OraclePredictor)
    # the FP's mask is its filled box (no overlap with any object): category 1 AP 3/4, cat 2: 1
    assert summary["metrics"]["AP"] == pytest.approx(87.5)
    if kind == "lvis":
        assert summary["metrics"]["APf"] == pytest.approx(75.0)


def test_unreadable_image_is_skipped_and_counted(tmp_path):
    ann, images, truth = write_toyset(tmp_path, "coco")
    (images / "000000000002.png").unlink()
    summary = run_evaluation(EvalTask("box"), OraclePredictor(truth),
                             EvalDataset("coco", ann, images))
    assert summary["failed_images"] == [2] and summary["num_instances"]["all"] == 2


def _counts(**nonzero) -> dict[str, int]:
    return {**dict.fromkeys(SKIP_REASONS, 0), **nonzero}


BROKEN = {11: {"segmentation": TOO_SHORT}, 21: {"bbox": [20, 300, 40, 50]},  # image 2: 120 high
          22: {"bbox": [0, 20, 100, 0]}}


@pytest.mark.parametrize("mode", ["box", "point"])
def test_bad_ground_truth_counted_never_prompted_and_runs_identical(tmp_path, mode):
    """A too-short RLE, an off-image box and a degenerate box: skipped and counted; only the
    triangle (ann 12) is prompted, and two runs agree exactly (pycocotools would have decoded
    the too-short RLE from uninitialised memory, a different mask each run)."""
    ann, images, truth = write_toyset(tmp_path, "coco")
    break_annotations(ann, BROKEN)
    runs = []
    for _ in range(2):
        predictor = (BoxFillPredictor() if mode == "box" else SquareClickPredictor())
        runs.append((run_evaluation(EvalTask(mode, num_clicks=2), predictor,
                                    EvalDataset("coco", ann, images)), predictor))
    (first, predictor), (second, _) = runs
    assert first == second
    assert first["skipped"] == _counts(bad_rle=1, box_off_image=1, degenerate_box=1)
    assert first["num_instances"]["all"] == 1
    prompted = [len(c["boxes"] if mode == "box" else c["points"]) for c in predictor.calls]
    assert prompted == ([1] if mode == "box" else [1, 1])  # image 2 has nothing left to prompt
    if mode == "box":
        assert first["metrics"]["mIoU"] == pytest.approx(100 * TRIANGLE)
        assert first["by_category"] == {"wedge": {"count": 1, "mIoU": pytest.approx(
            100 * TRIANGLE)}}
    table = format_table({"model": "m", "dataset": "coco", "mode": mode}, first)
    if mode == "box":
        assert f"by category, worst first (mIoU, instances): wedge {100 * TRIANGLE:.1f} (1)" \
            in table
    assert "skipped (bad data, not scored): bad_rle 1, degenerate_box 1, box_off_image 1" in table


def test_empty_ground_truth_mask_counted(tmp_path):
    ann, images, truth = write_toyset(tmp_path, "coco")
    break_annotations(ann, {11: {"segmentation": mask_to_rle(np.zeros((64, 80), bool))}})
    summary = run_evaluation(EvalTask("box"), OraclePredictor(truth),
                             EvalDataset("coco", ann, images))
    assert summary["skipped"] == _counts(empty_mask=1) and summary["num_instances"]["all"] == 3


@pytest.mark.parametrize("kind, ap", [
    # COCO: ann 11's detection (score 0.9) now matches no GT: category 1 precision 2/3 at every
    # recall; category 2 exact. LVIS ignores it: image 1 has no category-1 GT left and does
    # not list category 1 as negative.
    ("coco", 100 * (2 / 3 + 1) / 2), ("lvis", 100.0)])
def test_detector_mode_scores_without_bad_ground_truth(tmp_path, kind, ap):
    ann, images, truth = write_toyset(tmp_path, kind)
    break_annotations(ann, {11: {"segmentation": TOO_SHORT}})
    bad = [{"image_id": 1, "category_id": 1, "bbox": [200, 200, 10, 10], "score": 0.4},
           {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": None}]
    task = EvalTask("box-from-detector", detections=_detections(tmp_path / "d.json", bad))
    first, second = (run_evaluation(task, OraclePredictor(truth), EvalDataset(kind, ann, images))
                     for _ in range(2))
    assert first == second
    assert first["skipped"] == _counts(bad_rle=1, detection_off_image=1, detection_bad_score=1)
    assert first["num_detections"] == 4 and first["metrics"]["AP"] == pytest.approx(ap)


def test_processes_take_disjoint_slices_and_gather_on_the_main_one(tmp_path):
    ann, images, truth = write_toyset(tmp_path, "coco")
    dataset = EvalDataset("coco", ann, images)
    shared: list = []  # stands in for gather_object: the last process sees everything
    for rank in (1, 0):
        oracle = OraclePredictor(truth)
        summary = run_evaluation(EvalTask("box"), oracle, dataset, process_index=rank,
                                 num_processes=2, gather=lambda r: shared.extend(r) or shared)
        assert len(oracle.calls) == 1  # one image each: rank 0 image 1, rank 1 image 2
        assert oracle.key == image_key(dataset.load_image(rank + 1))
        assert (summary is None) == (rank == 1)
    assert summary["num_images"] == 2 and summary["num_instances"]["all"] == 4
    with pytest.raises(ValueError, match="gather"):
        run_evaluation(EvalTask("box"), oracle, dataset, process_index=0, num_processes=2)
    with pytest.raises(ValueError, match="process_index"):
        run_evaluation(EvalTask("box"), oracle, dataset, process_index=2, num_processes=2,
                       gather=list)


def test_missing_detections_file_rejected_before_any_model(tmp_path):
    with pytest.raises(UserError, match=f"detections file not found: {tmp_path / 'd.json'}"):
        EvalTask("box-from-detector", detections=str(tmp_path / "d.json"))


def test_task_rejects_bad_settings():
    with pytest.raises(ValueError, match="mode"):
        EvalTask("boxes")
    with pytest.raises(ValueError, match="detections"):
        EvalTask("box-from-detector")
    with pytest.raises(ValueError, match="num_clicks"):
        EvalTask("point", num_clicks=0)
    with pytest.raises(ValueError, match="box_noise applies to box mode only"):
        EvalTask("point", box_noise=0.1)
    with pytest.raises(ValueError, match="box_noise must be in"):
        EvalTask("box", box_noise=-0.1)


# --- the real predictor and the CLI with the tiny model ------------------------------------

def test_adapter_matches_the_project_predictor(tiny_model):
    """SamBatchPredictor (prompt-frame batches, chunked) == EfficientViTSamPredictor.predict."""
    from effvit_sam.predictor import EfficientViTSamPredictor
    from eval.predictors import SamBatchPredictor

    image = np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    boxes = np.array([[10, 5, 60, 40], [0, 0, 130, 90], [70, 20, 120, 85.5]])
    points = np.array([[[20, 30], [50, 60]], [[100, 10], [5, 80]], [[64, 45], [64, 46]]])
    labels = np.array([[1, 0], [1, 1], [0, 1]])
    reference = EfficientViTSamPredictor(tiny_model, fast=False)
    reference.set_image(image)
    adapter = SamBatchPredictor(tiny_model, max_prompts=2)  # 2 chunks for 3 prompts; eager
    adapter.set_image(image)
    for kwargs, ref_kwargs in (({"boxes": boxes}, {"boxes": boxes}),
                               ({"points": points, "labels": labels},
                                {"points": points, "labels": labels})):
        masks, scores, low = adapter.predict_batch(**kwargs, multimask_output=True)
        ref_masks, ref_scores, ref_low = reference.predict(**ref_kwargs, multimask_output=True)
        assert masks.shape == (3, 3, 90, 130) and masks.dtype == bool
        np.testing.assert_array_equal(masks, ref_masks)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
        np.testing.assert_allclose(low, ref_low, atol=1e-5)
    with pytest.raises(ValueError, match="either boxes or points"):
        adapter.predict_batch(multimask_output=True)


@pytest.mark.parametrize("shape", [(90, 130), (131, 77), (256, 256)])
def test_adapter_predict_best_is_the_best_of_predict_batch(tiny_model, shape):
    """predict_best upscales only each prompt's best mask, through the lean upscaling: the same
    masks, scores and low-res logits as picking from predict_batch, for any image shape, with
    and without mask_input and for one or three masks per prompt."""
    from eval.predictors import SamBatchPredictor, best_masks, predict_best

    rng = np.random.default_rng(1)
    h, w = shape
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    boxes = np.array([[3, 2, w * 0.6, h * 0.5], [0, 0, w, h], [w * 0.4, h * 0.3, w - 1, h - 2]])
    points = rng.uniform(0, [w, h], (3, 2, 2))
    labels = np.array([[1, 0], [1, 1], [0, 1]])
    mask_input = rng.normal(0, 4, (3, 1, 256, 256)).astype(np.float32)
    adapter = SamBatchPredictor(tiny_model, max_prompts=2)
    adapter.set_image(image)
    for multimask in (True, False):
        for kwargs in ({"boxes": boxes}, {"points": points, "labels": labels},
                       {"points": points, "labels": labels, "mask_input": mask_input}):
            masks, scores, low = adapter.predict_batch(**kwargs, multimask_output=multimask)
            best, best_scores, best_low = predict_best(adapter, **kwargs,
                                                       multimask_output=multimask)
            assert best.shape == (3, h, w) and best.dtype == bool
            np.testing.assert_array_equal(best, best_masks(masks, scores))
            np.testing.assert_array_equal(best_scores, scores.max(axis=1))
            np.testing.assert_array_equal(best_low, best_masks(low, scores))
            assert 0 < best.sum() < best.size  # a real mask, not all or nothing
    with pytest.raises(ValueError, match="either boxes or points"):
        adapter.predict_best(multimask_output=True)
