"""``effvit-sam segment-tiled``: prompts or everything on a huge image at native resolution,
to COCO-RLE JSON and a downscaled overview picture.

    effvit-sam segment-tiled big.tif --tile 1024 --overlap 128 --everything --json out.json
    effvit-sam segment-tiled big.tif --point 15000,3200 --box 100,100,900,700 --json out.json
    effvit-sam segment-tiled big.tif --everything --resume big.state.json --json out.json

Each ``--point`` (foreground) and each ``--box`` is one prompt, served from the tile window
around it (:class:`effvit_sam.tiled.TiledSamPredictor`); ``--everything`` runs the automatic
generator over the tile grid and merges masks across seams
(:class:`effvit_sam.tiled_everything.TiledMaskGenerator`). TIFF/BigTIFF files are read lazily.
The options are ``effvit-sam segment``'s plus :func:`add_tiled_arguments`' (which ``segment``
can take over as ``--tile``).
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..io import atomic_write, write_json

logger = logging.getLogger(__name__)
PROG = "effvit-sam segment-tiled"
OVERVIEW_CHUNK = 16
"""Masks painted per overlay call on the overview (bounds the N x h x w stack)."""


def add_tiled_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The tiled-mode options, added to a parser that has ``segment``'s options."""
    group = parser.add_argument_group("tiled mode (huge images at native resolution)")
    group.add_argument("--tile", type=int, help="tile side in pixels (default: the model's "
                       "encoder input, 512 for L models, 1024 for XL)")
    group.add_argument("--overlap", type=int, help="pixels shared by neighbouring tiles "
                       "(default: tile / 8)")
    group.add_argument("--batch-size", type=int, default=4,
                       help="tiles per encoder call in everything mode (default 4)")
    group.add_argument("--merge-iou", type=float, default=0.5,
                       help="IoU in the shared band at which masks of two tiles are one object")
    group.add_argument("--resume", type=Path, metavar="STATE",
                       help="everything mode: state file of finished tiles, written after each "
                            "batch; an existing one is resumed")
    group.add_argument("--zoom-small", type=float, metavar="ZOOM",
                       help="everything mode: decode small objects again ZOOM times closer "
                            "(e.g. 2; effvit_sam.tiled_zoom): particles a few pixels across")
    group.add_argument("--cache-mb", type=float, default=256,
                       help="prompt mode: memory for cached tile embeddings (default 256 MB)")
    group.add_argument("--overview-size", type=int, default=2048,
                       help="long side of the overview picture (default 2048)")
    group.add_argument("--max-pixels", type=int, default=None,
                       help="pixel limit for non-TIFF images, which are decoded whole")
    return parser


def _prompts(args: argparse.Namespace) -> list[dict]:
    prompts = []
    for x, y, label in args.point:
        if label != 1:
            raise UserError(f"--point {x:g},{y:g},0: in tiled mode every point is its own prompt "
                            "(served from its own tile), so background points cannot be used")
        prompts.append({"points": [[x, y]]})
    prompts += [{"box": box} for box in args.box]
    return prompts


def overview_picture(source, records_masks, factor: int, points, boxes) -> np.ndarray:
    """The image shrunk by ``factor`` with the masks (CroppedMask / MergedMask: any pixel set
    in a block) painted on."""
    from ..tiled_source import read_reduced
    from ..visualize import distinct_colors, overlay_masks

    base = read_reduced(source, 0, 0, source.width, source.height, factor)
    size = base.shape[:2]
    palette = distinct_colors(len(records_masks))
    picture = base
    for start in range(0, len(records_masks), OVERVIEW_CHUNK):
        chunk = records_masks[start: start + OVERVIEW_CHUNK]
        stack = np.stack([m.downscaled(factor, size) for m in chunk])
        picture = overlay_masks(picture, stack, colors=palette[start: start + len(chunk)])
    if points or boxes:
        picture = overlay_masks(picture, None,
                                points=np.asarray(points) / factor if points else None,
                                boxes=np.asarray(boxes) / factor if boxes else None)
    return picture


