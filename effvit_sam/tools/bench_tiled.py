"""``effvit-sam bench-tiled``: tiled prompting and everything mode on made wafer scans.

    effvit-sam bench-tiled --workdir /tmp/bench --size 20000 --everything-size 8192

Part ``prompts``: a ``--size`` square wafer (tiled BigTIFF, made once in ``--workdir``), 10
prompts spread over it (8 points on defects, a defect box, a box over a whole die, larger than
a tile) through :class:`effvit_sam.tiled.TiledSamPredictor`; for each prompt whether the mask
equals the plain predictor's on the same window, done by hand; the process's peak RSS.

Part ``everything``: an ``--everything-size`` wafer. (1) The seam merge with an oracle
segmenter that returns the exact ground-truth masks of each tile (a random-weight model finds
no real objects, so this checks the merge logic, not a model): the share of seam-crossing
objects recovered as one mask with IoU >= 0.9. (2) Tiles/s of the automatic generator per tile
(``--model``, random weights unless ``--checkpoint``) with batched tile encoding vs one tile at
a time, over the first ``--throughput-tiles`` tiles, and of the encoder alone. (3) Peak RSS.
(4) With ``--seam-model``: the model's everything mode over the whole wafer and the share of
seam-crossing objects it recovers as one mask, per category (a trained model: a random-weight
one recovers nothing), the share of all objects, and how many of its masks match no object at
IoU 0.5 (:mod:`.tiled_recall`), with an overview picture (``--overview``).

Each part runs in a child process of its own, so each peak RSS (``VmHWM``) is that part's.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..tiled import Window, tile_grid
from ..tiled_masks import CroppedMask, intersect
from .tiled_recall import FOUND_IOU, recall, unmatched

PROG = "effvit-sam bench-tiled"


def peak_rss_mb() -> float:
    """This process's peak resident set size (``VmHWM`` of ``/proc/self/status``), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (not Linux?)")


class GroundTruthSegmenter:
    """An oracle :class:`~effvit_sam.tiled_everything.TileSegmenter`: each tile's masks are the
    ground-truth objects clipped to the tile, exactly. ``encode_calls`` / ``tiles_encoded``
    count the batches and tiles it was asked to encode."""

    def __init__(self, objects: list[CroppedMask]) -> None:
        self.objects = objects
        self.encode_calls = self.tiles_encoded = 0

    def settings(self) -> dict[str, Any]:
        return {"oracle": len(self.objects)}

    def encode(self, images: list[np.ndarray]) -> list[None]:
        self.encode_calls += 1
        self.tiles_encoded += len(images)
        return [None] * len(images)

    def segment(self, image: np.ndarray, encoded: None, window: Window,
                image_size: tuple[int, int]) -> list[tuple[CroppedMask, float, float]]:
        found = []
        for obj in self.objects:
            if intersect(obj.rect, window.rect) is None:
                continue
            crop = CroppedMask.from_window(obj.region(window.rect), window.x0, window.y0,
                                           image_size)
            if crop.mask.size:
                found.append((crop, 1.0, 1.0))
        return found


def _wafer(workdir: Path, size: int, tile: int, overlap: int, seed: int):
    """The wafer object and its TIFF in ``workdir`` (written unless already there)."""
    from distill.wafer import Wafer

    wafer = Wafer(size, size, seed=seed, seam_tile=tile, seam_overlap=overlap)
    path = workdir / f"wafer_{size}_s{seed}_t{tile}_o{overlap}.tif"
    if not path.is_file():
        t = time.perf_counter()
        wafer.write_tiff(path)
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
    return wafer, path


def _model(args: argparse.Namespace):
    from ..weights import resolve_model

    # timings and equality need no trained weights: random ones unless --checkpoint
    model, weights = resolve_model(args.model, checkpoint=args.checkpoint,
                                   random_weights=args.checkpoint is None)
    print(weights.description)
    return model


