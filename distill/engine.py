"""The training loop both phases share: accelerate, AdamW + warm-up/cosine, accumulation,
clipping, non-finite step skipping, atomic checkpoints with every RNG state, exact resume,
CSV/TensorBoard logs, frozen parts and per-part learning rates (:mod:`distill.parts`), validation
with the best weights kept and early stopping (:mod:`distill.validate`).

A phase hands :func:`train` a :class:`Task`: the model to save, the module to optimise (whose
``forward(batch, generator)`` returns ``(loss, parts)``) and a loader factory. Data is not
prepared by accelerate: the SA-1B reader and the cache reader split shards across ranks and
workers themselves. On resume the stream is replayed and the consumed batches skipped, so the
next step sees exactly the batch, prompts and RNG draws an uninterrupted run would have.

Host syncs: one per step, the all-rank flag that says whether the loss and the gradient norm
are finite (every rank must take the same branch: step, or skip). The loss parts stay on the
device; every step's row is kept there and converted, averaged over ranks and appended to
``metrics.csv`` once per log step (``run.log_every``), before each checkpoint and at the end.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from effvit_sam.checkpoint import check_state_dict, save_pretrained
from effvit_sam.errors import UserError
from effvit_sam.io import atomic_write
from effvit_sam.modeling import EfficientViTSam

from .config import Config, dump_config
from .metrics import MetricsLog
from .parts import build_optimizer, freeze_parts, set_train_mode
from .rng import from_plain, rng_state, set_rng_state
from .run_dir import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    LOSS_PLOT_NAME,
    METRICS_NAME,
    PRETRAINED_BEST_DIR,
    PRETRAINED_DIR,
    prepare_out_dir,
)
from .skip_log import RunSkips, describe
from .train_checkpoint import nonfinite_state, read_checkpoint, save_checkpoint
from .validate import Validator

log = logging.getLogger(__name__)
PROMPT_SEED_OFFSET = 1_000_003  # keeps the prompt stream apart from the init/data seeds


@dataclass
class Task:
    """What a phase trains. ``step_module.forward(batch, generator) -> (loss, parts)``."""

    model: EfficientViTSam
    step_module: nn.Module
    make_loader: Callable[[int], Iterable[dict]]


class DivergedError(UserError):
    """``train.max_nonfinite_steps`` steps in a row had a NaN/inf loss or gradient norm, or the
    weights themselves became NaN/inf; the last finite checkpoint is kept."""


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


def batch_stream(make_loader: Callable[[int], Iterable[dict]], *, skip: int,
                 on_batch: Callable[[dict], None] | None = None) -> Iterator[dict]:
    """Endless batches, epoch after epoch (loader ``epoch`` 0, 1, ...), the first ``skip``
    dropped (replay for resume); ``on_batch`` sees every batch, dropped ones included."""
    epoch, seen = 0, 0
    while True:
        produced = 0
        for batch in make_loader(epoch):
            produced += 1
            seen += 1
            if on_batch is not None:
                on_batch(batch)
            if seen > skip:
                yield batch
        if produced == 0:
            raise UserError("the training data yielded no batch: check data.shards (and "
                            "data.batch_size, which drops a last partial batch)")
        epoch += 1


def _on_main(accelerator, action: Callable[[], None]) -> None:
    """``action()`` on the main process only; a :class:`UserError` it raises is raised on every
    rank (the others would otherwise wait for the main process at the next collective)."""
    from accelerate.utils import broadcast_object_list

    error = None
    if accelerator.is_main_process:
        try:
            action()
        except UserError as err:
            error = err
    if accelerator.num_processes > 1:
        message = broadcast_object_list([None if error is None else str(error)])[0]
        if error is None and message is not None:
            raise UserError(message)
    if error is not None:
        raise error


def _grad_norm(parameters: list[nn.Parameter], clip: float | None) -> torch.Tensor:
    """Total L2 norm of the gradients (a device tensor, no sync), clipped to ``clip`` if set."""
    if clip:
        return torch.nn.utils.clip_grad_norm_(parameters, clip)
    return torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])


def _flush(pending: list[dict], accelerator) -> list[dict]:
    """This window's rows as Python numbers (one device-to-host copy), averaged over ranks.

    Every rank must call it at the same steps (it is a collective under DDP); the main process
    gets the merged rows, the others ``[]``. A key only some ranks logged on a step (phase 2
    logs no parts for a batch without masks) is averaged over the ranks that have it.
    """
    from accelerate.utils import gather_object

    cells = [(i, k) for i, row in enumerate(pending) for k, v in row.items()
             if isinstance(v, torch.Tensor)]
    values = torch.stack([pending[i][k].float() for i, k in cells]).tolist() if cells else []
    rows = [dict(row) for row in pending]
    for (i, k), value in zip(cells, values, strict=True):
        rows[i][k] = value
    pending.clear()
    per_rank = gather_object([rows]) if accelerator.num_processes > 1 else [rows]
    if not accelerator.is_main_process:
        return []
    merged = []
    for same_step in zip(*per_rank, strict=True):
        row = {"step": same_step[0]["step"]}
        for key in dict.fromkeys(k for r in same_step for k in r if k != "step"):
            found = [r[key] for r in same_step if key in r]
            row[key] = sum(found) / len(found)
        merged.append(row)
    return merged


def train(cfg: Config, task_factory: Callable[[Config, object], Task], *,
          resume: str | Path | None = None, overwrite: bool = False) -> Path:
    """Run (or resume) a training run; returns the output folder.

    ``task_factory(cfg, accelerator)`` builds the phase's :class:`Task` once the process group
    exists (the readers split data by rank). ``run.out_dir`` must be empty unless ``resume``
    (a training checkpoint to continue) or ``overwrite`` (start again) is given. Writes
    ``config.yaml``, ``metrics.csv`` (a row per step: ``lr``, ``loss`` and its parts,
    ``grad_norm``, ``skipped``), ``checkpoint.pt`` (every ``run.save_every`` steps and at the
    end), ``loss.png``, ``skips.json`` (the SA-1B reader's skipped samples and annotations,
    all ranks, :mod:`distill.skip_log`; also on each log step's line) and a ``save_pretrained``
    folder of the model. With ``train.freeze`` the named parts stay fixed (no gradient, not in
    the optimizer, eval mode); ``train.part_lr`` scales a part's learning rate. With
    ``eval.annotations`` the model is validated (:class:`~distill.validate.Validator`): the
    figures go into the evaluated steps' rows, the best weights into ``pretrained_best/``, the
    best so far into the checkpoint, and after ``eval.early_stop_patience`` evaluations without
    a new best the run checkpoints, saves ``pretrained/`` and stops (a normal end).

    A step whose loss or gradient norm is NaN/inf on any rank is skipped on every rank: no
    weight, optimizer or buffer (BatchNorm statistics) update, but it consumes its batch and
    its LR-schedule slot, so resume replay and the schedule stay aligned; no checkpoint is
    written at a skipped step (except the last). ``train.max_nonfinite_steps`` such steps in a
    row, or NaN/inf weights at a checkpoint, raise :class:`DivergedError` without writing that
    checkpoint or ``pretrained/``. Under fp16 a gradient overflow with a finite loss is the
    GradScaler's normal calibration: it skips the step and lowers its scale (not counted).
    """
    out_dir = Path(cfg.run.out_dir)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    # phase 2 leaves some prompt-encoder weights unused on a step (no mask input, points
    # without a box...), which DDP must be told about
    accelerator = make_accelerator(cfg, find_unused_parameters=cfg.phase == 2)
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    # checked before any model is built: every rank needs its own RNG state from the file
    ckpt = read_checkpoint(resume, world_size=world) if resume is not None else None
    # the held-out set is read before anything is built: a wrong path fails at once
    validator = Validator(cfg.eval, total_steps=cfg.train.steps) if cfg.eval.annotations \
        else None
    _on_main(accelerator, lambda: prepare_out_dir(out_dir, resume=ckpt is not None,
                                                  overwrite=overwrite))
    task = task_factory(cfg, accelerator)
    frozen = cfg.train.freeze
    freeze_parts(task.model, frozen)
    generator = torch.Generator().manual_seed(cfg.train.seed * PROMPT_SEED_OFFSET + rank)
    optimizer = build_optimizer(task.step_module, task.model, cfg.train)
    schedule = dict(warmup=cfg.train.warmup_steps, total=cfg.train.steps,
                    min_ratio=cfg.train.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, **schedule))
    step_module, optimizer = accelerator.prepare(task.step_module, optimizer)
    scaler = getattr(accelerator, "scaler", None)
    parameters = [p for p in step_module.parameters() if p.requires_grad]
    buffers = list(task.step_module.buffers())

    step, saved_step = 0, None
    if ckpt is not None:
        check_state_dict(task.model, ckpt["model"], source=f"--resume {resume}")
        task.model.load_state_dict(ckpt["model"], strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"] is not None and scaler is not None:
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(from_plain(ckpt["rng"][rank]), generator)
        if validator is not None and ckpt.get("validation"):
            validator.best.load_state_dict(ckpt["validation"])
        step = saved_step = int(ckpt["step"])
        log.info("resumed from %s at step %d", resume, step)

    if main:
        atomic_write(out_dir / CONFIG_NAME, lambda p: Path(p).write_text(dump_config(cfg)))
    metrics = MetricsLog(out_dir, tensorboard=cfg.run.tensorboard, resume_step=step) if main \
        else None
    accum = cfg.train.grad_accum
    skips = RunSkips()  # the data reader's skip counts, summed over ranks at each log step
    batches = batch_stream(task.make_loader, skip=step * accum, on_batch=skips.update)
    bar = tqdm(total=cfg.train.steps, initial=step, disable=not main,
               desc=f"phase {cfg.phase} ({Path(cfg.run.out_dir).name})")  # which run, too
    pending: list[dict] = []  # this rank's rows since the last flush, values on the device
    streak = skipped = 0  # non-finite steps in a row / in this process's part of the run

    def write_rows() -> None:
        rows = _flush(pending, accelerator)
        totals = skips.gather(accelerator)  # a collective too, at the same steps on every rank
        if main and rows:
            metrics.add(rows)
            skips.write(out_dir, rows[-1]["step"])
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4g}")
            log.info("step %d/%d %s%s", rows[-1]["step"], cfg.train.steps,
                     " ".join(f"{k}={v:.4g}" for k, v in rows[-1].items() if k != "step"),
                     "" if totals is None else f" | data skipped: {describe(totals)}")

    def diverged(why: str) -> DivergedError:
        write_rows()
        kept = (f"the last checkpoint, {out_dir / CHECKPOINT_NAME} (step {saved_step}), is "
                "kept" if saved_step is not None else "no checkpoint was written")
        return DivergedError(f"training diverged at step {step}: {why}; {kept} and no "
                             f"{PRETRAINED_DIR}/ is saved. Lower train.lr (or check the data) "
                             "and start again with --overwrite")

    def validate() -> None:
        """Validate the weights after ``step`` into its row; keep them if they are the best."""
        values, improved = validator.validate(task.model, accelerator, step=step)
        if pending and pending[-1]["step"] == step:
            pending[-1].update(values)
        else:
            pending.append({"step": step, **values})  # step 0: before any training
        if improved and main:
            # each file is replaced atomically and config.json never changes: the folder always
            # holds one complete model
            save_pretrained(task.model, out_dir / PRETRAINED_BEST_DIR)
        set_train_mode(step_module, task.model, frozen)  # the predictor set eval mode

    if validator is not None and step == 0 and validator.due(0):
        validate()
    set_train_mode(step_module, task.model, frozen)
    stopping = validator is not None and validator.should_stop()  # resumed after an early stop
    try:  # a stopped run closes its progress bar, so its error starts on a line of its own
        while step < cfg.train.steps and not stopping:
            totals: dict[str, torch.Tensor] = {}
            # a forward in train mode updates BatchNorm statistics: a skipped step restores them
            saved_buffers = [b.detach().clone() for b in buffers]
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
                for key, value in {"loss": loss, **parts}.items():
                    totals[key] = totals.get(key, 0.0) + value.detach().float() / accum
            accelerator.unscale_gradients()  # fp16 only: the true gradients for norm and clipping
            norm = _grad_norm(parameters, cfg.train.clip_grad)
            # the step's one host sync: skip on every rank if the loss or the norm is bad on any
            bad = torch.stack([~torch.isfinite(totals["loss"]), ~torch.isfinite(norm)]).float()
            loss_bad, norm_bad = (v > 0 for v in accelerator.reduce(bad, reduction="sum").tolist())
            overflow = scaler is not None and norm_bad and not loss_bad
            if not (loss_bad or norm_bad) or overflow:
                optimizer.step()  # fp16 overflow: the GradScaler skips it and lowers its scale
            else:
                for buffer, saved in zip(buffers, saved_buffers, strict=True):
                    buffer.copy_(saved)
                if scaler is not None:
                    scaler.update()  # no step: record the inf found by unscale_ (lowers the scale)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            counted = (loss_bad or norm_bad) and not overflow
            streak = streak + 1 if counted else 0
            skipped += counted
            if counted:
                what = " and ".join(name for name, hit in (("loss", loss_bad),
                                                            ("gradient norm", norm_bad)) if hit)
                log.warning("step %d: non-finite %s, step skipped (no update); %d in a row",
                            step, what, streak)
            # the schedule's lr of train.lr (groups with a train.part_lr multiplier differ)
            lr = scheduler.get_last_lr()[0] / optimizer.param_groups[0].get("lr_scale", 1.0)
            pending.append({"step": step, "lr": lr, **totals,
                            "grad_norm": norm.detach().float(),
                            "skipped": float(loss_bad or norm_bad)})
            if streak >= cfg.train.max_nonfinite_steps:
                raise diverged(f"steps {step - streak + 1}..{step} ({streak} in a row, "
                               f"train.max_nonfinite_steps={cfg.train.max_nonfinite_steps}) had a "
                               "non-finite loss or gradient norm and were skipped")
            if validator is not None and validator.due(step):
                validate()
                stopping = validator.should_stop()
            if step % cfg.run.log_every == 0 or step == cfg.train.steps or stopping:
                write_rows()
            # no checkpoint of a skipped step (the last good one stays), except the last step's
            # (or an early stop's)
            if (step % cfg.run.save_every == 0 and not streak) or step == cfg.train.steps \
                    or stopping:
                write_rows()  # metrics.csv holds every row the checkpoint covers
                bad_key = nonfinite_state(task.model, optimizer)  # the same on every rank (DDP)
                if bad_key is not None:
                    raise diverged(f"{bad_key} is not finite")
                states = [rng_state(generator)]
                if world > 1:
                    from accelerate.utils import gather_object

                    states = gather_object(states)  # every rank's, for exact resume
                if main:
                    save_checkpoint(out_dir / CHECKPOINT_NAME, model=task.model,
                                    optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                    step=step, cfg=cfg, rng_states=states,
                                    validation=validator.best.state_dict() if validator else None)
                saved_step = step
                accelerator.wait_for_everyone()
    finally:
        bar.close()
    if stopping:
        best = validator.best
        log.info("early stop at step %d/%d: %d evaluations without a better %s mIoU than %.2f "
                 "(step %d, in %s/)", step, cfg.train.steps, best.bad_evals,
                 cfg.eval.best_metric, best.best, best.best_step, PRETRAINED_BEST_DIR)
    if skipped:
        log.warning("%d non-finite steps were skipped (see the 'skipped' column of %s)",
                    skipped, METRICS_NAME)
    if main:
        skips.log_final(out_dir)
        metrics.close()
        save_pretrained(task.model, out_dir / PRETRAINED_DIR)
        from .plots import plot_loss_curves

        plot_loss_curves(out_dir / METRICS_NAME, out_dir / LOSS_PLOT_NAME,
                         title=f"phase {cfg.phase}: {cfg.model.name}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out_dir
