"""CPU seconds per phase-2 training step: ``python distill/scripts/cpu_step.py RECIPE
[SECTION.KEY=VALUE ...]`` (run with ``PYTHONPATH=.`` from the checkout's root, one shard of
made data at runs/made/shards_a unless ``data.shards=...`` is given). ``time.process_time``
counts this process's CPU time only, so the figure holds on a machine shared with other jobs;
the median of 10 steps (after 2 warm-up steps) is printed."""

from __future__ import annotations

import sys
import time

import torch

from distill.config import load_config
from distill.parts import build_optimizer
from distill.phase2 import phase2_task


def main(recipe: str, overrides: list[str], steps: int = 10) -> float:
    torch.manual_seed(0)
    base = ["data.shards=runs/made/shards_a/sa_000000.tar", "data.shuffle_buffer=0"]
    cfg = load_config(recipe, base + overrides)
    task = phase2_task(cfg, None)
    optimizer = build_optimizer(task.step_module, task.model, cfg.train)
    generator = torch.Generator().manual_seed(0)
    batches = iter(task.make_loader(0))
    times = []
    for _ in range(steps + 2):
        start = time.process_time()
        loss, _ = task.step_module(next(batches), generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.process_time() - start)
    times = sorted(times[2:])  # the first two steps warm up
    return times[len(times) // 2]


if __name__ == "__main__":
    print(f"{sys.argv[1:]}: {main(sys.argv[1], sys.argv[2:]):.3f} CPU s/step (median of 10)")
