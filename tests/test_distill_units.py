"""Unit tests of the distillation pipeline's parts: configs, losses, prompts, schedule, plots."""

from __future__ import annotations

import math

import pytest
import torch

from distill import losses
from distill.config import (
    CONFIG_DIR,
    TeacherConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
)
from distill.engine import warmup_cosine
from distill.plots import plot_loss_curves, read_metrics
from distill.prompts import (
    correction_clicks,
    jitter_boxes,
    near_negatives,
    pixels_to_points,
    sample_points,
)
from distill.teacher import build_teacher
from effvit_sam.errors import UserError

VARIANTS = ("l0", "l1", "l2", "xl0", "xl1")


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("phase", (1, 2))
def test_every_variant_has_a_recipe_per_phase(variant: str, phase: int) -> None:
    cfg = load_config(f"{variant}_phase{phase}")
    assert cfg.phase == phase
    assert cfg.model.name == f"efficientvit-sam-{variant}"
    if phase == 1:
        assert (cfg.teacher.kind, cfg.teacher.name) == ("sam", "vit_h")
    else:
        assert cfg.model.init == f"runs/{variant}_phase1/pretrained"


def test_all_packaged_recipes_load() -> None:
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"smoke_phase1", "smoke_phase2"} <= set(names)
    for name in names:
        load_config(name)


