"""Runs you can trust: an occupied ``run.out_dir`` is refused unless ``--resume``/``--overwrite``,
non-finite steps are skipped (no update) and a diverged run stops without saving bad weights,
stale temporary files are cleaned up, and ``metrics.csv`` is appended and cut back on resume.

Phase 1 on a tiny student with cached (random tiny) teacher embeddings: a step takes well under
a second on one CPU thread.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import pytest
import torch

import distill.metrics
from distill.cache import cache_teacher, expand_urls
from distill.config import TeacherConfig, load_config
from distill.engine import DivergedError
from distill.phase1 import DistillStep
from distill.run import run
from distill.run_dir import OutDirError
from distill.synthetic_writers import write_sa1b_shards
from distill.teacher import build_teacher
from effvit_sam.checkpoint import load_checkpoint
from effvit_sam.cli import main as cli_main
from effvit_sam.errors import UserError
from effvit_sam.modeling import EfficientViTSam

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    shards = tmp_path_factory.mktemp("shards")
    write_sa1b_shards(shards, num_shards=1, images_per_shard=4, seed=0, image_size=64)
    out = tmp_path_factory.mktemp("cache")
    teacher = build_teacher(TeacherConfig(kind="efficientvit", name="tiny", random_init=True))
    cache_teacher(teacher, expand_urls(f"{shards}/sa_000000.tar"), out)
    return f"{out}/sa_000000.tar"


def _cfg(cache: str, out: Path, *extra: str):
    return load_config("smoke_phase1", [f"data.cache={cache}", "data.batch_size=1",
                                        "train.steps=6", "run.save_every=2", "run.log_every=1",
                                        f"run.out_dir={out}", *extra])


def _rows(out: Path) -> list[dict]:
    with (out / "metrics.csv").open() as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def _ckpt_step(out: Path) -> int:
    return int(torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["step"])


def _patch_forward(monkeypatch, *, nan_calls=(), crash_call=None, on_call=None) -> list[dict]:
    """Wrap DistillStep.forward: record the encoder's state (weights and buffers) at each call,
    make the loss NaN on ``nan_calls`` (1-based), raise on ``crash_call``."""
    original = DistillStep.forward
    states: list[dict] = []

    def forward(self, batch, generator=None):
        states.append({k: v.detach().clone() for k, v in self.encoder.state_dict().items()})
        call = len(states)
        if on_call is not None:
            on_call(call)
        if call == crash_call:
            raise RuntimeError("killed")
        loss, parts = original(self, batch, generator)
        if call in nan_calls:
            return loss * math.nan, {k: v * math.nan for k, v in parts.items()}
        return loss, parts

    monkeypatch.setattr(DistillStep, "forward", forward)
    return states


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- run.out_dir


def test_occupied_out_dir_is_refused_and_overwrite_starts_again(cache, tmp_path) -> None:
    out = tmp_path / "run"
    run(_cfg(cache, out, "train.steps=2"))
    (out / "notes.txt").write_text("mine")
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(OutDirError) as err:
        run(_cfg(cache, out, "train.steps=1"))
    message = str(err.value)
    assert f"run.out_dir {out} is not empty" in message
    assert "--resume auto" in message and "--overwrite" in message
    assert (out / "checkpoint.pt").read_bytes() == before  # nothing was touched
    run(_cfg(cache, out, "train.steps=1"), overwrite=True)
    assert [r["step"] for r in _rows(out)] == [1.0]
    assert _ckpt_step(out) == 1
    assert (out / "pretrained" / "model.safetensors").is_file()
    assert (out / "notes.txt").read_text() == "mine"  # not the run's: kept


def test_resume_removes_stale_temp_files(cache, tmp_path, caplog, monkeypatch) -> None:
    out = tmp_path / "run"
    _patch_forward(monkeypatch, crash_call=4)
    with pytest.raises(RuntimeError, match="killed"):
        run(_cfg(cache, out))
    monkeypatch.undo()
    stale = [out / ".checkpoint.pt.k3j2h1g0.tmp", out / ".metrics.csv.a1b2c3d4.tmp",
             out / "pretrained" / ".model.safetensors.zz99yy88.tmp"]
    stale[0].write_bytes(b"")
    stale[1].write_text("step,lr\n1,")
    stale[2].parent.mkdir()
    stale[2].write_bytes(b"\0" * 100)
    keep = out / ".hidden.txt"
    keep.write_text("not a temporary file")
    with caplog.at_level(logging.WARNING, logger="distill.run_dir"):
        run(_cfg(cache, out), resume="auto")
    assert not any(p.exists() for p in stale)
    assert keep.exists()
    removed = [r.getMessage() for r in caplog.records if "left by a killed run" in r.message]
    assert len(removed) == 3
    assert any(str(stale[2]) in m and "(100 bytes)" in m for m in removed)
    assert _ckpt_step(out) == 6


# ---------------------------------------------------------------- metrics.csv


def test_metrics_are_appended_per_log_step_and_cut_back_once_on_resume(cache, tmp_path,
                                                                      monkeypatch) -> None:
    out = tmp_path / "run"
    rewrites = []
    atomic_write = distill.metrics.atomic_write
    monkeypatch.setattr(distill.metrics, "atomic_write",
                        lambda path, write: (rewrites.append(path), atomic_write(path, write)))
    seen = []  # rows in metrics.csv when each step starts

    def count_rows(call: int) -> None:
        path = out / "metrics.csv"
        seen.append(len(path.read_text().splitlines()) - 1 if path.is_file() else 0)

    _patch_forward(monkeypatch, crash_call=5, on_call=count_rows)
    with pytest.raises(RuntimeError, match="killed"):
        run(_cfg(cache, out, "run.log_every=3", "run.save_every=4"))
    # rows reach the file at log steps (3) and before a checkpoint (4), never rewritten
    assert seen == [0, 0, 0, 3, 4]
    assert rewrites == []
    assert _ckpt_step(out) == 4
    killed = (out / "metrics.csv").read_text().splitlines()
    monkeypatch.undo()
    monkeypatch.setattr(distill.metrics, "atomic_write",
                        lambda path, write: (rewrites.append(path), atomic_write(path, write)))
    run(_cfg(cache, out, "run.log_every=3", "run.save_every=4"), resume="auto")
    assert rewrites == [out / "metrics.csv"]  # the one cut back to step 4
    resumed = (out / "metrics.csv").read_text().splitlines()
    assert resumed[:5] == killed[:5]  # header + rows 1..4 kept byte for byte
    assert [r["step"] for r in _rows(out)] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert {"lr", "loss", "embed_mse", "grad_norm", "skipped"} <= set(_rows(out)[0])


# ---------------------------------------------------------------- non-finite steps


def test_nonfinite_steps_are_skipped_without_any_update_and_the_run_recovers(
        cache, tmp_path, monkeypatch, caplog) -> None:
    out = tmp_path / "run"
    states = _patch_forward(monkeypatch, nan_calls={3, 4})
    with caplog.at_level(logging.WARNING, logger="distill.engine"):
        run(_cfg(cache, out, "train.max_nonfinite_steps=3"))
    rows = _rows(out)
    assert [r["skipped"] for r in rows] == [0, 0, 1, 1, 0, 0]
    assert math.isnan(rows[2]["loss"]) and math.isnan(rows[3]["loss"])
    assert all(math.isfinite(r["loss"]) for r in rows[:2] + rows[4:])
    # states[k] is the encoder before step k + 1: weights AND BatchNorm statistics unchanged
    # by the skipped steps 3 and 4, changed by every other step
    assert _same(states[3], states[2]) and _same(states[4], states[3])
    assert not _same(states[2], states[1]) and not _same(states[5], states[4])
    warnings = [r.getMessage() for r in caplog.records if "non-finite loss" in r.message]
    assert len(warnings) == 2 and "step 4:" in warnings[1] and "2 in a row" in warnings[1]
    assert any("2 non-finite steps were skipped" in r.getMessage() for r in caplog.records)
    # step 4 was skipped: its checkpoint was not written; the last step's was
    assert _ckpt_step(out) == 6
    assert (out / "pretrained" / "model.safetensors").is_file()


def test_a_diverged_run_stops_keeps_the_last_good_checkpoint_and_saves_no_pretrained(
        cache, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    states = _patch_forward(monkeypatch, nan_calls=set(range(4, 100)))
    with pytest.raises(DivergedError) as err:
        run(_cfg(cache, out, "train.steps=20", "train.max_nonfinite_steps=3"))
    message = str(err.value)
    assert "training diverged at step 6: steps 4..6 (3 in a row, " \
           "train.max_nonfinite_steps=3)" in message
    assert f"the last checkpoint, {out / 'checkpoint.pt'} (step 2), is kept" in message
    assert [r["step"] for r in _rows(out)] == [1, 2, 3, 4, 5, 6]
    assert [r["skipped"] for r in _rows(out)] == [0, 0, 0, 1, 1, 1]
    assert _ckpt_step(out) == 2  # step 4 was a save step, but skipped
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    encoder = {k.removeprefix("image_encoder."): v for k, v in ckpt["model"].items()
               if k.startswith("image_encoder.")}
    assert _same(encoder, states[2])  # the weights after step 2
    assert not (out / "pretrained").exists() and not (out / "loss.png").exists()


def test_cli_lr_1e30_diverges_with_exit_2_and_one_line(cache, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = cli_main(["distill", "--config", "smoke_phase1", "--set", f"data.cache={cache}",
                     "data.batch_size=1", "train.steps=10", "run.save_every=1",
                     "train.lr=1e30", "train.max_nonfinite_steps=2", f"run.out_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1
    assert lines[0].startswith("effvit-sam distill: error: training diverged at step 3: steps "
                               "2..3 (2 in a row")
    assert _ckpt_step(out) == 1 and not (out / "pretrained").exists()
    # step 1's update made the weights huge but finite: that checkpoint loads
    from effvit_sam import build_sam

    load_checkpoint(build_sam("tiny"), out / "checkpoint.pt")


# ---------------------------------------------------------------- non-finite checkpoints


def test_nonfinite_checkpoints_are_refused_unless_allowed(tmp_path) -> None:
    from effvit_sam import build_sam

    model = build_sam("tiny")
    state = model.state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point() and k.startswith("mask_"))
    state[key] = state[key].clone()
    state[key].view(-1)[0] = math.inf
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(UserError) as err:
        load_checkpoint(build_sam("tiny"), path)
    assert f"{path} holds non-finite values (NaN or inf), first in {key}" in str(err.value)
    loaded = load_checkpoint(build_sam("tiny"), path, allow_nonfinite=True)
    assert isinstance(loaded, EfficientViTSam)
    assert math.isinf(loaded.state_dict()[key].view(-1)[0].item())
    # a run's model.init and --resume refuse it too
    with pytest.raises(UserError, match="holds non-finite values"):
        run(load_config("smoke_phase2", [f"model.init={path}", f"run.out_dir={tmp_path}/x"]))
