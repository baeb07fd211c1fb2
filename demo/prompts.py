"""Clicks to SAM prompts: the demo's pure, browser-free prompt bookkeeping.

All coordinates here are in the **original frame**: ``(x, y)`` pixels of the image the user
uploaded, which is also the frame of the clickable overlay (it is drawn at the original size).
The predictor maps them to SAM's prompt frame through :mod:`effvit_sam.geometry`.

A :class:`Prompts` value is immutable; every click returns a new one, so "undo" is simply going
back to the previous value (see :class:`PromptHistory`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

Mode = Literal["point", "box", "everything"]
MODES: tuple[str, ...] = ("point", "box", "everything")

FOREGROUND = 1
BACKGROUND = 0


@dataclass(frozen=True)
class Point:
    """A click ``(x, y)`` in original-image pixels; ``label`` 1 = foreground, 0 = background."""

    x: float
    y: float
    label: int = FOREGROUND


@dataclass(frozen=True)
class Box:
    """An XYXY box in original-image pixels with ``x0 <= x1`` and ``y0 <= y1``."""

    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def from_corners(cls, a: tuple[float, float], b: tuple[float, float]) -> Box:
        """The box spanned by two opposite corners clicked in any order."""
        return cls(min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1]))

    def as_array(self) -> np.ndarray:
        """``4`` float32 XYXY."""
        return np.array([self.x0, self.y0, self.x1, self.y1], dtype=np.float32)


@dataclass(frozen=True)
class Prompts:
    """What the user has clicked on one image.

    ``points`` are point prompts; ``box`` the one box prompt (SAM decodes one box per mask, so a
    new box replaces the old one); ``corner`` the first corner of a box still waiting for its
    second click.
    """

    points: tuple[Point, ...] = ()
    box: Box | None = None
    corner: tuple[float, float] | None = None

    @property
    def is_empty(self) -> bool:
        return not self.points and self.box is None and self.corner is None

    @property
    def decodable(self) -> bool:
        """True when there is something the decoder can use (a pending corner alone is not)."""
        return bool(self.points) or self.box is not None


def check_click(x: float, y: float, image_size: tuple[int, int]) -> tuple[float, float]:
    """Validate a click against an ``(H, W)`` image; returns it as floats.

    Raises ``ValueError`` for a click outside the image (a stale click on a previous, larger
    image, or a hand-made API call).
    """
    h, w = image_size
    x, y = float(x), float(y)
    if not (np.isfinite(x) and np.isfinite(y)):
        raise ValueError(f"click coordinates must be finite, got ({x}, {y})")
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f"click ({x:g}, {y:g}) lies outside the {w}x{h} image")
    return x, y


def add_click(prompts: Prompts, x: float, y: float, *, mode: str, label: int,
              image_size: tuple[int, int]) -> Prompts:
    """Apply one click in ``mode`` ("point" or "box") and return the new prompts.

    point: appends a point with ``label`` (1 foreground, 0 background).
    box: the first click stores a pending corner, the second completes the box (replacing any
    earlier box; points are kept, since SAM accepts a box and points together).
    """
    x, y = check_click(x, y, image_size)
    if mode == "point":
        if label not in (FOREGROUND, BACKGROUND):
            raise ValueError(f"point label must be 1 (foreground) or 0 (background), got {label}")
        return replace(prompts, points=prompts.points + (Point(x, y, int(label)),))
    if mode == "box":
        if prompts.corner is None:
            return replace(prompts, corner=(x, y))
        box = Box.from_corners(prompts.corner, (x, y))
        if box.x1 - box.x0 < 1 or box.y1 - box.y0 < 1:
            # A zero-area box gives the decoder nothing to go on; keep waiting for a real corner.
            return prompts
        return replace(prompts, box=box, corner=None)
    raise ValueError(f"clicks add prompts only in 'point' or 'box' mode, got {mode!r}")


def to_predictor_inputs(prompts: Prompts) -> dict[str, np.ndarray | None]:
    """Keyword arguments for ``EfficientViTSamPredictor.predict``.

    Returns ``points`` ``N x 2`` float32 (x, y), ``labels`` ``N`` int64 (both ``None`` without
    points) and ``boxes`` ``4`` float32 XYXY or ``None``; all in original-image pixels.
    """
    if not prompts.decodable:
        raise ValueError("no prompt to decode: click a point or finish a box first")
    points = labels = None
    if prompts.points:
        points = np.array([[p.x, p.y] for p in prompts.points], dtype=np.float32)
        labels = np.array([p.label for p in prompts.points], dtype=np.int64)
    boxes = prompts.box.as_array() if prompts.box is not None else None
    return {"points": points, "labels": labels, "boxes": boxes}


class PromptHistory:
    """The current :class:`Prompts` plus the earlier values, for undo.

    The stack is bounded (``max_undo``) so a long session cannot grow it without limit; the
    oldest states are forgotten first.
    """

    def __init__(self, *, max_undo: int = 100) -> None:
        if max_undo < 1:
            raise ValueError(f"max_undo must be at least 1, got {max_undo}")
        self.max_undo = max_undo
        self.current = Prompts()
        self._past: list[Prompts] = []

    def push(self, prompts: Prompts) -> bool:
        """Make ``prompts`` current; returns False (and records nothing) if nothing changed."""
        if prompts == self.current:
            return False
        self._past.append(self.current)
        del self._past[: -self.max_undo]
        self.current = prompts
        return True

    def undo(self) -> bool:
        """Go back one step; returns False when there is nothing to undo."""
        if not self._past:
            return False
        self.current = self._past.pop()
        return True

    def clear(self) -> None:
        """Drop every prompt (clearing is itself undoable, like in an editor)."""
        self.push(Prompts())

    def __len__(self) -> int:
        return len(self._past)
