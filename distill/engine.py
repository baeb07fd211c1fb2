"""The training loop both phases share: accelerate, AdamW + warm-up/cosine, accumulation,
clipping, atomic checkpoints with every RNG state, exact resume, CSV/TensorBoard logs.

A phase hands :func:`train` a :class:`Task`: the model to save, the module to optimise (whose
``forward(batch, generator)`` returns ``(loss, parts)``) and a loader factory. Data is not
prepared by accelerate: the SA-1B reader and the cache reader split shards across ranks and
workers themselves. On resume the stream is replayed and the consumed batches skipped, so the
next step sees exactly the batch, prompts and RNG draws an uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from effvit_sam.checkpoint import save_pretrained
from effvit_sam.io import atomic_write
from effvit_sam.modeling import EfficientViTSam

from .config import Config, dump_config

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.csv"
PRETRAINED_DIR = "pretrained"
PROMPT_SEED_OFFSET = 1_000_003  # keeps the prompt stream apart from the init/data seeds


@dataclass
class Task:
    """What a phase trains. ``step_module.forward(batch, generator) -> (loss, parts)``."""

    model: EfficientViTSam
    step_module: nn.Module
    make_loader: Callable[[int], Iterable[dict]]


def make_accelerator(cfg: Config, *, find_unused_parameters: bool = False):
    """An ``Accelerator``: bf16 autocast on CUDA when ``auto``, full precision on CPU."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    precision = cfg.train.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)]
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available(),
                       kwargs_handlers=handlers)


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(module: nn.Module, cfg: Config) -> torch.optim.AdamW:
    """AdamW; norms, biases and embeddings (params of < 2 dims) get no weight decay."""
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=cfg.train.betas)


def rng_state(generator: torch.Generator) -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                       *np_state[2:]),
             "torch": torch.get_rng_state(), "prompts": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["prompts"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(obj):
    """Tuples to lists recursively, so a checkpoint loads with ``weights_only=True``."""
    if isinstance(obj, tuple | list):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


def _from_plain_rng(state: dict) -> dict:
    state = dict(state)
    state["python"] = (state["python"][0], tuple(state["python"][1]), state["python"][2])
    state["numpy"] = tuple(state["numpy"])
    return state


class MetricsLog:
    """``metrics.csv`` (always) and TensorBoard (optional), written by the main process."""

    def __init__(self, out_dir: Path, *, tensorboard: bool, resume_step: int) -> None:
        self.path = out_dir / METRICS_NAME
        self.rows: list[dict] = []
        if resume_step and self.path.is_file():
            # drop what the killed run logged after its last checkpoint: it is recomputed
            with self.path.open() as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.writer is not None:
            for key, value in row.items():
                if key != "step":
                    self.writer.add_scalar(key, value, row["step"])
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        rows = list(self.rows)

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=keys)
                out.writeheader()
                out.writerows(rows)

        atomic_write(self.path, write)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def batch_stream(make_loader: Callable[[int], Iterable[dict]], *, skip: int) -> Iterator[dict]:
    """Endless batches, epoch after epoch (loader ``epoch`` 0, 1, ...), the first ``skip``
    dropped (replay for resume)."""
    epoch, seen = 0, 0
    while True:
        produced = 0
        for batch in make_loader(epoch):
            produced += 1
            seen += 1
            if seen > skip:
                yield batch
        if produced == 0:
            raise RuntimeError("the training data yielded no batch: check data.shards")
        epoch += 1