def test_overrides_are_typed_and_applied() -> None:
    cfg = load_config("smoke_phase2", ["train.lr=1e-4", "data.max_masks=8",
                                       "train.betas=[0.8, 0.9]", "model.init=null"])
    assert cfg.train.lr == 1e-4 and cfg.data.max_masks == 8
    assert cfg.train.betas == (0.8, 0.9) and cfg.model.init is None
    assert load_config("smoke_phase1", ["train.clip_grad=2"]).train.clip_grad == 2.0


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1e-4", "unknown config keys \\['lrr'\\] in train"),
    ("bogus.x=1", "unknown config keys \\['bogus'\\]"),
    ("data.max_masks=eight", "data.max_masks must be an integer"),
    ("data.max_masks=2.5", "data.max_masks must be an integer"),
    ("run.tensorboard=1", "run.tensorboard must be true/false"),
    ("train.embed_loss=l3", "train.embed_loss must be one of"),
    ("train.betas=[0.9]", "train.betas must be a list of 2 values"),
    ("train.lr", "must look like section.key=value"),
])
def test_bad_overrides_raise(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config("smoke_phase1", [override])


def test_config_round_trips_through_yaml(tmp_path) -> None:
    cfg = load_config("l0_phase2", ["prompts.iterative_rounds=2"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(str(path)) == cfg


def test_a_recipe_inherits_its_base_section_by_section(tmp_path) -> None:
    base = load_config("smoke_phase2")
    child = tmp_path / "child.yaml"
    child.write_text("base: smoke_phase2\ntrain:\n  lr: 1.0e-5\nrun:\n  out_dir: runs/child\n")
    cfg = load_config(str(child))
    assert cfg.train.lr == 1e-5 and cfg.run.out_dir == "runs/child"
    # the keys the child does not set are the base's, in the sections it does set too
    assert cfg.train.steps == base.train.steps and cfg.run.save_every == base.run.save_every
    assert cfg.data == base.data and cfg.prompts == base.prompts
    # a base beside the file, a chain of two, and --set over both
    (tmp_path / "mid.yaml").write_text("base: child.yaml\ntrain:\n  steps: 7\n")
    cfg = load_config(str(tmp_path / "mid.yaml"), ["train.lr=3e-5"])
    assert (cfg.train.steps, cfg.train.lr, cfg.run.out_dir) == (7, 3e-5, "runs/child")


def test_the_made_phase2_continuation_is_phase2_with_its_changes() -> None:
    base, more = load_config("made_student_phase2"), load_config("made_student_phase2_more")
    assert (more.train.steps, more.train.lr, more.train.seed) == (1200, 2e-4, 5)
    assert more.prompts == base.prompts and more.train.mask_loss == base.train.mask_loss
    assert more.model.init == "runs/made/student_p2_clicks/pretrained"
    assert more.data.shards.endswith("shards_e/sa_{000000..000029}.tar")


@pytest.mark.parametrize("text, message", [
    ("base: no_such_recipe\n", "base: --config no_such_recipe: no such file"),
    ("base: [1]\n", "base must be a recipe name or path"),
    ("base: loop.yaml\n", "its base chain loops \\(loop.yaml -> loop.yaml\\)"),
])
def test_bad_bases_name_the_file(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(str(path))


def test_apply_overrides_does_not_mutate_input() -> None:
    data = {"train": {"lr": 1.0}}
    apply_overrides(data, ["train.lr=2.0"])
    assert data == {"train": {"lr": 1.0}}
    with pytest.raises(ValueError, match="data.shards"):
        config_from_dict({"phase": 1})


# ---------------------------------------------------------------- losses


def test_embedding_losses_hand_computed() -> None:
    s = torch.zeros(1, 2, 1, 2)
    t = torch.tensor([[[[1.0, -3.0]], [[0.0, 0.0]]]])
    assert losses.embedding_loss(s, t, "mse") == pytest.approx((1 + 9) / 4)
    assert losses.embedding_loss(s, t, "l1") == pytest.approx((1 + 3) / 4)
    # huber(delta=1): 0.5 * 1^2 for |d|=1, 1 * (3 - 0.5) for |d|=3
    assert losses.embedding_loss(s, t, "huber") == pytest.approx((0.5 + 2.5) / 4)
    a = torch.tensor([[[[1.0]], [[0.0]]]])
    b = torch.tensor([[[[0.0]], [[2.0]]]])
    assert losses.embedding_loss(a, b, "cosine") == pytest.approx(1.0)  # orthogonal vectors
    assert losses.embedding_loss(a, 3 * a, "cosine") == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="does not match"):
        losses.embedding_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))


def test_focal_dice_iou_hand_computed() -> None:
    logits = torch.tensor([[[0.0, 0.0]]])  # p = 0.5 everywhere
    target = torch.tensor([[[True, False]]])
    # focal at p_t = 0.5: alpha_t * ln2 * 0.25; alpha 0.25 for the positive, 0.75 negative
    expected = (0.25 * math.log(2) * 0.25 + 0.75 * math.log(2) * 0.25) / 2
    assert losses.focal_loss(logits, target).item() == pytest.approx(expected)
    # dice: 1 - (2 * 0.5 + 1) / (1 + 1 + 1)
    assert losses.dice_loss(logits, target).item() == pytest.approx(1 - 2 / 3)
    assert losses.bce_loss(logits, target).item() == pytest.approx(math.log(2))
    pred = torch.tensor([[[5.0, 5.0, -5.0, -5.0]]])
    truth = torch.tensor([[[True, False, True, False]]])
    assert losses.mask_iou(pred, truth).item() == pytest.approx(1 / 3)
    empty = torch.zeros(1, 1, 4, dtype=torch.bool)
    assert losses.mask_iou(-pred.abs(), empty).item() == 1.0


def test_sam_mask_loss_trains_only_the_best_output_and_every_iou() -> None:
    target = torch.zeros(1, 4, 4, dtype=torch.bool)
    target[0, :2] = True
    good = torch.where(target, 10.0, -10.0)
    logits = torch.stack([-good, good, torch.zeros(1, 4, 4)], 1).requires_grad_(True)
    iou_pred = torch.tensor([[0.0, 1.0, 0.5]], requires_grad=True)
    total, parts, best = losses.sam_mask_loss(logits, iou_pred, target)
    assert best.tolist() == [1]
    total.backward()
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[0, 2].abs().sum() == 0
    assert logits.grad[0, 1].abs().sum() > 0
    # actual IoUs: 0 (inverted), 1 (exact), 0 (all logits 0: empty prediction vs non-empty)
    assert parts["iou_mse"].item() == pytest.approx((0 + 0 + 0.25) / 3)
    assert iou_pred.grad.abs().sum() > 0


def test_mask_loss_weights_scale_focal_and_dice() -> None:
    logits = torch.tensor([[[[0.0, 0.0]]]])  # K=1, M=1, p = 0.5 everywhere
    target = torch.tensor([[[True, False]]])
    iou_pred = torch.tensor([[0.0]])  # actual IoU: empty prediction (p = 0.5 is not > 0) -> 0
    focal = (0.25 * math.log(2) * 0.25 + 0.75 * math.log(2) * 0.25) / 2
    dice = 1 - 2 / 3
    total, parts, _ = losses.sam_mask_loss(logits, iou_pred, target)
    assert total.item() == pytest.approx(20 * focal + dice)  # SAM's 20:1 by default
    total, parts, _ = losses.sam_mask_loss(logits, iou_pred, target, focal_weight=2.0,
                                           dice_weight=3.0)
    assert total.item() == pytest.approx(2 * focal + 3 * dice)
    assert parts["focal"].item() == pytest.approx(focal)
    assert parts["dice"].item() == pytest.approx(dice)
    total, _, _ = losses.sam_mask_loss(logits, iou_pred, target, kind="bce", focal_weight=0.5,
                                       dice_weight=0.0)
    assert total.item() == pytest.approx(0.5 * math.log(2))
    iou_pred = torch.tensor([[0.75]])  # actual IoU 0: squared error 0.5625
    total, parts, _ = losses.sam_mask_loss(logits, iou_pred, target, kind="bce", focal_weight=0.5,
                                           dice_weight=0.0, iou_weight=4.0)
    assert parts["iou_mse"].item() == pytest.approx(0.5625)
    assert total.item() == pytest.approx(0.5 * math.log(2) + 4 * 0.5625)


def test_mask_loss_weights_come_from_the_config() -> None:
    cfg = load_config("smoke_phase2")
    assert (cfg.train.focal_weight, cfg.train.dice_weight) == (20.0, 1.0)
    cfg = load_config("smoke_phase2", ["train.focal_weight=1", "train.dice_weight=4"])
    assert (cfg.train.focal_weight, cfg.train.dice_weight) == (1.0, 4.0)
    for bad in (["train.focal_weight=-1"], ["train.focal_weight=0", "train.dice_weight=0"]):
        with pytest.raises(ValueError, match="focal_weight and train.dice_weight"):
            load_config("smoke_phase2", bad)
    assert load_config("smoke_phase2").train.iou_weight == 1.0  # SAM's
    assert load_config("smoke_phase2", ["train.iou_weight=5"]).train.iou_weight == 5.0
    with pytest.raises(ValueError, match="train.iou_weight must be >= 0"):
        load_config("smoke_phase2", ["train.iou_weight=-1"])


def _two_mask_batch() -> dict:
    """One 256 x 256 image with two rectangular masks and their boxes (1024 prompt frame)."""
    masks = torch.zeros(2, 256, 256, dtype=torch.bool)
    masks[0, 10:60, 20:90] = True
    masks[1, 100:140, 100:200] = True
    return {"image": torch.randn(1, 3, 256, 256), "masks": [masks],
            "boxes": [torch.tensor([[80.0, 40, 360, 240], [400, 400, 800, 560]])],
            "input_size": [(1024, 1024)]}


def test_finetune_step_uses_the_configured_weights() -> None:
    from distill.config import PromptConfig
    from distill.phase2 import FinetuneStep
    from effvit_sam import build_sam

    torch.manual_seed(0)
    model = build_sam("tiny").eval()
    batch = _two_mask_batch()
    prompts = PromptConfig(box_prob=1.0, box_jitter=0.0)
    results = {}
    for weights in ((20.0, 1.0, 1.0), (0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, 7.0)):
        step = FinetuneStep(model, prompts, mask_loss="focal", focal_weight=weights[0],
                            dice_weight=weights[1], iou_weight=weights[2])
        with torch.no_grad():
            results[weights] = step(batch, torch.Generator().manual_seed(0))
    for (fw, dw, iw), (loss, parts) in results.items():
        expected = fw * parts["focal"] + dw * parts["dice"] + iw * parts["iou_mse"]
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the same prediction each time: only the weighting differs
    assert results[(0.0, 1.0, 1.0)][1]["dice"] == results[(20.0, 1.0, 1.0)][1]["dice"]


@pytest.mark.parametrize("multimask_all, box_prob, expected", [
    (False, 1.0, [False, False]),  # SAM's rule: a box is not ambiguous
    (True, 1.0, [True, True]),     # every decode gives the three outputs, as the evaluator's
    (True, 0.0, [True, True]),
])
def test_multimask_all_decodes_every_prompt_with_three_outputs(multimask_all, box_prob,
                                                               expected) -> None:
    from distill.config import PromptConfig
    from distill.phase2 import FinetuneStep
    from effvit_sam import build_sam

    torch.manual_seed(0)
    model = build_sam("tiny").eval()
    calls, outputs, fed = [], [], []
    decode = model.decode

    def spy(*args, **kwargs):
        calls.append(kwargs["multimask_output"])
        fed.append(kwargs["mask_input"])
        result = decode(*args, **kwargs)
        outputs.append(result)
        return result

    model.decode = spy
    batch = _two_mask_batch()
    prompts = PromptConfig(box_prob=box_prob, box_jitter=0.0, max_points=1,
                           iterative_rounds=1, multimask_all=multimask_all)
    step = FinetuneStep(model, prompts, mask_loss="focal", fast_decoder=False)  # spied decode
    with torch.no_grad():
        loss, parts = step(batch, torch.Generator().manual_seed(0))
    assert calls == expected
    assert [o[0].shape[1] for o in outputs] == [3 if m else 1 for m in expected]
    assert torch.isfinite(loss)
    # the correction round is fed the logits of the best (lowest-loss) first output
    first_logits, first_iou = outputs[0]
    _, _, best = losses.sam_mask_loss(first_logits, first_iou, batch["masks"][0])
    assert fed[0] is None
    assert torch.equal(fed[1], first_logits[torch.arange(2), best][:, None])


# ---------------------------------------------------------------- prompts


def test_pixels_to_points_uses_cell_centres() -> None:
    assert pixels_to_points(torch.tensor([0, 256 * 3 + 5])).tolist() == [[2.0, 2.0],
                                                                           [22.0, 14.0]]
    # masks of a 96 x 96 embedding (384 x 384): cells of 1024 / 384 = 8/3 prompt-frame pixels
    got = pixels_to_points(torch.tensor([0, 384 * 383 + 383]), 384)
    assert torch.allclose(got, torch.tensor([[4 / 3, 4 / 3], [1024 - 4 / 3] * 2]))


def test_near_negatives_follow_the_masks_stride() -> None:
    masks = torch.zeros(1, 384, 384, dtype=torch.bool)
    masks[0, 120:150, 60:90] = True  # prompt-frame box x 160..240, y 320..400 (stride 8/3)
    box = torch.tensor([[160.0, 320.0, 240.0, 400.0]])
    points = near_negatives(masks, box, 200, torch.Generator().manual_seed(0))[0]
    cells = (points / (1024 / 384) - 0.5).round().long()
    assert not masks[0, cells[:, 1], cells[:, 0]].any()  # outside the mask
    # inside the box grown by half its size on each side: cells 45..105 x 105..165
    assert cells[:, 0].min() >= 45 and cells[:, 0].max() <= 105
    assert cells[:, 1].min() >= 105 and cells[:, 1].max() <= 165
    assert cells[:, 0].max() - cells[:, 0].min() > 40  # spread over it, not bunched


def test_sample_points_lie_inside_their_masks_and_are_seeded() -> None:
    masks = torch.zeros(2, 256, 256, dtype=torch.bool)
    masks[0, 10:20, 30:40] = True
    masks[1, 200, 100] = True
    coords, labels = sample_points(masks, 5, torch.Generator().manual_seed(1))
    assert coords.shape == (2, 5, 2) and labels.eq(1).all()
    cols = ((coords[..., 0] - 2) / 4).long()
    rows = ((coords[..., 1] - 2) / 4).long()
    assert masks[0, rows[0], cols[0]].all() and masks[1, rows[1], cols[1]].all()
    again, _ = sample_points(masks, 5, torch.Generator().manual_seed(1))
    assert torch.equal(coords, again)


def test_correction_clicks_label_false_negatives_positive_false_positives_negative() -> None:
    truth = torch.zeros(3, 256, 256, dtype=torch.bool)
    truth[:, 50:60, 50:60] = True
    pred = torch.full((3, 256, 256), -1.0)
    pred[0] = torch.where(truth[0], 1.0, -1.0)
    pred[0, 50:60, 50] = -1.0  # missed column: the only error is a false negative
    pred[1] = torch.where(truth[1], 1.0, -1.0)
    pred[1, 100, 100] = 1.0  # one stray pixel: the only error is a false positive
    pred[2] = torch.where(truth[2], 1.0, -1.0)  # perfect: a confirming click inside
    coords, labels = correction_clicks(pred, truth, torch.Generator().manual_seed(0))
    assert labels[:, 0].tolist() == [1, 0, 1]
    assert coords[0, 0, 0].item() == 50 * 4 + 2  # x on the missed column
    assert coords[1, 0].tolist() == [402.0, 402.0]
    col, row = ((coords[2, 0] - 2) / 4).long().tolist()
    assert truth[2, row, col]


def test_jitter_boxes_stays_in_image_and_ordered() -> None:
    boxes = torch.tensor([[0.0, 0.0, 100.0, 50.0], [500.0, 300.0, 700.0, 682.0]])
    out = jitter_boxes(boxes, scale=0.5, max_px=20.0, generator=torch.Generator().manual_seed(0),
                       input_size=(682, 1024))
    assert (out - boxes).abs().max() <= 20.0 + 1e-4
    assert (out[:, 2] >= out[:, 0]).all() and (out[:, 3] >= out[:, 1]).all()
    assert out.min() >= 0 and (out[:, 3] <= 682).all() and (out[:, 2] <= 1024).all()
    assert not torch.equal(out, boxes)
    same = jitter_boxes(boxes, scale=0.0, max_px=20.0, generator=torch.Generator(),
                        input_size=(682, 1024))
    assert torch.equal(same, boxes)


# ---------------------------------------------------------------- schedule, plots, teacher


def test_warmup_cosine_schedule() -> None:
    kw = dict(warmup=4, total=14, min_ratio=0.1)
    assert [warmup_cosine(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(9, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway down the cosine
    assert warmup_cosine(14, **kw) == pytest.approx(0.1)
    assert warmup_cosine(100, **kw) == pytest.approx(0.1)


def test_loss_plot_is_a_png(tmp_path) -> None:
    csv = tmp_path / "metrics.csv"
    csv.write_text("step,lr,loss,mask\n1,0.1,2.0,1.5\n2,0.1,1.0,0.8\n")
    assert read_metrics(csv)["loss"] == [2.0, 1.0]
    png = plot_loss_curves(csv, tmp_path / "loss.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_teacher_needs_weights_unless_random_init_and_is_frozen(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs teacher.checkpoint"):
        build_teacher(TeacherConfig(kind="efficientvit", name="tiny"))
    with pytest.raises(UserError, match="teacher.checkpoint: teacher checkpoint not found"):
        build_teacher(TeacherConfig(kind="sam", name="vit_b", checkpoint=str(tmp_path / "x")))
    with pytest.raises(ValueError, match="unknown SAM teacher"):
        build_teacher(TeacherConfig(kind="sam", name="vit_q", random_init=True))
    a = build_teacher(TeacherConfig(kind="efficientvit", name="tiny", random_init=True), seed=3)
    b = build_teacher(TeacherConfig(kind="efficientvit", name="tiny", random_init=True), seed=3)
    a.train()
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    image = (torch.rand(40, 60, 3) * 255).to(torch.uint8).numpy()
    out = a([image])
    assert out.shape == (1, 32, 64, 64) and torch.equal(out, b([image]))
