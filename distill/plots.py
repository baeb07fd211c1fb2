"""Loss-curve PNGs from a run's ``metrics.csv`` (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import csv
from pathlib import Path

from effvit_sam.io import atomic_write

SKIP_COLUMNS = ("step", "lr", "grad_norm", "skipped")


def read_metrics(path: str | Path) -> dict[str, list[float]]:
    """Columns of a ``metrics.csv`` as float lists (empty cells are skipped per column)."""
    with Path(path).open() as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if value not in ("", None):
                columns.setdefault(key, []).append(float(value))
    return columns


def plot_loss_curves(metrics_csv: str | Path, out_png: str | Path, *, title: str = "") -> Path:
    """Plot every loss column against ``step`` (log y) into ``out_png``, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = read_metrics(metrics_csv)
    steps = columns.get("step", [])
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, values in columns.items():
        if key in SKIP_COLUMNS or len(values) != len(steps):
            continue
        ax.plot(steps, values, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(v > 0 for k, vs in columns.items() if k not in SKIP_COLUMNS for v in vs):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out_png = Path(out_png)
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return out_png
