"""Validation during fine-tuning: box and 1-click mIoU on a held-out COCO-format file, with the
protocol of ``effvit-sam eval`` (its own functions: :func:`eval.runner.run_evaluation` over
:class:`eval.predictors.SamBatchPredictor`), so the figures logged in ``metrics.csv`` are the
ones ``effvit-sam eval box|point`` reports for the same weights and images.

* box: every instance prompted with its ground-truth box, multimask output, the mask with the
  highest predicted IoU kept (``eval box``'s ``mIoU``);
* click: one simulated click at the point farthest from the boundary, same decoding
  (``eval point``'s ``mIoU@1click``; later rounds never change the first).

Under DDP every process evaluates its slice of the images (``run_evaluation`` slices them and
gathers the records on the main process, which scores them) with the main process's buffers,
so the figures are those of the weights it saves; the scores are then broadcast so every rank
takes the same best-checkpoint and early-stop decisions.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from torch import nn

from effvit_sam.errors import UserError
from eval.datasets import EvalDataset
from eval.predictors import SamBatchPredictor
from eval.runner import EvalTask, run_evaluation

from .config import EvalConfig

log = logging.getLogger(__name__)

BOX_COLUMN = "val_box_miou"
CLICK_COLUMN = "val_click_miou"
"""``metrics.csv`` columns (mIoU in percent) of the steps that were evaluated."""
SUMMARY_KEYS = {BOX_COLUMN: "mIoU", CLICK_COLUMN: "mIoU@1click"}
"""Which figure of ``run_evaluation``'s summary each column holds."""


@dataclass
class BestSoFar:
    """The best score seen, at which step, and how many evaluations since did not beat it;
    saved in the training checkpoint, so a resumed run keeps it."""

    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0

    def update(self, score: float, step: int) -> bool:
        """Record ``score`` of ``step``; whether it is a new best (strictly higher)."""
        if self.best is None or score > self.best:
            self.best, self.best_step, self.bad_evals = score, step, 0
            return True
        self.bad_evals += 1
        return False

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = state["best"], state["best_step"]
        self.bad_evals = int(state["bad_evals"])


def _main_process_buffers(model: nn.Module, accelerator) -> None:
    """Give every rank the main process's buffers (BatchNorm statistics) before it evaluates.

    A forward in train mode moves each rank's statistics with its own batch, and DDP sends the
    main process's to the others only at the next forward: the ranks evaluated slightly
    different models, and the logged figures were not those of the saved weights (the main
    process's). Training is unchanged: its next forward receives the same buffers anyway."""
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


class Validator:
    """The ``eval`` section of a run: when to evaluate, what, and the best so far.

    The dataset is read when the run starts: a missing file or folder is a :class:`UserError`
    naming ``eval.annotations`` / ``eval.images`` before any step is trained.
    """

    def __init__(self, cfg: EvalConfig, *, total_steps: int) -> None:
        self.cfg = cfg
        self.total_steps = total_steps
        try:
            self.dataset = EvalDataset(cfg.dataset, cfg.annotations, cfg.images)
        except (FileNotFoundError, ValueError) as err:
            raise UserError(f"eval.annotations {cfg.annotations} / eval.images {cfg.images}: "
                            f"{err}") from None
        self.tasks = {BOX_COLUMN: EvalTask("box", limit=cfg.limit),
                      CLICK_COLUMN: EvalTask("point", num_clicks=1, limit=cfg.limit)}
        self.best = BestSoFar()

    def due(self, step: int) -> bool:
        """Evaluate after ``step``: every ``eval.every`` steps, at the last step, at step 0
        (before training) with ``eval.at_start``."""
        if step == 0:
            return self.cfg.at_start
        return step % self.cfg.every == 0 or step == self.total_steps

    def measure(self, model: nn.Module, accelerator, *, step: int) -> dict[str, float] | None:
        """Box and 1-click mIoU of ``model`` (the unwrapped model): every process evaluates
        its slice; the main process gets ``{column: mIoU}``, the others ``None``.

        The predictor works on an inference copy (as ``effvit-sam eval``'s does) but puts
        ``model`` in eval mode: the caller restores the training mode.
        """
        from accelerate.utils import gather_object

        _main_process_buffers(model, accelerator)
        predictor = SamBatchPredictor(model, device=accelerator.device,
                                      max_prompts=self.cfg.max_prompts)
        values = {}
        for column, task in self.tasks.items():
            summary = run_evaluation(task, predictor, self.dataset,
                                     process_index=accelerator.process_index,
                                     num_processes=accelerator.num_processes,
                                     gather=gather_object)
            if summary is None:
                continue
            value = summary["metrics"][SUMMARY_KEYS[column]]
            if value is None:
                raise UserError(f"eval.annotations {self.cfg.annotations}: no usable instance "
                                f"in the {summary['num_images']} images evaluated")
            values[column] = value
        return values if accelerator.is_main_process else None

    def score(self, values: dict[str, float]) -> float:
        """The figure ``eval.best_metric`` ranks checkpoints by."""
        box, click = values[BOX_COLUMN], values[CLICK_COLUMN]
        return {"box": box, "click": click, "mean": (box + click) / 2}[self.cfg.best_metric]

    def validate(self, model: nn.Module, accelerator, *, step: int) -> tuple[dict, bool]:
        """Measure, broadcast to every rank, update the best so far: ``(values, improved)``."""
        values = self.measure(model, accelerator, step=step)
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            values = broadcast_object_list([values])[0]
        improved = self.best.update(self.score(values), step)
        log.info("validation at step %d: box mIoU %.2f, 1-click mIoU %.2f%s (best %s %.2f at "
                 "step %d)", step, values[BOX_COLUMN], values[CLICK_COLUMN],
                 ", a new best" if improved else "", self.cfg.best_metric, self.best.best,
                 self.best.best_step)
        return values, improved

    def should_stop(self) -> bool:
        """``eval.early_stop_patience`` evaluations in a row did not beat the best."""
        patience = self.cfg.early_stop_patience
        return patience is not None and self.best.bad_evals >= patience
