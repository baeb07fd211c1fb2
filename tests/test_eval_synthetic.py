"""End to end on sets written by ``effvit-sam make-eval-set`` (occlusion, holes, nesting)."""

from __future__ import annotations

import json

import pytest

from distill.cli import make_eval_set_main
from eval.cli import main
from eval.datasets import EvalDataset
from eval.runner import EvalTask, run_evaluation

from .eval_toyset import OraclePredictor, truth_from_dataset


@pytest.fixture(scope="module", params=["coco", "lvis"])
def synthetic_set(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"synthetic_{request.param}")
    assert make_eval_set_main(["--out", str(root), "--num-images", "3", "--image-size", "160",
                               "--format", request.param]) == 0
    (ann,) = (root / "annotations").glob("*.json")  # the writer names it per format
    return request.param, ann, root / "images"


def test_oracle_scores_perfectly_on_synthetic_set(synthetic_set, tmp_path):
    kind, ann, images = synthetic_set
    dataset = EvalDataset(kind, ann, images)
    oracle = OraclePredictor(truth_from_dataset(dataset))
    box = run_evaluation(EvalTask("box"), oracle, dataset)
    assert box["num_instances"]["all"] > 10
    assert box["metrics"]["mIoU"] == pytest.approx(100.0)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0 - 0.001 * i}
            for i, a in enumerate(dataset.data["annotations"]) if not a.get("iscrowd", 0)]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    ap = run_evaluation(EvalTask("box-from-detector", detections=str(path)), oracle, dataset)
    assert ap["metrics"]["AP"] == pytest.approx(100.0)


def test_cli_tiny_model_on_synthetic_set(synthetic_set, tmp_path):
    kind, ann, images = synthetic_set
    out = tmp_path / "m.json"
    assert main(["box", "--dataset", kind, "--annotations", str(ann), "--images", str(images),
                 "--model", "efficientvit-sam-tiny", "--random-weights", "--device", "cpu",
                 "--limit", "2",
                 "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["num_images"] == 2 and report["settings"]["dataset"] == kind
    # (the CLI's mIoU equals the library's: tests/test_eval_runner.py)
