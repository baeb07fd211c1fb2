"""A real two-process CPU (gloo) run of each phase under torchrun, on made shards.

``accelerate launch --cpu --num_processes 2`` would start ONE process; torchrun starts two and
``Accelerator(cpu=True)`` then joins them into a gloo process group.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.cache import iter_tar_samples
from distill.synthetic_writers import write_sa1b_shards

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[str, list[list[str]]]:
    out = tmp_path_factory.mktemp("shards")
    paths = write_sa1b_shards(out, num_shards=2, images_per_shard=4, seed=5, image_size=160)
    keys = [[k.rsplit("/", 1)[-1] for k, _ in iter_tar_samples(p)] for p in paths]
    return f"{out}/sa_{{000000..000001}}.tar", keys


def _torchrun(command: str, config: str, overrides: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", "-m", "distill", command, "--config", config, "--set", *overrides]
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _seen(out: Path, rank: int) -> list[str]:
    return [line.split()[1] for line in (out / f"keys-rank{rank}.txt").read_text().splitlines()]


def _check_run(out: Path, keys: list[list[str]], steps: int) -> None:
    seen0, seen1 = _seen(out, 0), _seen(out, 1)
    # each rank reads its own shard: different samples, none shared
    assert seen0 and seen1 and not set(seen0) & set(seen1)
    assert set(seen0) <= set(keys[0]) and set(seen1) <= set(keys[1])
    with (out / "metrics.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, steps + 1))
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == steps and len(ckpt["rng"]) == 2
    # every rank's prompt generator is saved, and they are different streams
    assert not torch.equal(ckpt["rng"][0]["prompts"], ckpt["rng"][1]["prompts"])
    assert (out / "pretrained" / "model.safetensors").is_file()


def test_two_process_phase1(shards, tmp_path) -> None:
    pattern, keys = shards
    out = tmp_path / "p1"
    _torchrun("distill", "smoke_phase1", [f"data.shards={pattern}", "train.steps=2",
                                          "data.batch_size=2", "run.log_keys=true",
                                          f"run.out_dir={out}"])
    _check_run(out, keys, steps=2)


def test_two_process_phase2(shards, tmp_path) -> None:
    pattern, keys = shards
    out = tmp_path / "p2"
    _torchrun("finetune", "smoke_phase2", [f"data.shards={pattern}", "train.steps=2",
                                           "data.batch_size=1", "data.max_masks=4",
                                           "run.log_keys=true", f"run.out_dir={out}"])
    _check_run(out, keys, steps=2)
