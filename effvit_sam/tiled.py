"""``TiledSamPredictor``: point and box prompts on images far larger than the encoder's input.

Resizing a 20000 x 20000 wafer scan to 1024 pixels loses every small defect. Here each prompt
is served by encoding one **window** of the image at native resolution (a tile of the grid of
:func:`tile_grid`, the encoder's own frame by default) with the plain
:class:`~effvit_sam.predictor.EfficientViTSamPredictor`, so the preprocessing, prompt mapping and
mask upscaling are exactly the predictor's. Window embeddings are kept in an LRU cache bounded
in bytes; prompts in the same tile reuse it. A prompt whose extent does not fit a tile is
served from a window shrunk by the smallest integer ``scale`` that fits it, and the result
says so.

Frames: prompts and results are in the **full-image frame** (original pixels of the whole
image, ``(x, y)``); a window's pixels are ``[y0, y1) x [x0, x1)`` of it. Masks come back as
:class:`~effvit_sam.tiled_masks.CroppedMask` (bounding-box crop + offset, or a COCO RLE of the
whole image), never as a full-size array unless asked (``CroppedMask.to_dense``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import geometry
from .errors import UserError
from .predictor import EfficientViTSamPredictor, EncodedImage
from .predictor_inputs import as_boxes, as_points
from .tiled_masks import CroppedMask, Rect
from .tiled_source import PIL_MAX_PIXELS, ImageSource, open_source, read_reduced

MIN_TILE = 64
DEFAULT_CACHE_BYTES = 256 << 20
"""Tile embeddings kept by default: 64 L0/XL windows (256 x 64 x 64 float32 = 4 MiB each)."""


@dataclass(frozen=True)
class Window:
    """A window of the full image, ``[y0, y1) x [x0, x1)``, encoded shrunk by ``scale``
    (an integer; 1 = native resolution)."""

    x0: int
    y0: int
    x1: int
    y1: int
    scale: int = 1

    @property
    def rect(self) -> Rect:
        return self.x0, self.y0, self.x1, self.y1

    @property
    def size(self) -> tuple[int, int]:
        """``(h, w)`` at native resolution."""
        return self.y1 - self.y0, self.x1 - self.x0


def check_tiling(tile: int, overlap: int) -> None:
    """Raise :class:`UserError` unless ``MIN_TILE <= tile`` and ``0 <= overlap < tile``."""
    if tile < MIN_TILE:
        raise UserError(f"tile must be at least {MIN_TILE} pixels, got {tile}")
    if not 0 <= overlap < tile:
        raise UserError(f"overlap must be in [0, tile) = [0, {tile}), got {overlap}")


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]  # the last tile ends flush with the image edge


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[Window]:
    """Row-major ``tile x tile`` windows covering an ``height x width`` image, neighbours
    sharing ``overlap`` pixels or more (the last row/column is moved flush with the edge);
    an image side shorter than ``tile`` gets one window of its length."""
    check_tiling(tile, overlap)
    stride = tile - overlap
    return [Window(x0, y0, min(x0 + tile, width), min(y0 + tile, height))
            for y0 in _starts(height, tile, stride) for x0 in _starts(width, tile, stride)]


class TileEmbeddingCache:
    """LRU cache of window embeddings holding at most ``max_bytes`` of feature tensors.

    ``hits`` / ``misses`` / ``evictions`` count lookups and drops; an embedding larger than
    the whole budget is never stored.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[Window, EncodedImage] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def size_of(encoded: EncodedImage) -> int:
        return encoded.features.element_size() * encoded.features.numel()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Window) -> bool:
        return key in self._items

    def get(self, key: Window) -> EncodedImage | None:
        encoded = self._items.get(key)
        if encoded is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return encoded

    def put(self, key: Window, encoded: EncodedImage) -> None:
        size = self.size_of(encoded)
        if size > self.max_bytes or key in self._items:
            return
        self._items[key] = encoded
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= self.size_of(old)
            self.evictions += 1

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0


