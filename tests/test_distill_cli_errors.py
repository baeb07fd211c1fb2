"""Every user error of the distillation commands exits with code 2 and one line
``PROG: error: MESSAGE`` naming the key, file or argument; no traceback.

All of them fail before any training step (most before a model is built), so each case takes
a fraction of a second.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from effvit_sam import build_sam
from effvit_sam.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def _training_checkpoint(path: Path, *, world: int = 1, nan: bool = False) -> Path:
    """A file with a training checkpoint's keys (enough for the checks before resuming)."""
    model = build_sam("tiny").state_dict()
    if nan:
        key = next(k for k, v in model.items() if v.is_floating_point())
        model[key] = torch.full_like(model[key], float("nan"))
    torch.save({"model": model, "optimizer": {}, "scheduler": {}, "scaler": None, "step": 1,
                "config": {}, "rng": [{} for _ in range(world)]}, path)
    return path


def _killed_before_first_save(t: Path) -> Path:
    """A run folder with files but no checkpoint (a run killed before its first save)."""
    (t / "run").mkdir()
    (t / "run" / "config.yaml").write_text("phase: 1\n")
    return t / "run"


def _bad_yaml(tmp: Path) -> Path:
    path = tmp / "bad.yaml"
    path.write_text("phase: 1\ntrain:\n  lr: [1e-4\n  steps: 3\n")
    return path


def _pickle(tmp: Path) -> Path:
    path = tmp / "pickled.pt"
    torch.save({"model": {}, "hook": Path("x")}, path)  # a Python object: needs unpickling
    return path


def _weights(tmp: Path) -> Path:
    path = tmp / "weights.pt"
    torch.save(build_sam("tiny").state_dict(), path)
    return path


TRAIN = ["--config", "smoke_phase1", "--set"]
CASES = {
    "unknown --set key": (
        lambda t: ["distill", *TRAIN, "train.lrr=1e-4"],
        "--set train.lrr=1e-4: unknown config keys ['lrr'] in train; valid: "),
    "wrong type": (
        lambda t: ["distill", *TRAIN, "data.max_masks=eight"],
        "--set data.max_masks=eight: data.max_masks must be an integer, got 'eight'"),
    "bad --set value YAML": (
        lambda t: ["finetune", "--config", "smoke_phase2", "--set", "train.betas=[0.9,"],
        "--set train.betas=[0.9,: override 'train.betas=[0.9,': the value is not valid YAML"),
    "unknown recipe": (
        lambda t: ["distill", "--config", "l9_phase1"],
        "--config l9_phase1: no such file and no packaged recipe of that name; packaged "
        "recipes: finetune_custom, finetune_wafer, finetune_wafer_256, l0_phase1, "),
    "bad YAML file": (
        lambda t: ["distill", "--config", str(_bad_yaml(t))],
        "bad.yaml: invalid YAML at line 4, column 8: expected ',' or ']'"),
    "wrong phase": (
        lambda t: ["finetune", "--config", "smoke_phase1"],
        "--config smoke_phase1 is a phase-1 config; run it with 'effvit-sam distill'"),
    "resume missing": (
        lambda t: ["distill", *TRAIN, f"run.out_dir={t}/run", "--resume", str(t / "no.pt")],
        "no.pt: no such file"),
    "resume auto without checkpoint": (
        lambda t: ["distill", *TRAIN, f"run.out_dir={_killed_before_first_save(t)}",
                   "--resume", "auto"],
        "--resume auto: no checkpoint.pt in run.out_dir "),
    "resume weights file": (
        lambda t: ["distill", *TRAIN, f"run.out_dir={t}/run", "--resume", str(_weights(t))],
        "weights.pt is not a training checkpoint (no model, optimizer, scheduler, scaler, step, "
        "config, rng); to start a run from its weights, set model.init="),
    "resume pickle": (
        lambda t: ["distill", *TRAIN, f"run.out_dir={t}/run", "--resume", str(_pickle(t))],
        "pickled.pt: not a weights-only torch file (pickled Python objects are refused)"),
    "resume other world size": (
        lambda t: ["distill", *TRAIN, f"run.out_dir={t}/run", "--resume",
                   str(_training_checkpoint(t / "c2.pt", world=2))],
        "c2.pt was written by 2 processes; resuming it exactly needs the same number, not 1"),
    "resume NaN weights": (
        lambda t: ["distill", *TRAIN, f"run.out_dir={t}/run", "--resume",
                   str(_training_checkpoint(t / "nan.pt", nan=True))],
        "nan.pt holds non-finite weights (NaN or inf), first in "),
    "model.init missing": (
        lambda t: ["finetune", "--config", "smoke_phase2", "--set", f"model.init={t}/none",
                   f"run.out_dir={t}/run"],
        "model.init: no weights file or save_pretrained folder at "),
    "embed-mse student missing": (
        lambda t: ["embed-mse", "--shards", str(t / "sa_000000.tar"), "--student",
                   str(t / "none.pt"), "--teacher", str(t / "teacher")],
        "--student: no weights file or save_pretrained folder at "),
    "make-shards image size": (
        lambda t: ["make-shards", "--out", str(t), "--num-shards", "1", "--images-per-shard",
                   "1", "--image-size", "3"],
        "--image-size 3 is too small: image long side must be at least 32 pixels, got 3"),
    "make-shards seed": (
        lambda t: ["make-shards", "--out", str(t), "--num-shards", "1", "--images-per-shard",
                   "1", "--seed", "-1"],
        "--seed must be >= 0 (a NumPy seed), got -1"),
    "make-eval-set image size": (
        lambda t: ["make-eval-set", "--out", str(t), "--num-images", "1", "--image-size", "8"],
        "--image-size 8 is too small: image long side must be at least 32 pixels, got 8"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_exits_2_with_one_line(case: str, tmp_path, capsys) -> None:
    make_argv, expected = CASES[case]
    argv = make_argv(tmp_path)
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"effvit-sam {argv[0]}: error: "), lines[0]
    assert expected in lines[0], lines[0]


def test_occupied_out_dir_message_through_the_cli(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("step\n1\n")
    code = cli_main(["distill", *TRAIN, f"run.out_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert (f"effvit-sam distill: error: run.out_dir {out} is not empty (metrics.csv): pass "
            "--resume auto to continue the run there, or --overwrite to start it again") in err
    assert (out / "metrics.csv").read_text() == "step\n1\n"


def test_resume_and_overwrite_exclude_each_other(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main(["distill", "--config", "smoke_phase1", "--resume", "auto", "--overwrite"])
    assert exit_.value.code == 2
    assert "argument --overwrite: not allowed with argument --resume" in capsys.readouterr().err


def test_python_m_distill_uses_the_same_convention(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "distill", "make-shards", "--out", str(tmp_path),
         "--num-shards", "1", "--images-per-shard", "1", "--image-size", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "python -m distill make-shards: error: --image-size 3 is too small: image long side "
        "must be at least 32 pixels, got 3"]
    debug = subprocess.run(
        [sys.executable, "-m", "distill", "make-shards", "--out", str(tmp_path),
         "--num-shards", "1", "--images-per-shard", "1", "--seed", "-1", "--debug"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "UserError: --seed must be >= 0" in debug.stderr
