"""One entry point for a training run of either phase: :func:`run`.

``cfg.phase`` picks the phase's task factory (the model, the step module and the loader);
:func:`distill.engine.train` runs it. ``effvit-sam distill`` (phase 1) and ``effvit-sam
finetune`` (phase 2) both call :func:`run`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from effvit_sam.errors import UserError

from .config import Config
from .engine import Task, train
from .phase1 import phase1_task
from .phase2 import phase2_task
from .run_dir import CHECKPOINT_NAME

log = logging.getLogger(__name__)
TASKS: dict[int, Callable[[Config, object], Task]] = {1: phase1_task, 2: phase2_task}
"""``cfg.phase`` -> ``task_factory(cfg, accelerator)``."""


def resume_path(resume: str | Path | None, out_dir: str | Path) -> Path | None:
    """``--resume``: a checkpoint path, or ``"auto"`` for ``out_dir/checkpoint.pt``.

    ``"auto"`` with no ``run.out_dir`` yet (or an empty one) starts a fresh run, so one command
    both starts a long run and continues it after an interruption; a folder that holds files
    but no checkpoint (a run killed before its first save) is refused, naming ``--overwrite``.
    """
    if resume is None:
        return None
    if str(resume) == "auto":
        path = Path(out_dir) / CHECKPOINT_NAME
        if not Path(out_dir).is_dir() or not any(Path(out_dir).iterdir()):
            log.info("--resume auto: nothing in %s yet, starting a fresh run", out_dir)
            return None
        if not path.is_file():
            raise UserError(f"--resume auto: no {CHECKPOINT_NAME} in run.out_dir {out_dir} "
                            "(no checkpoint was written yet: start again with --overwrite)")
        return path
    return Path(resume)


def run(cfg: Config, *, resume: str | Path | None = None, overwrite: bool = False) -> Path:
    """Train (or, with ``resume``, continue) the run ``cfg`` describes; returns ``run.out_dir``.

    ``resume``: a training checkpoint, or ``"auto"`` (``run.out_dir``'s). ``overwrite``: start
    again in a ``run.out_dir`` that holds an old run, deleting its checkpoint, metrics and
    ``pretrained/``. Without either, a non-empty ``run.out_dir`` is refused.
    """
    return train(cfg, TASKS[cfg.phase], resume=resume_path(resume, cfg.run.out_dir),
                 overwrite=overwrite)
