"""The bundled model (issue #13): ``effvit_sam/bundled/efficientvit-sam-mini/``, the student
distilled from the made-data teacher by ``distill/made_model_run.sh``, ships inside the package,
loads with no network and strictly, and really segments made scenes it never saw."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distill.synthetic_writers import scene_for
from effvit_sam import build_sam, cli, from_pretrained, weights
from effvit_sam.checkpoint import read_state_dict
from effvit_sam.geometry import xywh_to_xyxy
from effvit_sam.masks import mask_to_box_xywh
from effvit_sam.predictor import EfficientViTSamPredictor as SamPredictor
from eval.metrics import mask_iou
from eval.predictors import best_masks

NAME = "efficientvit-sam-mini"


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache: only what the package ships can be found."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def test_the_package_ships_the_mini_model_under_20_mb():
    folder = weights.bundled_dir("mini")
    assert folder == weights.bundled_root() / NAME
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert set(files) == {"config.json", "model.safetensors"}
    assert files["model.safetensors"] <= 20 * 2**20
    assert json.loads((folder / "config.json").read_text())["config"]["name"] == NAME


def test_from_pretrained_loads_it_offline_and_strictly(offline):
    model = from_pretrained(NAME)
    shipped = read_state_dict(weights.bundled_dir(NAME) / "model.safetensors")
    state = model.state_dict()
    assert set(shipped) == set(state)  # every key, nothing left at its random init
    assert all(torch.equal(shipped[k], state[k]) for k in state)
    assert all(torch.isfinite(v).all() for v in shipped.values() if v.is_floating_point())
    assert not any(torch.equal(state[k], v) for k, v in build_sam(NAME).state_dict().items()
                   if v.is_floating_point() and v.numel() > 64 and k.endswith("weight"))
    # the short name and the weight policy give the same model
    same, info = weights.resolve_model("mini")
    assert info.kind == "bundled" and "trained on synthetic scenes" in info.description
    assert all(torch.equal(same.state_dict()[k], state[k]) for k in state)


def _box_ious(predictor: SamPredictor, scene) -> list[float]:
    """Each object prompted by its box, in one call; the best-scored of the three kept (the
    protocol of ``effvit-sam eval box``)."""
    predictor.set_image(scene.image)
    boxes = np.stack([xywh_to_xyxy(mask_to_box_xywh(obj.mask)) for obj in scene.objects])
    masks, scores, _ = predictor.predict(boxes=boxes.astype(np.float32), multimask_output=True)
    return [mask_iou(pred, obj.mask)
            for pred, obj in zip(best_masks(masks, scores), scene.objects, strict=True)]


def test_box_miou_on_made_scenes_it_never_saw(one_thread):
    # Eval-stream scenes (stream 1) of a seed no training or held-out set uses, at the
    # make-eval-set default size (512 pixels on the long side). Issue #13 asks for >= 70 here:
    # the model bundled now (the deep student: made_teacher_deeper, phase 1 7,200 steps, phase 2
    # 1,800 steps with correction clicks, README "Recipe log") scores 71.0 on these 41 objects
    # (the bundled students before it: 66.7, 66.5, 65.3, 55.8, 53.7), the same architecture
    # with random weights under 10.
    scenes = [scene_for(4242, 1, image_id, long_side=512) for image_id in (1, 2, 3)]
    trained = [iou for scene in scenes
               for iou in _box_ious(SamPredictor(from_pretrained(NAME)), scene)]
    random = [iou for scene in scenes[:1]
              for iou in _box_ious(SamPredictor(build_sam(NAME).eval()), scene)]
    assert len(trained) >= 20
    assert np.mean(trained) * 100 >= 70, f"box mIoU {np.mean(trained) * 100:.1f}"
    assert np.mean(random) * 100 < 20


def test_its_single_mask_is_the_best_of_its_three(one_thread):
    """Trained on the three multimask outputs only (``prompts.multimask_all``), its config says
    so, and a single-mask request returns the best-scored of the three (SAM's first mask token
    is untrained); a SAM-style config keeps SAM's token."""
    model = from_pretrained(NAME)
    assert model.config.single_mask == "best_of_three"
    assert build_sam("efficientvit-sam-tiny").config.single_mask == "token"
    scene = scene_for(4242, 1, 2, long_side=512)
    predictor = SamPredictor(model)
    predictor.set_image(scene.image)
    boxes = np.stack([xywh_to_xyxy(mask_to_box_xywh(o.mask)) for o in scene.objects])
    masks3, scores3, low3 = predictor.predict(boxes=boxes, multimask_output=True)
    masks1, scores1, low1 = predictor.predict(boxes=boxes, multimask_output=False)
    assert masks1.shape[1] == 1 and scores1.shape[1] == 1
    best = scores3.argmax(1)
    assert len(set(best.tolist())) > 1  # not always the same candidate
    np.testing.assert_array_equal(masks1[:, 0], best_masks(masks3, scores3))
    np.testing.assert_allclose(scores1[:, 0], scores3.max(1), atol=1e-6)
    with pytest.raises(ValueError, match="single_mask must be one of"):
        type(model.config)(**{**model.config.__dict__, "single_mask": "first"})


def test_segment_without_model_or_official_weights_uses_it(offline, tmp_path, capsys):
    from PIL import Image

    scene = scene_for(4242, 1, 1, long_side=512)
    obj = max(scene.objects, key=lambda o: o.mask.sum())
    ys, xs = np.nonzero(obj.mask)
    k = len(ys) // 2
    image = tmp_path / "photo.jpg"
    Image.fromarray(scene.image).save(image)
    out, js = tmp_path / "overlay.png", tmp_path / "masks.json"
    assert cli.main(["segment", str(image), "--point", f"{xs[k]},{ys[k]}", "--output", str(out),
                     "--json", str(js)]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("weights:")]
    assert said == [f"weights: {NAME}, {weights.BUNDLED_NOTE}"]
    doc = json.loads(js.read_text())
    assert doc["model"] == NAME and doc["weights"]["kind"] == "bundled"
    assert out.is_file()


def test_the_demo_serves_it_with_the_banner(offline):
    from demo.cli import load_model

    _, info = load_model(None, checkpoint=None, random_weights=False, offline=True,
                         device=torch.device("cpu"))
    assert info.kind == "bundled" and info.model == NAME and not info.is_random
    assert "trained on synthetic scenes" in info.description
