"""The training checkpoint (``run.out_dir/checkpoint.pt``): written atomically by the main
process, read back with ``weights_only=True`` for ``--resume``.

It holds the model, optimizer, scheduler and grad-scaler states, the step, the run's config,
the model's own config (so it rebuilds alone), every rank's RNG states and (``validation``,
when the run validates) the best score so far. A file that is not such a checkpoint, that a
different number of processes wrote, or whose weights hold NaN/inf is refused with an error
naming it; pickled Python objects are never loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from effvit_sam.checkpoint import CheckpointError, first_nonfinite
from effvit_sam.errors import UserError
from effvit_sam.io import atomic_write

from .config import Config
from .rng import to_plain

TRAINING_KEYS = ("model", "optimizer", "scheduler", "scaler", "step", "config", "rng")


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer, scheduler, scaler,
                    step: int, cfg: Config, rng_states: list[dict],
                    validation: dict | None = None) -> None:
    """Write the checkpoint of ``step`` to ``path`` atomically (a kill never leaves half)."""
    config = getattr(model, "config", None)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None,
             "step": step, "config": to_plain(cfg.to_dict()),
             "model_config": config.to_dict() if config is not None else None,
             "rng": to_plain(rng_states), "validation": validation}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: str | Path, *, world_size: int) -> dict:
    """The training checkpoint at ``path`` (``--resume``), checked before anything uses it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--resume {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--resume {path}: not a weights-only torch file (pickled Python "
                        f"objects are refused): {first}") from None
    missing = [k for k in TRAINING_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"--resume {path} is not a training checkpoint (no "
                        f"{', '.join(missing)}); to start a run from its weights, set "
                        f"model.init={path}")
    if len(ckpt["rng"]) != world_size:
        raise UserError(f"--resume {path} was written by {len(ckpt['rng'])} processes; "
                        f"resuming it exactly needs the same number, not {world_size}")
    key = first_nonfinite(ckpt["model"])
    if key is not None:
        raise CheckpointError(f"--resume {path} holds non-finite weights (NaN or inf), first "
                              f"in {key}")
    return ckpt


def nonfinite_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """Name of the first NaN/inf tensor of the model's weights or the optimizer's state."""
    key = first_nonfinite(model.state_dict())
    if key is not None:
        return f"model.{key}"
    for index, state in optimizer.state_dict()["state"].items():
        tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        key = first_nonfinite(tensors)
        if key is not None:
            return f"optimizer.state[{index}].{key}"
    return None
