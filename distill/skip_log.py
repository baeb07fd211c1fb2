"""Data skips: the SA-1B reader's skip vocabulary and running counts (:class:`SkipStats`), and a
training run's totals summed over every rank, logged at each log step and at the end, and
written to ``run.out_dir/skips.json``.

The counts travel with the batches (``skip_counts`` / ``stream_id`` of each sample, the running
counts of its (rank, worker) stream), so DataLoader workers need no channel back to the trainer.
Batches without them (the teacher-embedding cache of phase 1) leave the tally untouched, and
then no ``skips.json`` is written. Skips in a dropped last partial batch reach only the
reader's log.

``skips.json``: ``{"step": N, "samples": {reason: count, ...}, "annotations": {"bad_rle": n}}``
with every reason of :data:`SKIP_REASONS` (samples skipped) and
:data:`ANNOTATION_SKIP_REASONS` (annotations passed over), totals up to step N.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from effvit_sam.io import write_json

from .run_dir import SKIPS_NAME

log = logging.getLogger(__name__)

SKIP_REASONS = ("shard_error", "missing_member", "bad_image", "bad_json", "no_annotations",
                "size_mismatch")
"""Why a sample can be skipped (counts of samples)."""
ANNOTATION_SKIP_REASONS = ("bad_rle",)
"""Why one annotation of a kept or skipped sample can be passed over (counts of annotations).
Every ``skip_counts`` dict has the keys of both tuples."""
COUNTED_REASONS = SKIP_REASONS + ANNOTATION_SKIP_REASONS


class SkipStats:
    """Totals of skipped samples across all (rank, worker) streams, read from the samples.

    Counters in DataLoader worker processes never reach the main process, so every sample
    carries its stream's running counts; feed samples or collated batches to :meth:`update` and
    read :attr:`totals`. The reader holds each sample back until the next one is decoded
    (:func:`stamped_last`), so a stream's last sample carries its final counts, skips after it
    included; skips in a dropped last partial batch reach only the log.
    """

    def __init__(self) -> None:
        self._latest: dict[str, Counter] = {}

    def update(self, sample_or_batch: dict) -> None:
        streams, counts = sample_or_batch["stream_id"], sample_or_batch["skip_counts"]
        if isinstance(streams, str):
            streams, counts = [streams], [counts]
        for stream, count in zip(streams, counts, strict=True):
            latest = self._latest.setdefault(stream, Counter())
            for reason, n in count.items():  # running counts only grow within a stream
                latest[reason] = max(latest[reason], n)

    @property
    def totals(self) -> dict[str, int]:
        total = Counter({reason: 0 for reason in COUNTED_REASONS})
        for latest in self._latest.values():
            total.update(latest)
        return dict(total)


def stamped_last(samples: Iterator[dict], counts: Counter) -> Iterator[dict]:
    """``samples`` one behind, each given ``skip_counts`` = ``counts`` (the stream's live
    counter) when it is passed on: a sample waits until the next one has been decoded (or the
    stream has ended), so the counts it carries include the skips read after it."""
    held = None
    for sample in samples:
        if held is not None:
            yield {**held, "skip_counts": dict(counts)}
        held = sample
    if held is not None:
        yield {**held, "skip_counts": dict(counts)}


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
