"""A training run's data skips: the SA-1B reader's :class:`~distill.sa1b.SkipStats` summed over
every rank, logged at each log step and at the end, and written to ``run.out_dir/skips.json``.

The counts travel with the batches (``skip_counts`` / ``stream_id`` of each sample, the running
counts of its (rank, worker) stream), so DataLoader workers need no channel back to the trainer.
Batches without them (the teacher-embedding cache of phase 1) leave the tally untouched, and
then no ``skips.json`` is written. Skips after a stream's last yielded sample, or in a dropped
last partial batch, reach only the reader's log.

``skips.json``: ``{"step": N, "samples": {reason: count, ...}, "annotations": {"bad_rle": n}}``
with every reason of :data:`~distill.sa1b.SKIP_REASONS` (samples skipped) and
:data:`~distill.sa1b.ANNOTATION_SKIP_REASONS` (annotations passed over), totals up to step N.
"""

from __future__ import annotations

import logging
from pathlib import Path

from effvit_sam.io import write_json

from .run_dir import SKIPS_NAME
from .sa1b import ANNOTATION_SKIP_REASONS, COUNTED_REASONS, SKIP_REASONS, SkipStats

log = logging.getLogger(__name__)


def sum_totals(per_rank: list[dict[str, int] | None]) -> dict[str, int] | None:
    """Reason-by-reason sum of the ranks' totals; ``None`` if no rank's data carried counts."""
    found = [t for t in per_rank if t is not None]
    if not found:
        return None
    return {reason: sum(t.get(reason, 0) for t in found) for reason in COUNTED_REASONS}


def describe(totals: dict[str, int]) -> str:
    """``"bad_image=2 bad_rle=5"`` (the non-zero reasons), or ``"none"``."""
    return " ".join(f"{k}={v}" for k, v in totals.items() if v) or "none"


class RunSkips:
    """This rank's tally; :meth:`gather` (a collective under DDP) sums it over the ranks."""

    def __init__(self) -> None:
        self._stats = SkipStats()
        self._seen = False
        self.totals: dict[str, int] | None = None
        """All ranks' totals at the last :meth:`gather` (main process; ``None`` before, or when
        the data carries no counts)."""

    def update(self, batch: dict) -> None:
        """Read a collated batch's running counts (every batch, replayed ones included)."""
        if "skip_counts" in batch:
            self._stats.update(batch)
            self._seen = True

    def gather(self, accelerator) -> dict[str, int] | None:
        """Every rank's totals summed (on every rank); every rank must call it at the same
        steps."""
        local = self._stats.totals if self._seen else None
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            per_rank = gather_object([local])
        else:
            per_rank = [local]
        self.totals = sum_totals(per_rank)
        return self.totals

    def write(self, out_dir: Path, step: int) -> None:
        """``skips.json`` with the last gathered totals (main process; nothing without counts)."""
        if self.totals is None:
            return
        write_json(out_dir / SKIPS_NAME, {
            "step": step,
            "samples": {k: self.totals[k] for k in SKIP_REASONS},
            "annotations": {k: self.totals[k] for k in ANNOTATION_SKIP_REASONS}})

    def log_final(self, out_dir: Path) -> None:
        """One line at the end of the run: the totals, a warning when any data was skipped."""
        if self.totals is None:
            return
        level = logging.WARNING if any(self.totals.values()) else logging.INFO
        log.log(level, "data skipped over the run (all ranks): %s (see %s)",
                describe(self.totals), out_dir / SKIPS_NAME)
