"""Tiled "everything" mode: automatic masks for a huge image at native resolution.

The image is cut into the grid of :func:`effvit_sam.tiled.tile_grid`; tiles are read a batch at
a time and encoded in one batched encoder call (``EfficientViTSamPredictor.set_images``); the
automatic mask generator runs on each tile with that embedding (``generate(encoded=...)``); the
masks of all tiles are merged across seams by :func:`effvit_sam.tiled_masks.merge_tile_masks`
(an object cut by a seam becomes one mask, an object seen by two tiles is kept once). Memory
holds one batch of tiles and the bounding-box crops of the masks found, never the whole image.

For very large inputs the work is **resumable**: with a state file, every finished batch's
masks are written to it atomically (:func:`effvit_sam.io.atomic_write`), and a later run with
the same image size, tiling and generator settings skips the tiles already done.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from .errors import UserError
from .io import read_json, write_json
from .masks import mask_to_rle, rle_to_mask
from .tiled import Window, check_tiling, tile_grid
from .tiled_masks import CroppedMask, MergedMask, TileMask, merge_tile_masks
from .tiled_source import PIL_MAX_PIXELS, ImageSource, open_source

logger = logging.getLogger(__name__)

STATE_VERSION = 1

Found = tuple[CroppedMask, float, float]
"""A mask found in a tile: full-frame crop, predicted IoU, stability score."""


class TileSegmenter(Protocol):
    """What finds masks in one tile: encode a batch of tiles, then segment each."""

    def settings(self) -> dict[str, Any]:
        """JSON-able settings that change the masks (a resumed run must match them)."""
        ...

    def encode(self, images: list[np.ndarray]) -> list[Any]:
        """One embedding per ``h x w x 3`` uint8 tile, in one batched call."""
        ...

    def segment(self, image: np.ndarray, encoded: Any, window: Window,
                image_size: tuple[int, int]) -> list[Found]:
        """The non-empty masks of one tile in the full-image frame (``window`` is where the
        tile lies in the ``image_size`` image)."""
        ...


class AutomaticTileSegmenter:
    """SAM's automatic mask generator per tile, on embeddings batched by its own predictor.

    ``generator``: an :class:`effvit_sam.automatic.EfficientViTSamAutomaticMaskGenerator`
    (its public API only: ``predictor.set_images`` / ``images`` and ``generate(encoded=)``).
    """

    def __init__(self, generator) -> None:
        self.generator = generator

    def settings(self) -> dict[str, Any]:
        g = self.generator
        # A fingerprint of the weights, so a resumed run with other weights is refused.
        weights = sum(float(p.detach().flatten()[:4096].double().sum())
                      for p in g.predictor.model.parameters())
        return {"model": type(g.predictor.model).__name__, "weights": round(weights, 6),
                "encoder_size": g.predictor.encoder_size,
                "points": [len(grid) for grid in g.point_grids],
                "pred_iou_thresh": g.pred_iou_thresh,
                "stability_score_thresh": g.stability_score_thresh,
                "stability_score_offset": g.stability_score_offset,
                "box_nms_thresh": g.box_nms_thresh, "crop_n_layers": g.crop_n_layers,
                "min_mask_region_area": g.min_mask_region_area}

    def encode(self, images: list[np.ndarray]) -> list[Any]:
        predictor = self.generator.predictor
        predictor.set_images(images)
        encoded = predictor.images
        predictor.reset_image()
        return encoded

    def segment(self, image: np.ndarray, encoded: Any, window: Window,
                image_size: tuple[int, int]) -> list[Found]:
        out = []
        for record in self.generator.generate(image, encoded=encoded):
            seg = record["segmentation"]
            mask = seg if isinstance(seg, np.ndarray) else rle_to_mask(seg)
            crop = CroppedMask.from_window(mask, window.x0, window.y0, image_size)
            if crop.mask.size:
                out.append((crop, float(record["predicted_iou"]),
                            float(record["stability_score"])))
        return out


def _to_json(found: list[Found]) -> list[dict]:
    return [{"x0": crop.x0, "y0": crop.y0, "crop": mask_to_rle(crop.mask),
             "predicted_iou": iou, "stability_score": stability}
            for crop, iou, stability in found]


def _from_json(items: list[dict], tile: int, image_size: tuple[int, int]) -> list[TileMask]:
    return [TileMask(CroppedMask(rle_to_mask(d["crop"]), int(d["x0"]), int(d["y0"]),
                                 image_size), tile, float(d["predicted_iou"]),
                     float(d["stability_score"]))
            for d in items]


class TiledMaskGenerator:
    """Everything mode over a tile grid (see the module docstring).

    ``segmenter``: an :class:`AutomaticTileSegmenter` (or any :class:`TileSegmenter`);
    ``tile`` / ``overlap``: the grid in pixels; ``batch_size``: tiles per encoder call;
    ``merge_iou``: band IoU at which masks of neighbouring tiles are one object.
    ``tiles_encoded`` counts tiles sent to the encoder by this object.
    """

    def __init__(self, segmenter: TileSegmenter, *, tile: int, overlap: int,
                 batch_size: int = 4, merge_iou: float = 0.5, progress: bool = False) -> None:
        check_tiling(tile, overlap)
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 < merge_iou <= 1.0:
            raise UserError(f"merge_iou must be in (0, 1], got {merge_iou}")
        self.segmenter = segmenter
        self.tile, self.overlap = tile, overlap
        self.batch_size = batch_size
        self.merge_iou = merge_iou
        self.progress = progress
        self.tiles_encoded = 0

    def _settings(self, source: ImageSource) -> dict[str, Any]:
        return {"height": source.height, "width": source.width, "tile": self.tile,
                "overlap": self.overlap, "segmenter": self.segmenter.settings()}

    def _load_state(self, path: Path, settings: dict[str, Any]) -> dict[str, list[dict]]:
        try:
            state = read_json(path)
        except ValueError as err:
            raise UserError(f"resume state {path} is unreadable: {err}") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise UserError(f"resume state {path} is not a version-{STATE_VERSION} state file")
        if state.get("settings") != settings:
            old = state.get("settings") or {}
            differ = sorted(k for k in settings.keys() | old.keys()
                            if settings.get(k) != old.get(k))
            raise UserError(f"resume state {path} was made with other settings ({', '.join(differ)}"
                            " differ); delete it or use the same image and options")
        return state["done"]

    def generate_merged(self, image: np.ndarray | str | Path | ImageSource, *,
                        state_path: str | Path | None = None,
                        max_pixels: int = PIL_MAX_PIXELS) -> list[MergedMask]:
        """The merged masks of ``image`` (array, path or ImageSource), largest first."""
        source = open_source(image, max_pixels=max_pixels)
        try:
            return self._generate(source, state_path)
        finally:
            if source is not image and hasattr(source, "close"):
                source.close()

    def _generate(self, source: ImageSource, state_path: str | Path | None) -> list[MergedMask]:
        size = (source.height, source.width)
        windows = tile_grid(source.height, source.width, self.tile, self.overlap)
        settings = self._settings(source)
        state_path = Path(state_path) if state_path is not None else None
        done: dict[str, list[dict]] = {}
        if state_path is not None and state_path.is_file():
            done = self._load_state(state_path, settings)
            logger.info("resuming from %s: %d of %d tiles done", state_path, len(done),
                        len(windows))
        todo = [i for i in range(len(windows)) if str(i) not in done]
        with tqdm(total=len(windows), initial=len(windows) - len(todo), desc="tiles",
                  unit="tile", disable=not self.progress) as bar:
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start: start + self.batch_size]
                pixels = [source.read(*windows[i].rect) for i in batch]
                encoded = self.segmenter.encode(pixels)
                self.tiles_encoded += len(batch)
                for i, tile_pixels, enc in zip(batch, pixels, encoded, strict=True):
                    masks = self.segmenter.segment(tile_pixels, enc, windows[i], size)
                    done[str(i)] = _to_json(masks)
                    bar.update(1)
                if state_path is not None:
                    write_json(state_path, {"version": STATE_VERSION, "settings": settings,
                                            "done": done}, indent=None)
        per_tile = [_from_json(done[str(i)], i, size) for i in range(len(windows))]
        merged = merge_tile_masks(per_tile, [w.rect for w in windows], merge_iou=self.merge_iou)
        logger.info("%d masks from %d tiles merged into %d objects",
                    sum(map(len, per_tile)), len(windows), len(merged))
        return merged

    def generate(self, image: np.ndarray | str | Path | ImageSource, *,
                 state_path: str | Path | None = None,
                 max_pixels: int = PIL_MAX_PIXELS) -> list[dict[str, Any]]:
        """COCO-style records of the whole image, largest first: ``segmentation`` (compressed
        RLE of the whole image), ``area``, ``bbox`` (whole-pixel XYWH), ``predicted_iou``,
        ``stability_score``, ``tiles`` (indices of the tiles the object was found in)."""
        merged = self.generate_merged(image, state_path=state_path, max_pixels=max_pixels)
        return [merged_record(m) for m in merged]


def merged_record(m: MergedMask) -> dict[str, Any]:
    """The COCO-style record of one merged object (see :meth:`TiledMaskGenerator.generate`)."""
    return {"segmentation": m.rle, "area": m.area, "bbox": m.bbox_xywh,
            "predicted_iou": m.predicted_iou, "stability_score": m.stability_score,
            "tiles": list(m.tiles)}