def _prompts(wafer, count: int = 10) -> list[dict]:
    """``count - 2`` points on defects spread over a 4-column grid of regions (8: 4 x 2), a
    defect box and a box over a whole die."""
    if count < 3:
        raise UserError(f"--prompts must be >= 3 (points, a defect box, a die box), got {count}")
    h, w = wafer.height, wafer.width
    prompts: list[dict] = []
    for k in range(count - 2):
        rows = -(-(count - 2) // 4)
        ax, ay = (k % 4 + 0.5) * w / 4, (k // 4 + 0.5) * h / rows
        d = min((d for d in wafer.defects if d.kind != "scratch"),
                key=lambda d: math.hypot(d.cx - ax, d.cy - ay))
        prompts.append({"points": [[d.cx, d.cy]]})
    d = max(wafer.defects, key=lambda d: d.radius)
    x0, y0, x1, y1 = d.rect(h, w)
    prompts.append({"box": [max(0, x0 - 4), max(0, y0 - 4), min(w, x1 + 4), min(h, y1 + 4)]})
    x0, y0, x1, y1 = wafer.layout.dies(h, w)[len(wafer.layout.dies(h, w)) // 2]
    prompts.append({"box": [x0, y0, x1, y1]})
    return prompts


def run_prompts(args: argparse.Namespace) -> dict:
    from ..tiled import TiledSamPredictor
    from ..tiled_source import read_reduced

    workdir = Path(args.workdir)
    predictor = TiledSamPredictor(_model(args), tile=args.tile, overlap=args.overlap,
                                  fast=not args.no_fast)
    wafer, path = _wafer(workdir, args.size, predictor.tile, predictor.overlap, args.seed)
    predictor.set_image(path)
    plain = predictor.predictor  # the plain EfficientViTSamPredictor, run by hand below
    rows = []
    for prompt in _prompts(wafer, args.prompts):
        t = time.perf_counter()
        result = predictor.predict(**prompt, multimask_output=True)
        seconds = time.perf_counter() - t
        win, s = result.window, result.scale
        plain.set_image(read_reduced(predictor.source, *win.rect, s))
        offset = np.array([win.x0, win.y0], dtype=np.float64)
        if "points" in prompt:
            masks, scores, _ = plain.predict((np.asarray(prompt["points"]) - offset) / s)
        else:
            box = (np.asarray(prompt["box"], dtype=np.float64).reshape(2, 2) - offset) / s
            masks, scores, _ = plain.predict(boxes=box.reshape(4))
        equal = bool(np.array_equal(scores, result.scores))
        for mask, got in zip(masks, result.masks, strict=True):
            native = np.repeat(np.repeat(mask, s, 0), s, 1)[: win.y1 - win.y0, : win.x1 - win.x0]
            equal &= bool(np.array_equal(native, got.region(win.rect)))
        best = int(np.argmax(result.scores))
        rows.append({"prompt": prompt, "window": list(win.rect), "scale": s,
                     "cache_hit": result.cache_hit, "area": result.masks[best].area,
                     "seconds": round(seconds, 3), "equal_to_plain_predictor": equal})
        print(json.dumps(rows[-1]), flush=True)
    return {"part": "prompts", "size": args.size, "model": args.model,
            "tile": predictor.tile, "overlap": predictor.overlap, "prompts": len(rows),
            "all_equal": all(r["equal_to_plain_predictor"] for r in rows),
            "cache": {"hits": predictor.cache.hits, "misses": predictor.cache.misses},
            "peak_rss_mb": round(peak_rss_mb(), 1)}


class _Crop:
    """The top-left ``height x width`` of a source (an ImageSource)."""

    def __init__(self, source, height: int, width: int) -> None:
        self.source, self.height, self.width = source, height, width

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return self.source.read(x0, y0, x1, y1)


def run_everything(args: argparse.Namespace) -> dict:
    from ..automatic import EfficientViTSamAutomaticMaskGenerator
    from ..tiled_everything import AutomaticTileSegmenter, TiledMaskGenerator
    from ..tiled_source import open_source

    model = _model(args)
    generator = EfficientViTSamAutomaticMaskGenerator(
        model, points_per_side=args.points_per_side, pred_iou_thresh=0.0,
        stability_score_thresh=0.0, output_mode="binary_mask", fast=not args.no_fast)
    tile = args.tile or generator.predictor.encoder_size
    overlap = args.overlap if args.overlap is not None else tile // 8
    wafer, path = _wafer(Path(args.workdir), args.everything_size, tile, overlap, args.seed)
    size = (wafer.height, wafer.width)
    found = [(kind, CroppedMask.from_window(crop, x0, y0, size))
             for kind, crop, x0, y0 in wafer.objects() if crop.any()]
    objects = [obj for _, obj in found]
    crossing = [(kind, o) for kind, o in found if wafer.crosses_seam(o.rect)]
    source = open_source(path)
    t = time.perf_counter()
    oracle = TiledMaskGenerator(GroundTruthSegmenter(objects), tile=tile, overlap=overlap,
                                batch_size=args.batch_size, progress=True)
    merged = oracle.generate_merged(source)
    merge_seconds = time.perf_counter() - t
    recovered, exact = (sum(v for v in recall(crossing, merged, key)[0].values())
                        for key in ("iou", "exact"))
    report = {"part": "everything", "size": args.everything_size, "tile": tile,
              "overlap": overlap, "tiles": len(tile_grid(*size, tile, overlap)),
              "oracle": {"objects": len(objects), "merged_masks": len(merged),
                         "seam_crossing": len(crossing),
                         "seam_crossing_iou_0.9": recovered, "seam_crossing_exact": exact,
                         "share": round(recovered / max(1, len(crossing)), 4),
                         "seconds": round(merge_seconds, 1)}}
    print(json.dumps(report["oracle"]), flush=True)
    if args.seam_model:
        report["model_seams"] = _model_seams(args, model, tile, overlap, source, crossing,
                                             found)
        print(json.dumps(report["model_seams"]), flush=True)
    # Throughput of the real pipeline on the first tiles (a square block of them).
    side = max(1, int(math.isqrt(args.throughput_tiles)))
    extent = min(wafer.width, tile + (side - 1) * (tile - overlap))
    block = _Crop(source, min(wafer.height, extent), extent)
    tiles = [source.read(*w.rect) for w in tile_grid(block.height, block.width, tile, overlap)]
    generator.predictor.set_images(tiles[:1])  # warm-up: first-call set-up is not measured
    encoder = {}
    for batch in (args.batch_size, 1):
        t = time.perf_counter()
        for start in range(0, len(tiles), batch):
            generator.predictor.set_images(tiles[start: start + batch])
        encoder[f"batch_{batch}"] = round(len(tiles) / (time.perf_counter() - t), 3)
    generator.predictor.reset_image()
    report["encoder_tiles_per_s"] = encoder
    rates = {}
    for batch in (args.batch_size, 1):
        tiled = TiledMaskGenerator(AutomaticTileSegmenter(generator), tile=tile, overlap=overlap,
                                   batch_size=batch)
        t = time.perf_counter()
        tiled.generate_merged(block)
        rates[f"batch_{batch}"] = round(tiled.tiles_encoded / (time.perf_counter() - t), 3)
    report["throughput_tiles_per_s"] = {"tiles": side * side, "model": args.model,
                                        "points_per_side": args.points_per_side, **rates}
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return report


def _model_seams(args: argparse.Namespace, model, tile: int, overlap: int, source,
                 crossing: list[tuple[str, CroppedMask]],
                 found: list[tuple[str, CroppedMask]]) -> dict:
    """``--seam-model``: the model's everything mode over the whole wafer (``--seam-*``:
    its grid and thresholds, SAM's defaults unless given), merged across seams; the share of
    seam-crossing objects it recovers as one mask (IoU >= 0.9), per category, and of all
    objects (``found``: how well the tiles see them, seams or not); the overview
    picture to ``--overview``."""
    from ..automatic import EfficientViTSamAutomaticMaskGenerator
    from ..tiled_everything import TiledMaskGenerator
    from ..tiled_zoom import tile_segmenter

    generator = EfficientViTSamAutomaticMaskGenerator(
        model, points_per_side=args.seam_points_per_side, output_mode="binary_mask",
        pred_iou_thresh=args.seam_pred_iou_thresh,
        stability_score_thresh=args.seam_stability_thresh, fast=not args.no_fast)
    segmenter = tile_segmenter(generator, args.seam_zoom)
    tiled = TiledMaskGenerator(segmenter, tile=tile, overlap=overlap,
                               batch_size=args.batch_size, progress=True)
    t = time.perf_counter()
    merged = tiled.generate_merged(source)
    seconds = time.perf_counter() - t
    hits, totals = recall(crossing, merged)
    loose, _ = recall(crossing, merged, iou=FOUND_IOU)  # found as one mask, if imprecise
    every, every_total = recall(found, merged)
    if args.overview is not None:
        from PIL import Image

        from ..io import atomic_write
        from .segment_tiled import overview_picture

        factor = max(1, -(-max(source.height, source.width) // 2048))
        picture = overview_picture(source, merged, factor, None, None)
        atomic_write(args.overview, lambda tmp: Image.fromarray(picture).save(
            tmp, format=Image.registered_extensions()[args.overview.suffix.lower()]))
    return {"model": args.model, "checkpoint": str(args.checkpoint),
            "points_per_side": args.seam_points_per_side,
            "pred_iou_thresh": args.seam_pred_iou_thresh,
            "stability_score_thresh": args.seam_stability_thresh, "zoom": args.seam_zoom,
            "zoom_looked_again": getattr(segmenter, "looked_again", None),
            "zoom_replaced": getattr(segmenter, "replaced", None), "objects": len(found),
            "merged_masks": len(merged), "seam_crossing": sum(totals.values()),
            "seam_crossing_iou_0.9": sum(hits.values()),
            "share": round(sum(hits.values()) / max(1, sum(totals.values())), 4),
            "per_category": {k: f"{hits[k]}/{totals[k]}" for k in sorted(totals)},
            "per_category_iou_0.5": {k: f"{loose[k]}/{totals[k]}" for k in sorted(totals)},
            "all_objects_iou_0.9": {k: f"{every[k]}/{every_total[k]}" for k in sorted(every_total)},
            "masks_matching_no_object": unmatched(merged, found),
            "seconds": round(seconds, 1), "tiles_per_s": round(tiled.tiles_encoded / seconds, 3)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "prompts", "everything"), default="all")
    parser.add_argument("--workdir", type=Path, required=True,
                        help="where the wafer TIFFs are written (and reused)")
    parser.add_argument("--size", type=int, default=20000, help="prompt part: wafer side")
    parser.add_argument("--everything-size", type=int, default=8192,
                        help="everything part: wafer side")
    parser.add_argument("--prompts", type=int, default=10, help="prompt part: how many")
    parser.add_argument("--model", default="efficientvit-sam-l0")
    parser.add_argument("--checkpoint", type=Path, help="weights (default: random weights)")
    parser.add_argument("--no-fast", action="store_true", help="run the model eagerly")
    parser.add_argument("--tile", type=int, help="default: the encoder input size")
    parser.add_argument("--overlap", type=int, help="default: tile / 8")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--points-per-side", type=int, default=8,
                        help="automatic generator grid for the throughput run")
    parser.add_argument("--throughput-tiles", type=int, default=16)
    parser.add_argument("--seam-model", action="store_true",
                        help="everything part: also run the model over the whole wafer and "
                             "report its seam recall (give trained weights: --checkpoint)")
    parser.add_argument("--seam-points-per-side", type=int, default=16)
    parser.add_argument("--seam-pred-iou-thresh", type=float, default=0.88,
                        help="with --seam-model: the generator's pred_iou_thresh")
    parser.add_argument("--seam-stability-thresh", type=float, default=0.95,
                        help="with --seam-model: the generator's stability_score_thresh")
    parser.add_argument("--seam-zoom", type=float,
                        help="with --seam-model: look again at small objects this many times "
                             "closer (effvit_sam.tiled_zoom; e.g. 2)")
    parser.add_argument("--overview", type=Path, help="with --seam-model: its overview picture")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, help="also write the report(s) as JSON")
    return parser


def _without_report(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--report":
            skip = True
        elif not a.startswith("--report="):
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if min(args.size, args.everything_size) < 256:
        raise UserError("--size and --everything-size must be >= 256")
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.part == "all":  # each part in a child process, so each peak RSS is its own
        reports = []
        for part in ("prompts", "everything"):
            command = [sys.executable, "-m", "effvit_sam", "bench-tiled",
                       *_without_report(argv), "--part", part]
            child = subprocess.run(command, stdout=subprocess.PIPE, text=True)
            print(child.stdout, end="")
            if child.returncode:
                return child.returncode
            reports.append(json.loads(child.stdout.strip().splitlines()[-1]))
    else:
        reports = [run_prompts(args) if args.part == "prompts" else run_everything(args)]
        print(json.dumps(reports[0]))
    if args.report is not None:
        from ..io import write_json

        write_json(args.report, reports)
    return 0