@dataclass(frozen=True)
class TiledPrediction:
    """Masks for one prompt set, in the full-image frame.

    ``masks``: C candidates (3 with ``multimask_output``, else 1); ``scores``: C predicted IoUs;
    ``low_res_logits``: ``C x 256 x 256`` in the window's prompt frame; ``window``: the window
    encoded (``window.scale > 1`` when the prompt did not fit a tile at native resolution: the
    masks then have ``scale``-pixel steps); ``cache_hit``: its embedding came from the cache.
    """

    masks: list[CroppedMask]
    scores: np.ndarray
    low_res_logits: np.ndarray
    window: Window
    cache_hit: bool

    @property
    def scale(self) -> int:
        return self.window.scale

    def records(self) -> list[dict]:
        """One COCO-style record per candidate: whole-image RLE, area, whole-pixel bbox."""
        return [{"segmentation": m.to_rle(), "area": m.area, "bbox": m.bbox_xywh,
                 "predicted_iou": float(s), "candidate": j, "window": list(self.window.rect),
                 "scale": self.window.scale}
                for j, (m, s) in enumerate(zip(self.masks, self.scores, strict=True))]


class TiledSamPredictor:
    """Prompts on a huge image, each decoded against a native-resolution window's embedding.

    ``model``: an EfficientViTSam / SAM model, or an :class:`EfficientViTSamPredictor` to share
    (``device`` and ``fast`` apply only when a model is given). ``tile``: window side in pixels
    (default: the encoder's input size, so windows are seen at native resolution); ``overlap``:
    pixels shared by neighbouring grid tiles (default ``tile // 8``); ``cache_bytes``: budget of
    the embedding cache.
    """

    def __init__(self, model: nn.Module | EfficientViTSamPredictor, *, tile: int | None = None,
                 overlap: int | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 device: str | torch.device | None = None, fast: bool = True) -> None:
        if isinstance(model, EfficientViTSamPredictor):
            self.predictor = model
        else:
            self.predictor = EfficientViTSamPredictor(model, device=device, fast=fast)
        self.tile = int(tile if tile is not None else self.predictor.encoder_size)
        self.overlap = int(overlap if overlap is not None else self.tile // 8)
        check_tiling(self.tile, self.overlap)
        self.cache = TileEmbeddingCache(cache_bytes)
        self.source: ImageSource | None = None
        self._owns_source = False
        self.windows: list[Window] = []

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image set."""
        if self.source is None:
            raise UserError("no image is set: call set_image(...) before predicting")
        return self.source.height, self.source.width

    def set_image(self, image: np.ndarray | str | Path | ImageSource, *,
                  max_pixels: int = PIL_MAX_PIXELS) -> None:
        """Use ``image``: an ``H x W x 3`` uint8 array, a path (TIFF/BigTIFF read lazily, other
        formats by PIL up to ``max_pixels``) or an ImageSource. Nothing is encoded yet."""
        source = open_source(image, max_pixels=max_pixels)
        self.close()
        self.source = source
        self._owns_source = source is not image  # opened here, so closed here
        self.cache.clear()
        self.windows = tile_grid(source.height, source.width, self.tile, self.overlap)

    def close(self) -> None:
        """Close the image file opened by :meth:`set_image` (a source passed in stays open)."""
        close = getattr(self.source, "close", None)
        if close is not None and self._owns_source:
            close()
        self.source = None
        self.cache.clear()

    def window_for(self, rect: Rect) -> Window:
        """The window serving a prompt whose extent is ``rect`` (full frame).

        The grid tile that contains the extent with the widest margin to its inner edges
        (image borders need no margin), so prompts of one tile share its embedding; else, if the
        extent fits a tile, a tile-sized window centred on it; else a window shrunk by the
        smallest integer scale whose tile fits the extent, centred on it.
        """
        height, width = self.image_size
        x0, y0, x1, y1 = rect
        best, best_margin = None, -1.0
        for w in self.windows:
            if w.x0 <= x0 and w.y0 <= y0 and x1 <= w.x1 and y1 <= w.y1:
                margins = [x0 - w.x0 if w.x0 > 0 else math.inf,
                           y0 - w.y0 if w.y0 > 0 else math.inf,
                           w.x1 - x1 if w.x1 < width else math.inf,
                           w.y1 - y1 if w.y1 < height else math.inf]
                if min(margins) > best_margin:
                    best, best_margin = w, min(margins)
        if best is not None:
            return best
        scale = max(1, math.ceil(max(x1 - x0, y1 - y0) / self.tile))
        side = self.tile * scale

        def place(lo: int, hi: int, length: int) -> tuple[int, int]:
            if length <= side:
                return 0, length
            start = min(max(0, (lo + hi) // 2 - side // 2), length - side)
            return start, start + side

        wx0, wx1 = place(x0, x1, width)
        wy0, wy1 = place(y0, y1, height)
        return Window(wx0, wy0, wx1, wy1, scale)

    def encode(self, window: Window) -> tuple[EncodedImage, bool]:
        """The window's embedding (from the cache, or encoded and cached) and whether it hit."""
        encoded = self.cache.get(window)
        if encoded is not None:
            return encoded, True
        pixels = read_reduced(self.source, window.x0, window.y0, window.x1, window.y1,
                              window.scale)
        self.predictor.set_image(pixels)
        encoded = self.predictor.images[0]
        self.predictor.reset_image()
        self.cache.put(window, encoded)
        return encoded, False

    @torch.inference_mode()
    def predict(self, points=None, labels=None, box=None, *,
                multimask_output: bool = True) -> TiledPrediction:
        """Masks for one prompt set: ``points`` ``N x 2`` (x, y) and/or one XYXY ``box``, in
        full-image pixels; ``labels`` ``N`` (1 foreground, 0 background; default all 1).

        The window is chosen by :meth:`window_for` from the extent of all prompts; decoding is
        the plain predictor's on that window (prompts shifted into it, divided by its scale).
        """
        size = self.image_size
        if points is None and box is None:
            raise ValueError("give at least one prompt: points or box")
        if points is None and labels is not None:
            raise ValueError("labels given without points")
        corners = []
        if points is not None:
            points, labels = as_points(points, labels, size)
            if points.ndim != 2:
                raise ValueError(f"points must be N x 2 (one prompt set), got {points.shape}")
            corners.append(points)
        if box is not None:
            box = as_boxes(box, size)
            if box.ndim != 1:
                raise ValueError(f"box must be one XYXY box, got shape {box.shape}")
            corners.append(box.reshape(2, 2))
        xy = np.concatenate(corners)
        # The pixels the prompts touch (a point on the right/bottom border is in the last one).
        far = np.array([size[1], size[0]])
        lo = np.clip(np.floor(xy.min(0)), 0, far - 1).astype(int)
        hi = np.clip(np.ceil(xy.max(0)), lo + 1, far).astype(int)
        rect = (int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))
        window = self.window_for(rect)
        encoded, hit = self.encode(window)
        predictor, s = self.predictor, window.scale
        offset = np.array([window.x0, window.y0], dtype=np.float64)
        coords_t = labels_t = box_t = None
        if points is not None:
            local, labs = as_points((points - offset) / s, labels, encoded.original_size)
            coords_t = torch.as_tensor(np.array(geometry.apply_coords(
                local[None], encoded.original_size, predictor.prompt_frame)),
                dtype=torch.float, device=predictor.device)
            labels_t = torch.as_tensor(np.array(labs[None]), dtype=torch.int,
                                       device=predictor.device)
        if box is not None:
            local_box = as_boxes((box.reshape(2, 2) - offset).reshape(4) / s,
                                 encoded.original_size)
            box_t = torch.as_tensor(np.array(geometry.apply_boxes(
                local_box[None], encoded.original_size, predictor.prompt_frame)),
                dtype=torch.float, device=predictor.device)
        low_res, scores = predictor.decode_low_res(encoded, coords_t, labels_t, box_t, None,
                                                   multimask_output)
        masks = predictor.upscale(encoded, low_res)[0].cpu().numpy()
        return TiledPrediction([self._to_full_frame(m, window) for m in masks],
                               scores[0].cpu().numpy(), low_res[0].cpu().numpy(), window, hit)

    def _to_full_frame(self, mask: np.ndarray, window: Window) -> CroppedMask:
        """A window mask (``ceil(h / scale) x ceil(w / scale)``) as a full-frame crop; a shrunk
        window's pixels stand for ``scale x scale`` native pixels (clipped to the window)."""
        crop = CroppedMask.from_window(mask, 0, 0, self.image_size)
        s = window.scale
        if s == 1 or crop.mask.size == 0:
            return CroppedMask(crop.mask, window.x0 + crop.x0, window.y0 + crop.y0,
                               self.image_size)
        x0, y0 = window.x0 + crop.x0 * s, window.y0 + crop.y0 * s
        native = np.repeat(np.repeat(crop.mask, s, 0), s, 1)
        return CroppedMask(np.ascontiguousarray(native[: window.y1 - y0, : window.x1 - x0]),
                           x0, y0, self.image_size)
