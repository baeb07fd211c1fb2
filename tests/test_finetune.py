"""Fine-tuning on your own data: frozen parts and per-part learning rates, validation during
training with ``effvit-sam eval``'s protocol, ``pretrained_best/``, early stopping, exact resume
with the best so far, ``model.init`` by registry name, and the ``finetune_custom`` recipe.

A tiny model on made 64-pixel scenes: each run takes seconds on one CPU thread.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch

import distill.init
from distill.config import MODEL_PARTS, ConfigError, ModelConfig, load_config
from distill.init import build_model
from distill.parts import build_optimizer
from distill.phase2 import FinetuneStep
from distill.run import run
from distill.synthetic_writers import write_eval_set, write_sa1b_shards
from distill.validate import BOX_COLUMN, CLICK_COLUMN, Validator
from effvit_sam import build_sam
from effvit_sam.checkpoint import CheckpointError, read_state_dict, save_pretrained
from effvit_sam.cli import main as cli_main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("shards")
    write_sa1b_shards(out, num_shards=2, images_per_shard=2, seed=0, image_size=64)
    return f"{out}/sa_{{000000..000001}}.tar"  # two shards: one per rank under torchrun


@pytest.fixture(scope="module")
def val_set(tmp_path_factory) -> tuple[Path, Path]:
    ann = write_eval_set(tmp_path_factory.mktemp("val"), num_images=2, seed=1, image_size=64)
    return ann, ann.parent.parent / "images"


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> Path:
    """A seeded tiny model as a save_pretrained folder: the weights a run starts from."""
    torch.manual_seed(7)
    return save_pretrained(build_sam("efficientvit-sam-tiny"), tmp_path_factory.mktemp("start"))


def _overrides(shards: str, out: Path, *extra: str) -> list[str]:
    return [f"data.shards={shards}", "data.batch_size=1", "data.max_masks=4", "train.steps=4",
            "train.lr=1e-2", "train.warmup_steps=1", "run.log_every=1", "run.save_every=2",
            f"run.out_dir={out}", *extra]


def _eval_overrides(val_set, *extra: str) -> list[str]:
    ann, images = val_set
    return [f"eval.annotations={ann}", f"eval.images={images}", *extra]


def _rows(out: Path) -> list[dict]:
    with (out / "metrics.csv").open() as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(folder / "model.safetensors")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _scripted_scores(monkeypatch, scores: dict[int, float]) -> dict[int, dict]:
    """Make validation report ``scores[step]`` (box and click alike) and record the model's
    weights at each evaluated step."""
    seen: dict[int, dict] = {}

    def measure(self, model, accelerator, *, step):
        seen[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {BOX_COLUMN: scores[step], CLICK_COLUMN: scores[step]}

    monkeypatch.setattr(Validator, "measure", measure)
    return seen


def test_recipe_loads_with_decoder_only_default() -> None:
    cfg = load_config("finetune_custom")
    assert cfg.phase == 2
    assert cfg.train.freeze == ["image_encoder", "prompt_encoder"]
    assert cfg.model.init == "efficientvit-sam-l0"
    assert cfg.eval.annotations and cfg.eval.every > 0 and cfg.eval.early_stop_patience


@pytest.mark.parametrize(("override", "message"), [
    ("train.freeze=[image_encodr]", "unknown parts ['image_encodr']; valid: ['image_encoder', "
                                    "'prompt_encoder', 'mask_decoder']"),
    ("train.part_lr={decoder: 0.1}", "unknown parts ['decoder']; valid: ['image_encoder'"),
    ("train.part_lr={mask_decoder: 0}", "train.part_lr multipliers must be > 0"),
    ("train.freeze=[image_encoder, prompt_encoder, mask_decoder]", "nothing"),
    ("train.freeze=image_encoder", "train.freeze must be a list"),
    ("eval.best_metric=iou", "eval.best_metric must be one of ('box', 'click', 'mean')"),
])
def test_bad_freeze_part_lr_and_eval_settings_are_rejected(override, message) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("smoke_phase2", [override])
    assert message.replace("nothing", "no training") in str(err.value)


def test_freeze_is_refused_in_phase_1_and_eval_needs_both_paths() -> None:
    with pytest.raises(ConfigError, match="phase-2 settings"):
        load_config("smoke_phase1", ["train.freeze=[image_encoder]"])
    with pytest.raises(ConfigError, match="eval.annotations and eval.images"):
        load_config("smoke_phase2", ["eval.annotations=val.json"])


def test_part_lr_multipliers_reach_the_right_param_groups() -> None:
    cfg = load_config("smoke_phase2", ["train.lr=1e-3", "train.weight_decay=0.1",
                                       "train.freeze=[prompt_encoder]",
                                       "train.part_lr={image_encoder: 0.1, mask_decoder: 2}"])
    model = build_sam("efficientvit-sam-tiny")
    for name in cfg.train.freeze:
        getattr(model, name).requires_grad_(False)
    step = FinetuneStep(model, cfg.prompts, mask_loss="focal")
    optimizer = build_optimizer(step, model, cfg.train)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    expected = {"image_encoder": 1e-4, "mask_decoder": 2e-3}
    for part in MODEL_PARTS:
        for p in getattr(model, part).parameters():
            if part == "prompt_encoder":
                assert id(p) not in lr_of  # frozen: not in the optimizer
            else:
                assert lr_of[id(p)] == pytest.approx(expected[part])
    assert len(lr_of) == sum(1 for p in model.parameters() if p.requires_grad)
    decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert all((id(p) in decay) == (p.ndim >= 2) for p in model.mask_decoder.parameters())


def test_frozen_parts_keep_weights_and_batchnorm_statistics(shards, start, tmp_path) -> None:
    out = tmp_path / "run"
    run(load_config("smoke_phase2", _overrides(
        shards, out, f"model.init={start}", "train.freeze=[image_encoder, prompt_encoder]")))
    before, after = _weights(start), _weights(out / "pretrained")
    for key in before:
        frozen = key.startswith(("image_encoder.", "prompt_encoder."))
        if frozen:  # includes BatchNorm running_mean / running_var / num_batches_tracked
            assert torch.equal(before[key], after[key]), key
    changed = [k for k in before if k.startswith("mask_decoder.")
               and not torch.equal(before[k], after[k])]
    assert len(changed) > 10
    assert any("running_mean" in k for k in before if k.startswith("image_encoder."))


def test_validation_logs_the_eval_commands_figures(shards, val_set, tmp_path) -> None:
    out = tmp_path / "run"
    run(load_config("smoke_phase2", _overrides(
        shards, out, "train.freeze=[image_encoder]", *_eval_overrides(val_set, "eval.every=3"))))
    rows = _rows(out)
    evaluated = [r["step"] for r in rows if BOX_COLUMN in r]
    assert evaluated == [0, 3, 4]  # before training, every 3 steps, the last step
    assert all(CLICK_COLUMN in r for r in rows if r["step"] in evaluated)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    ann, images = val_set
    by_step = {r["step"]: r for r in rows}
    best_step = max(evaluated, key=lambda s: (by_step[s][BOX_COLUMN] + by_step[s][CLICK_COLUMN],
                                              -s))
    for folder, step in (("pretrained", 4), ("pretrained_best", best_step)):
        figures = {}
        for mode, key in (("box", "mIoU"), ("point", "mIoU@1click")):
            report = tmp_path / f"{folder}-{mode}.json"
            assert cli_main(["eval", mode, "--dataset", "coco", "--annotations", str(ann),
                             "--images", str(images), "--model", "efficientvit-sam-tiny",
                             "--checkpoint", str(out / folder / "model.safetensors"),
                             "--num-clicks", "1", "--output", str(report)]) == 0
            figures[mode] = json.loads(report.read_text())["metrics"][key]
        assert by_step[step][BOX_COLUMN] == pytest.approx(figures["box"], abs=1e-9)
        assert by_step[step][CLICK_COLUMN] == pytest.approx(figures["point"], abs=1e-9)
    assert (out / "loss.png").stat().st_size > 0


def test_pretrained_best_is_the_best_steps_weights(shards, val_set, tmp_path,
                                                   monkeypatch) -> None:
    seen = _scripted_scores(monkeypatch, {0: 10.0, 1: 30.0, 2: 20.0, 3: 25.0, 4: 5.0})
    out = tmp_path / "run"
    run(load_config("smoke_phase2", _overrides(shards, out,
                                               *_eval_overrides(val_set, "eval.every=1"))))
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert _same(_weights(out / "pretrained_best"), seen[1])
    assert not _same(_weights(out / "pretrained_best"), seen[4])
    assert _same(_weights(out / "pretrained"), seen[4])
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["validation"] == {"best": 30.0, "best_step": 1, "bad_evals": 3}


def test_early_stop_after_patience_evaluations(shards, val_set, tmp_path, monkeypatch,
                                               caplog) -> None:
    seen = _scripted_scores(monkeypatch, {0: 10.0, 1: 30.0, 2: 20.0, 3: 25.0})
    out = tmp_path / "run"
    args = ["finetune", "--config", "smoke_phase2", "--set",
            *_overrides(shards, out, "train.steps=8",
                        *_eval_overrides(val_set, "eval.every=1", "eval.early_stop_patience=2"))]
    with caplog.at_level(logging.INFO, logger="distill.engine"):
        assert cli_main(args) == 0
    assert sorted(seen) == [0, 1, 2, 3]
    assert max(r["step"] for r in _rows(out)) == 3
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 3
    assert _same(_weights(out / "pretrained"), seen[3])
    assert _same(_weights(out / "pretrained_best"), seen[1])
    assert "early stop at step 3/8: 2 evaluations without a better mean mIoU than 30.00 " \
           "(step 1" in caplog.text


def test_resume_keeps_the_best_so_far(shards, val_set, tmp_path, monkeypatch) -> None:
    scores = {0: 10.0, 2: 50.0, 4: 20.0, 6: 30.0}
    overrides = _overrides(shards, tmp_path, "train.steps=6",
                           *_eval_overrides(val_set, "eval.every=2"))
    _scripted_scores(monkeypatch, scores)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(load_config("smoke_phase2", [*overrides, f"run.out_dir={straight}"]))

    original, calls = FinetuneStep.forward, []

    def forward(self, batch, generator):
        calls.append(1)
        if len(calls) == 5:  # step 5, after the checkpoint of step 4
            raise RuntimeError("killed")
        return original(self, batch, generator)

    monkeypatch.setattr(FinetuneStep, "forward", forward)
    with pytest.raises(RuntimeError, match="killed"):
        run(load_config("smoke_phase2", [*overrides, f"run.out_dir={killed}"]))
    monkeypatch.setattr(FinetuneStep, "forward", original)
    run(load_config("smoke_phase2", [*overrides, f"run.out_dir={killed}"]), resume="auto")

    assert _rows(killed) == _rows(straight)
    # had the resumed run forgotten step 2's 50, step 6's 30 would have become the best
    assert _same(_weights(killed / "pretrained_best"), _weights(straight / "pretrained_best"))
    assert not _same(_weights(killed / "pretrained_best"), _weights(killed / "pretrained"))
    ckpt = torch.load(killed / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["validation"] == {"best": 50.0, "best_step": 2, "bad_evals": 2}


def test_missing_validation_file_is_a_user_error_naming_the_key(shards, tmp_path) -> None:
    out = tmp_path / "run"
    args = ["finetune", "--config", "smoke_phase2", "--set",
            *_overrides(shards, out, f"eval.annotations={tmp_path}/nope.json",
                        f"eval.images={tmp_path}")]
    assert cli_main(args) == 2
    assert not (out / "checkpoint.pt").exists()


def test_model_init_takes_a_registry_name(monkeypatch) -> None:
    with pytest.raises(CheckpointError, match="model.init efficientvit-sam-tiny: "):
        build_model(ModelConfig(name="efficientvit-sam-tiny", init="efficientvit-sam-tiny"))
    with pytest.raises(CheckpointError, match="names the weights of efficientvit-sam-l0, but "
                                              "model.name is efficientvit-sam-tiny"):
        build_model(ModelConfig(name="efficientvit-sam-tiny", init="l0"))
    torch.manual_seed(3)
    released = build_sam("efficientvit-sam-tiny")
    asked = []
    monkeypatch.setattr(distill.init, "resolve_model",
                        lambda name, **kw: asked.append(name) or (released, None))
    model = build_model(ModelConfig(name="efficientvit-sam-tiny", init="tiny"))
    assert asked == ["efficientvit-sam-tiny"]
    assert _same(model.state_dict(), released.state_dict())


@pytest.mark.slow
def test_two_process_validation_reports_the_single_process_figures(shards, val_set,
                                                                   tmp_path) -> None:
    """Under torchrun each rank evaluates a slice and the main process scores the gathered
    records: the logged figures are those of one process on the same weights."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    overrides = _overrides(shards, out, "train.steps=2",
                           *_eval_overrides(val_set, "eval.every=2"))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", "-m", "distill", "finetune", "--config", "smoke_phase2", "--set", *overrides]
    result = subprocess.run(args, cwd=Path(__file__).resolve().parents[1], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = {r["step"]: r for r in _rows(out)}
    assert sorted(s for s, r in rows.items() if BOX_COLUMN in r) == [0, 2]
    ann, images = val_set
    for mode, key, column in (("box", "mIoU", BOX_COLUMN),
                              ("point", "mIoU@1click", CLICK_COLUMN)):
        report = tmp_path / f"{mode}.json"
        assert cli_main(["eval", mode, "--dataset", "coco", "--annotations", str(ann),
                         "--images", str(images), "--model", "efficientvit-sam-tiny",
                         "--checkpoint", str(out / "pretrained" / "model.safetensors"),
                         "--num-clicks", "1", "--output", str(report)]) == 0
        assert rows[2][column] == pytest.approx(json.loads(report.read_text())["metrics"][key],
                                                abs=1e-9)
