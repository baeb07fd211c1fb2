"""Loss-curve PNGs from a run's ``metrics.csv`` (matplotlib's Agg backend: no display needed).

The top panel holds every loss column; when the run validated, a second panel holds the
validation mIoU columns (``val_*``, logged only on the evaluated steps).
"""

from __future__ import annotations

import csv
from pathlib import Path

from effvit_sam.io import atomic_write

SKIP_COLUMNS = ("step", "lr", "grad_norm", "skipped")
VAL_PREFIX = "val_"


def read_metrics(path: str | Path) -> dict[str, list[float]]:
    """Columns of a ``metrics.csv`` as float lists (empty cells are skipped per column)."""
    return {k: [v for _, v in pairs] for k, pairs in read_metric_points(path).items()}


def read_metric_points(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """Per column, its ``(step, value)`` pairs (a column logged on some steps only, such as
    the validation mIoU, gets the pairs of those steps)."""
    with Path(path).open() as f:
        rows = list(csv.DictReader(f))
    points: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        step = float(row["step"])
        for key, value in row.items():
            if key != "step" and value not in ("", None):
                points.setdefault(key, []).append((step, float(value)))
    return points


def plot_loss_curves(metrics_csv: str | Path, out_png: str | Path, *, title: str = "") -> Path:
    """Plot every loss column against ``step`` (log y when all are positive) and, if present,
    the validation mIoU columns in a second panel, into ``out_png`` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = read_metric_points(metrics_csv)
    losses = {k: v for k, v in points.items()
              if k not in SKIP_COLUMNS and not k.startswith(VAL_PREFIX)}
    val = {k: v for k, v in points.items() if k.startswith(VAL_PREFIX)}
    panels = 2 if val else 1
    fig, axes = plt.subplots(panels, 1, figsize=(7, 4 * panels), squeeze=False)
    ax = axes[0][0]
    for key, pairs in losses.items():
        ax.plot(*zip(*pairs, strict=True), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if losses and all(v > 0 for pairs in losses.values() for _, v in pairs):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    if val:
        ax = axes[1][0]
        for key, pairs in val.items():
            ax.plot(*zip(*pairs, strict=True), marker="o", label=key)
        ax.set_xlabel("step")
        ax.set_ylabel("validation mIoU (%)")  # eval.* set, not the held-out one
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out_png = Path(out_png)
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return out_png
