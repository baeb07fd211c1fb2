"""Pieces of the made-data recipe (issue #13): negative clicks near the object, the fed-logits
probability, ``--resume auto`` on a fresh run, and the teacher/student MAC ratio."""

from __future__ import annotations

import pytest
import torch

from distill.config import load_config
from distill.prompts import LOW_RES_STRIDE, near_negatives
from distill.run import resume_path


def test_near_negatives_lie_outside_the_mask_inside_the_grown_box() -> None:
    masks = torch.zeros(2, 256, 256, dtype=torch.bool)
    masks[0, 100:120, 50:90] = True
    masks[1, 10:40, 200:250] = True
    boxes = torch.tensor([[50, 100, 90, 120], [200, 10, 250, 40]], dtype=torch.float32)
    boxes = boxes * LOW_RES_STRIDE
    points = near_negatives(masks, boxes, 16, torch.Generator().manual_seed(0))
    assert points.shape == (2, 16, 2)
    for k in range(2):
        cols = (points[k, :, 0] / LOW_RES_STRIDE).long()
        rows = (points[k, :, 1] / LOW_RES_STRIDE).long()
        assert not masks[k, rows, cols].any()
        x0, y0, x1, y1 = (boxes[k] / LOW_RES_STRIDE).tolist()
        w, h = x1 - x0, y1 - y0
        assert ((cols >= x0 - w / 2 - 1) & (cols <= x1 + w / 2)).all()
        assert ((rows >= y0 - h / 2 - 1) & (rows <= y1 + h / 2)).all()


def test_prompt_probabilities_are_validated() -> None:
    with pytest.raises(ValueError, match="negative_prob"):
        load_config("made_teacher", ["prompts.negative_prob=1.5"])
    with pytest.raises(ValueError, match="feed_prob"):
        load_config("made_student_phase2", ["prompts.feed_prob=-0.1"])


def test_resume_auto_starts_fresh_without_a_checkpoint(tmp_path) -> None:
    assert resume_path("auto", tmp_path / "new") is None  # no folder yet
    assert resume_path("auto", tmp_path) is None  # an empty folder
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    assert resume_path("auto", tmp_path) == tmp_path / "checkpoint.pt"


def test_teacher_encoder_has_at_least_4x_the_student_macs() -> None:
    """The pair as the bundled student's recipe builds them: the teacher of
    made_teacher_deeper (depths 1,1,4,8,8) and the student of made_student_deep_phase1."""
    from torch.utils.flop_counter import FlopCounterMode

    from distill.config import resized
    from effvit_sam import build_sam, get_config

    macs = {}
    for recipe in ("made_teacher_deeper", "made_student_deep_phase1"):
        model_cfg = load_config(recipe).model
        model = build_sam(resized(get_config(model_cfg.name), model_cfg.sizes)).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.encode(torch.zeros(1, 3, 256, 256))
        macs[recipe] = counter.get_total_flops() / 2
    assert macs["made_teacher_deeper"] / 1e9 == pytest.approx(2.51, abs=0.01)
    assert macs["made_student_deep_phase1"] / 1e9 == pytest.approx(0.48, abs=0.01)
    assert macs["made_teacher_deeper"] >= 4 * macs["made_student_deep_phase1"]
    # and the registry's mini is that student (what from_pretrained("mini") builds)
    assert get_config("mini").encoder.depths == tuple(
        load_config("made_student_deep_phase1").model.sizes["encoder.depths"])


def test_export_pretrained_writes_a_loadable_folder(tmp_path) -> None:
    from distill.export import export_main
    from effvit_sam import build_sam
    from effvit_sam.build import from_pretrained

    torch.manual_seed(0)
    model = build_sam("efficientvit-sam-tiny")
    torch.save({"model": model.state_dict(), "model_config": model.config.to_dict(), "step": 7},
               tmp_path / "checkpoint.pt")
    assert export_main(["--checkpoint", str(tmp_path / "checkpoint.pt"),
                        "--out", str(tmp_path / "out")]) == 0
    loaded = from_pretrained(tmp_path / "out")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_model_input_size_builds_the_variant_at_another_input(tmp_path) -> None:
    from distill.config import ModelConfig
    from distill.init import build_model
    from effvit_sam import build_sam, from_pretrained
    from effvit_sam.checkpoint import save_pretrained

    trained = build_sam("efficientvit-sam-tiny").eval()
    save_pretrained(trained, tmp_path / "small")
    model = build_model(ModelConfig(name="efficientvit-sam-tiny", init=str(tmp_path / "small"),
                                    input_size=384)).eval()
    assert (model.encoder_size, trained.encoder_size) == (384, 256)
    # the same weights, the same embedding grid at either input
    state = trained.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert model.encode(torch.zeros(1, 3, 384, 384)).shape == \
            trained.encode(torch.zeros(1, 3, 256, 256)).shape
    save_pretrained(model, tmp_path / "large")
    assert from_pretrained(tmp_path / "large").encoder_size == 384
    cfg = load_config("made_teacher", ["model.input_size=512"])
    assert cfg.model.input_size == 512
    with pytest.raises(ValueError, match="model.input_size must be a multiple of 32"):
        load_config("made_teacher", ["model.input_size=500"])