def _check(args: argparse.Namespace) -> None:
    if args.everything == bool(args.point or args.box):
        raise UserError("give prompts (--point/--box) or --everything, exactly one of the two")
    if not args.image.is_file():
        raise UserError(f"image not found: {args.image}")
    from ..tiled import MIN_TILE

    # the flags are checked here, by name; the library's own checks name its parameters
    if args.tile is not None and args.tile < MIN_TILE:
        raise UserError(f"--tile must be at least {MIN_TILE} pixels, got {args.tile}")
    if args.overlap is not None and not 0 <= args.overlap < (args.tile or math.inf):
        raise UserError(f"--overlap must be >= 0 and less than --tile ({args.tile}), got "
                        f"{args.overlap}")
    if not 0 < args.merge_iou <= 1:
        raise UserError(f"--merge-iou must be in (0, 1], got {args.merge_iou}")
    if not 0 <= args.cache_mb < math.inf:
        raise UserError(f"--cache-mb must be finite and >= 0, got {args.cache_mb}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.overview_size < 16:
        raise UserError(f"--overview-size must be >= 16, got {args.overview_size}")
    if args.resume is not None and not args.everything:
        raise UserError("--resume applies to --everything only")
    if args.zoom_small is not None and not (args.everything and 1 < args.zoom_small < math.inf):
        raise UserError(f"--zoom-small applies to --everything and must be a number > 1, got "
                        f"{args.zoom_small}")
    if args.zoom_small is not None and args.min_mask_region_area:
        raise UserError("--zoom-small does not combine with --min-mask-region-area")
    if args.crop_n_layers:
        raise UserError("--crop-n-layers is not used in tiled mode: the tiles are the crops")


def run_tiled(args: argparse.Namespace) -> int:
    """Tiled segmentation of ``args.image`` (the options of :func:`build_parser`)."""
    from ..tiled_source import PIL_MAX_PIXELS, open_source

    _check(args)
    output = args.output or Path(f"{args.image.stem}_overview.png")
    fmt = Image.registered_extensions().get(output.suffix.lower())
    if fmt is None:
        raise UserError(f"--output {output}: unknown picture format (use .png or .jpg)")
    with open_source(args.image, max_pixels=args.max_pixels or PIL_MAX_PIXELS) as source:
        return _run(args, source, output, fmt)


def _run(args: argparse.Namespace, source, output: Path, fmt: str) -> int:
    from ..tiled import TiledSamPredictor, check_tiling
    from ..weights import resolve_device, resolve_model

    device = resolve_device(args.device)
    model, weights = resolve_model(args.model, checkpoint=args.checkpoint,
                                   random_weights=args.random_weights, device=device)
    print(weights.description)
    if args.everything:
        from ..automatic import EfficientViTSamAutomaticMaskGenerator
        from ..tiled_everything import TiledMaskGenerator, merged_record
        from ..tiled_zoom import tile_segmenter

        generator = EfficientViTSamAutomaticMaskGenerator(
            model, points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh,
            min_mask_region_area=args.min_mask_region_area, output_mode="binary_mask",
            device=device, fast=not args.no_fast)
        tile = args.tile or generator.predictor.encoder_size
        overlap = args.overlap if args.overlap is not None else tile // 8
        check_tiling(tile, overlap)
        tiled = TiledMaskGenerator(tile_segmenter(generator, args.zoom_small), tile=tile,
                                   overlap=overlap, batch_size=args.batch_size,
                                   merge_iou=args.merge_iou, progress=True)
        merged = tiled.generate_merged(source, state_path=args.resume)
        records = [merged_record(m) for m in merged]
        drawn = merged
        points = boxes = None
    else:
        prompts = _prompts(args)
        predictor = TiledSamPredictor(model, tile=args.tile, overlap=args.overlap,
                                      cache_bytes=int(args.cache_mb * (1 << 20)),
                                      device=device, fast=not args.no_fast)
        tile, overlap = predictor.tile, predictor.overlap
        predictor.set_image(source)
        records, drawn = [], []
        for i, prompt in enumerate(prompts):
            result = predictor.predict(**prompt, multimask_output=args.multimask)
            drawn.append(result.masks[int(np.argmax(result.scores))])
            records += [{**r, "prompt_index": i} for r in result.records()]
        points = [p[:2] for p in args.point]
        boxes = list(args.box)
    factor = max(1, math.ceil(max(source.height, source.width) / args.overview_size))
    picture = overview_picture(source, drawn, factor, points, boxes)
    atomic_write(output, lambda tmp: Image.fromarray(picture).save(tmp, format=fmt))
    if args.json is not None:
        write_json(args.json, {
            "image": str(args.image), "height": source.height, "width": source.width,
            "model": args.model, "mode": "everything" if args.everything else "prompts",
            "tile": tile, "overlap": overlap, "annotations": records}, indent=None)
    print(f"{len(records)} masks; overview (1/{factor} scale) written to {output}"
          + (f", masks to {args.json}" if args.json else ""))
    return 0
