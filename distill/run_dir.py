"""A run's output folder (``run.out_dir``): what a run writes there and the rules for starting in
one.

A run never silently writes over another: a folder that already holds files is refused unless
the run continues it (``--resume``) or starts it again (``--overwrite``, which deletes the old
run's own files and keeps anything else). Temporary files that a killed run left behind
(:func:`effvit_sam.io.atomic_write`'s ``.NAME.RANDOM.tmp``, empty or partial) are removed and
logged whenever a run starts or resumes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from effvit_sam.errors import UserError
from effvit_sam.io import TEMP_SUFFIX

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.csv"
LOSS_PLOT_NAME = "loss.png"
PRETRAINED_DIR = "pretrained"
PRETRAINED_BEST_DIR = "pretrained_best"
TENSORBOARD_DIR = "tensorboard"
SKIPS_NAME = "skips.json"
KEYS_GLOB = "keys-rank*.txt"
RUN_FILES = (CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, LOSS_PLOT_NAME, PRETRAINED_DIR,
             PRETRAINED_BEST_DIR, TENSORBOARD_DIR, SKIPS_NAME)
"""Everything a run writes into ``run.out_dir``, besides ``keys-rank*.txt`` (``run.log_keys``)."""


class OutDirError(UserError):
    """``run.out_dir`` holds files and neither ``--resume`` nor ``--overwrite`` was given."""


def stale_temp_files(out_dir: Path) -> list[Path]:
    """``atomic_write`` leftovers (``.NAME.RANDOM.tmp``) in ``out_dir`` and its ``pretrained/``."""
    found = []
    for folder in (out_dir, out_dir / PRETRAINED_DIR, out_dir / PRETRAINED_BEST_DIR):
        if folder.is_dir():
            found += [p for p in folder.glob(f".*.*{TEMP_SUFFIX}")
                      if p.is_file() and p.name.count(".") >= 3]
    return sorted(found)


def remove_stale_temp_files(out_dir: Path) -> list[Path]:
    """Delete :func:`stale_temp_files` (a killed run's; no live run writes here) and log them."""
    stale = stale_temp_files(out_dir)
    for path in stale:
        log.warning("removing %s (%d bytes), a temporary file left by a killed run", path,
                    path.stat().st_size)
        path.unlink()
    return stale


def run_entries(out_dir: Path) -> list[Path]:
    """The entries of ``out_dir`` that a run wrote (see :data:`RUN_FILES`)."""
    entries = [out_dir / name for name in RUN_FILES if (out_dir / name).exists()]
    return sorted(entries + list(out_dir.glob(KEYS_GLOB)) + stale_temp_files(out_dir))


def prepare_out_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Make ``out_dir`` ready for a run, or raise :class:`OutDirError`.

    Empty or missing: created. Otherwise, with ``resume``: stale temporary files removed (the
    rest is the run being continued); with ``overwrite``: the old run's files
    (:func:`run_entries`) deleted, other files kept; with neither: refused.
    """
    if resume and overwrite:
        raise UserError("--resume continues the run in run.out_dir and --overwrite deletes "
                        "it: pass one of them")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutDirError(f"run.out_dir {out_dir} is a file, not a folder")
    existing = sorted(out_dir.iterdir()) if out_dir.is_dir() else []
    if existing and resume:
        remove_stale_temp_files(out_dir)
    elif existing and overwrite:
        for path in run_entries(out_dir):
            log.warning("--overwrite: deleting %s", path)
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        kept = sorted(set(out_dir.iterdir()))
        if kept:
            log.warning("--overwrite kept %d entries of %s that no run writes: %s", len(kept),
                        out_dir, ", ".join(p.name for p in kept))
    elif existing:
        shown = ", ".join(p.name for p in existing[:5])
        more = f" (+{len(existing) - 5} more)" if len(existing) > 5 else ""
        raise OutDirError(f"run.out_dir {out_dir} is not empty ({shown}{more}): pass --resume "
                          "auto to continue the run there, or --overwrite to start it again "
                          "(deletes its checkpoint, metrics and pretrained/)")
    out_dir.mkdir(parents=True, exist_ok=True)
