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


def test_a_nonfinite_step_on_one_rank_is_skipped_on_both(shards, tmp_path) -> None:
    """Rank 1's cache holds one NaN teacher embedding: that step's loss is NaN on rank 1 only,
    and both ranks must skip it (or rank 0 would step alone and the weights drift apart, or a
    rank wait forever); the run then carries on to the end."""
    import io
    import tarfile

    import numpy as np

    from distill.cache import EMBED_FIELD, cache_teacher, expand_urls
    from distill.config import TeacherConfig
    from distill.teacher import build_teacher

    pattern, _ = shards
    cache = tmp_path / "cache"
    teacher = build_teacher(TeacherConfig(kind="efficientvit", name="tiny", random_init=True))
    cache_teacher(teacher, expand_urls(pattern), cache)
    shard = cache / "sa_000001.tar"  # rank 1 reads shard 1
    samples = list(iter_tar_samples(shard))
    emb = np.load(io.BytesIO(samples[0][1][EMBED_FIELD]))
    buffer = io.BytesIO()
    np.save(buffer, np.full_like(emb, np.nan))
    samples[0][1][EMBED_FIELD] = buffer.getvalue()
    with tarfile.open(shard, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "p1"
    _torchrun("distill", "smoke_phase1", [f"data.cache={cache}/sa_{{000000..000001}}.tar",
                                          "train.steps=4", "data.batch_size=1",
                                          f"run.out_dir={out}"])
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    skipped = [float(r["skipped"]) for r in rows]
    assert sum(skipped) == 1  # one epoch: the NaN sample is seen once
    assert all(r["loss"] == "nan" for r, s in zip(rows, skipped, strict=True) if s)
    assert (out / "pretrained" / "model.safetensors").is_file()
