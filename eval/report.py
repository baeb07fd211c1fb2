"""Reporting: a printed table, the JSON record of a run (written atomically), a README row."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from effvit_sam.io import atomic_write


def file_sha256(path: str | Path | None) -> str | None:
    """Hex SHA-256 of a file (the checkpoint a run used), ``None`` without one."""
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


CATEGORIES_SHOWN = 8
"""Categories the printed table names (the report's JSON holds them all)."""


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _mode(settings: dict) -> str:
    """The mode, with the box noise when there was any."""
    noise = settings.get("box_noise")
    return f"{settings['mode']} (noise {noise:g})" if noise else settings["mode"]


def format_table(settings: dict, summary: dict) -> str:
    """A plain-text table of every metric, headed by what was evaluated."""
    head = (f"{settings['model']} | {settings['dataset']} | {_mode(settings)} | "
            f"{summary['num_images']} images")
    if "num_instances" in summary:
        head += f" | {summary['num_instances']['all']} instances"
    if "num_detections" in summary:
        head += f" | {summary['num_detections']} detections"
    width = max(len(k) for k in summary["metrics"])
    lines = [head, "-" * len(head)]
    lines += [f"{k:<{width}}  {_fmt(v):>6}" for k, v in summary["metrics"].items()]
    if summary.get("by_category"):
        worst = list(summary["by_category"].items())
        last = list(worst[0][1])[-1]
        shown = ", ".join(f"{name} {_fmt(row[last])} ({row['count']})"
                          for name, row in worst[:CATEGORIES_SHOWN])
        hidden = len(worst) - CATEGORIES_SHOWN
        more = f", ... {hidden} more" if hidden > 0 else ""
        lines.append(f"by category, worst first ({last}, instances): {shown}{more}")
    skipped = {k: n for k, n in summary["skipped"].items() if n}
    if skipped or summary["failed_images"]:
        reasons = ", ".join(f"{k} {n}" for k, n in skipped.items()) or "none"
        lines.append(f"skipped (bad data, not scored): {reasons}; "
                     f"{len(summary['failed_images'])} unreadable images")
    return "\n".join(lines)


def markdown_row(settings: dict, summary: dict) -> str:
    """``| model | dataset | mode | metric=value ... |`` for the README's results table."""
    metrics = " · ".join(f"{k} {_fmt(v)}" for k, v in summary["metrics"].items())
    return f"| {settings['model']} | {settings['dataset']} | {_mode(settings)} | {metrics} |"


def write_report(path: str | Path, settings: dict, summary: dict) -> dict:
    """Write ``{"settings": ..., **summary}`` as JSON, atomically; returns what was written."""
    payload = {"settings": settings, **summary, "markdown_row": markdown_row(settings, summary)}
    text = json.dumps(payload, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return payload
