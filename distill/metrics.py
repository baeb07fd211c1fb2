"""A run's ``metrics.csv`` (always) and TensorBoard events (optional), written by the main
process.

Rows are appended, never rewritten: a step costs one ``write`` of its row, not a rewrite of the
whole file. On resume the file is cut back once, atomically, to the rows of the steps up to
the checkpoint (what the killed run logged after it is recomputed). The header is fixed by the
first rows; a key that first appears later (rare: it needs a step whose loss parts differ)
rewrites the file once with the wider header. Missing cells are empty.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from effvit_sam.io import atomic_write

from .run_dir import METRICS_NAME, TENSORBOARD_DIR


def _csv_text(fields: list[str], rows: list[dict], *, header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class MetricsLog:
    """Append-only ``out_dir/metrics.csv``; ``resume_step`` > 0 truncates it to that step."""

    def __init__(self, out_dir: Path, *, tensorboard: bool, resume_step: int) -> None:
        self.path = out_dir / METRICS_NAME
        self.fields: list[str] = []
        if self.path.is_file():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                kept = [r for r in reader if resume_step and int(r["step"]) <= resume_step]
                fields = list(reader.fieldnames or [])
            if kept:
                self.fields = fields
                self._rewrite(kept)
            else:
                self.path.unlink()
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / TENSORBOARD_DIR))

    def _rewrite(self, rows: list[dict]) -> None:
        text = _csv_text(self.fields, rows, header=True)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text, newline=""))

    def add(self, rows: list[dict]) -> None:
        """Append ``rows`` (dicts with ``step`` and float values) to the CSV and TensorBoard."""
        if not rows:
            return
        new = [k for r in rows for k in r if k not in self.fields]
        if new and self.fields:  # a wider header: rewrite once, old rows with empty cells
            with self.path.open(newline="") as f:
                old = list(csv.DictReader(f))
            self.fields += list(dict.fromkeys(new))
            self._rewrite(old)
        elif new:  # validation columns (only on evaluated steps) after the per-step ones
            self.fields = sorted(dict.fromkeys(new), key=lambda k: k.startswith("val_"))
        header = not self.path.is_file()
        with self.path.open("a", newline="") as f:
            f.write(_csv_text(self.fields, rows, header=header))
        if self.writer is not None:
            for row in rows:
                for key, value in row.items():
                    if key != "step":
                        self.writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