def save_checkpoint(path: Path, *, task: Task, optimizer, scheduler, accelerator, step: int,
                    cfg: Config, rng_states: list[dict]) -> None:
    scaler = getattr(accelerator, "scaler", None)
    state = {"model": task.model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None,
             "step": step, "config": _to_plain(cfg.to_dict()),
             "model_config": task.model.config.to_dict() if task.model.config else None,
             "rng": _to_plain(rng_states)}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def train(cfg: Config, task_factory: Callable[[Config, object], Task], *,
          resume: str | Path | None = None) -> Path:
    """Run (or resume) a training run; returns the output folder.

    ``task_factory(cfg, accelerator)`` builds the phase's :class:`Task` once the process group
    exists (the readers split data by rank). Writes ``config.yaml``, ``metrics.csv``,
    ``checkpoint.pt`` (every ``run.save_every`` steps and at the end), ``loss.png`` and a
    ``save_pretrained`` folder of the model.
    """
    from accelerate.utils import gather_object

    out_dir = Path(cfg.run.out_dir)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    # phase 2 leaves some prompt-encoder weights unused on a step (no mask input, points
    # without a box...), which DDP must be told about
    accelerator = make_accelerator(cfg, find_unused_parameters=cfg.phase == 2)
    task = task_factory(cfg, accelerator)
    rank, world = accelerator.process_index, accelerator.num_processes
    generator = torch.Generator().manual_seed(cfg.train.seed * PROMPT_SEED_OFFSET + rank)
    optimizer = build_optimizer(task.step_module, cfg)
    schedule = dict(warmup=cfg.train.warmup_steps, total=cfg.train.steps,
                    min_ratio=cfg.train.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, **schedule))
    step_module, optimizer = accelerator.prepare(task.step_module, optimizer)

    step = 0
    if resume is not None:
        ckpt = torch.load(resume, map_location="cpu", weights_only=True)
        task.model.load_state_dict(ckpt["model"], strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"] is not None and getattr(accelerator, "scaler", None) is not None:
            accelerator.scaler.load_state_dict(ckpt["scaler"])
        if len(ckpt["rng"]) != world:
            raise ValueError(f"{resume} was written by {len(ckpt['rng'])} processes; resuming "
                             f"it exactly needs the same number, not {world}")
        set_rng_state(_from_plain_rng(ckpt["rng"][rank]), generator)
        step = int(ckpt["step"])
        log.info("resumed from %s at step %d", resume, step)

    main = accelerator.is_main_process
    out_dir.mkdir(parents=True, exist_ok=True)
    if main:
        atomic_write(out_dir / "config.yaml", lambda p: Path(p).write_text(dump_config(cfg)))
    metrics = MetricsLog(out_dir, tensorboard=cfg.run.tensorboard, resume_step=step) if main \
        else None
    accum = cfg.train.grad_accum
    batches = batch_stream(task.make_loader, skip=step * accum)
    bar = tqdm(total=cfg.train.steps, initial=step, disable=not main, desc=f"phase {cfg.phase}")
    step_module.train()
    while step < cfg.train.steps:
        totals: dict[str, float] = {}
        for micro in range(accum):
            batch = next(batches)
            if cfg.run.log_keys:
                with (out_dir / f"keys-rank{rank}.txt").open("a") as f:
                    f.write("".join(f"{step + 1} {key}\n" for key in batch["key"]))
            last = micro == accum - 1
            sync = contextlib.nullcontext() if last else accelerator.no_sync(step_module)
            with sync, accelerator.autocast():
                loss, parts = step_module(batch, generator)
            accelerator.backward(loss / accum)
            for key, value in {"loss": loss.detach(), **parts}.items():
                totals[key] = totals.get(key, 0.0) + float(value) / accum
        if cfg.train.clip_grad:
            norm = accelerator.clip_grad_norm_(step_module.parameters(), cfg.train.clip_grad)
            totals["grad_norm"] = float(norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        values = torch.tensor(list(totals.values()), device=accelerator.device)
        values = accelerator.reduce(values, reduction="mean")
        row = {"step": step, "lr": scheduler.get_last_lr()[0],
               **dict(zip(totals, values.tolist(), strict=True))}
        if main:
            metrics.add(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4g}")
            if step % cfg.run.log_every == 0 or step == cfg.train.steps:
                log.info("step %d/%d %s", step, cfg.train.steps,
                         " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
        if step % cfg.run.save_every == 0 or step == cfg.train.steps:
            states = gather_object([rng_state(generator)])  # every rank's, for exact resume
            if main:
                save_checkpoint(out_dir / CHECKPOINT_NAME, task=task, optimizer=optimizer,
                                scheduler=scheduler, accelerator=accelerator, step=step,
                                cfg=cfg, rng_states=states)
            accelerator.wait_for_everyone()
    bar.close()
    if main:
        metrics.close()
        save_pretrained(task.model, out_dir / PRETRAINED_DIR)
        from .plots import plot_loss_curves

        plot_loss_curves(out_dir / METRICS_NAME, out_dir / "loss.png",
                         title=f"phase {cfg.phase}: {cfg.model.name}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out_dir
