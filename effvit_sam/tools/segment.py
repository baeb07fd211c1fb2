"""``effvit-sam segment``: masks for one image from points/boxes, or everything, to an overlay
picture and COCO-RLE JSON.

    effvit-sam segment photo.jpg --point 320,240 --point 400,260,0 --output overlay.png
    effvit-sam segment photo.jpg --box 10,20,300,400 --box 350,40,600,380 --json masks.json
    effvit-sam segment scan.png --everything --crop-n-layers 1 --json masks.json

Weights (:func:`effvit_sam.weights.resolve_model`): ``--checkpoint PATH`` (an official ``.pt``,
a ``.safetensors`` file or a ``save_pretrained`` folder), else the official file of ``--model``
from the local Hugging Face cache (nothing is downloaded), else the bundled model; without
``--model``, l0 if its official file is cached, else the bundled model. Nothing found is an
error; ``--random-weights`` is for testing the pipeline only. The weights used are printed.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..io import atomic_write, read_image

logger = logging.getLogger(__name__)
PROG = "effvit-sam segment"


def _numbers(text: str, counts: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts:
        raise argparse.ArgumentTypeError(f"{what} must be {' or '.join(_FORMS[what])}, got "
                                         f"{text!r}")
    return values


_FORMS = {"point": ("X,Y", "X,Y,LABEL"), "box": ("X0,Y0,X1,Y1",)}


def _point(text: str) -> tuple[float, float, int]:
    values = _numbers(text, (2, 3), "point")
    label = values[2] if len(values) == 3 else 1.0
    if label not in (0.0, 1.0):
        raise argparse.ArgumentTypeError(f"point label must be 1 (foreground) or 0 (background), "
                                         f"got {text!r}")
    return values[0], values[1], int(label)


def _box(text: str) -> list[float]:
    return _numbers(text, (4,), "box")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=Path, help="image file (any format PIL reads)")
    parser.add_argument("--model", default=None,
                        help="model name, e.g. l0 ... xl1, mini (default: l0 if its official "
                             "file is in the Hugging Face cache, else the bundled model)")
    parser.add_argument("--checkpoint", type=Path, help="weights file or save_pretrained folder")
    parser.add_argument("--random-weights", action="store_true",
                        help="random weights, seed 0 (testing only; masks are meaningless)")
    parser.add_argument("--point", type=_point, action="append", default=[], metavar="X,Y[,L]",
                        help="point prompt in pixels; label 1 foreground (default) or 0")
    parser.add_argument("--box", type=_box, action="append", default=[], metavar="X0,Y0,X1,Y1",
                        help="box prompt in pixels (several boxes: one mask each, sharing the "
                             "points)")
    parser.add_argument("--everything", action="store_true",
                        help="automatic mask generation over a point grid")
    parser.add_argument("--output", type=Path, help="overlay picture (default: "
                        "<image stem>_overlay.png in the current directory)")
    parser.add_argument("--json", type=Path, help="write the masks as COCO-RLE JSON")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--multimask", action="store_true",
                        help="three candidates per prompt (all in the JSON, best in the overlay)")
    parser.add_argument("--no-fast", action="store_true", help="run the model eagerly")
    amg = parser.add_argument_group("everything mode")
    amg.add_argument("--points-per-side", type=int, default=32)
    amg.add_argument("--points-per-batch", type=int, default=64)
    amg.add_argument("--pred-iou-thresh", type=float, default=0.88)
    amg.add_argument("--stability-score-thresh", type=float, default=0.95)
    amg.add_argument("--crop-n-layers", type=int, default=0)
    amg.add_argument("--min-mask-region-area", type=int, default=0)
    from .segment_tiled import add_tiled_arguments

    add_tiled_arguments(parser)  # --tile: huge images at native resolution
    return parser


def _segment_prompts(predictor, args) -> tuple[list[dict], np.ndarray]:
    """Records (COCO RLE, whole-pixel XYWH ``bbox``: :mod:`effvit_sam.masks`) and the masks to
    draw (the best-scoring candidate of each prompt). Without ``--multimask`` each prompt gets
    the model's single mask (for the made-data models, the best of their three candidates:
    ``SamConfig.single_mask``)."""
    from ..masks import mask_to_box_xywh, mask_to_rle

    points = np.array([p[:2] for p in args.point], dtype=np.float64) if args.point else None
    labels = np.array([p[2] for p in args.point]) if args.point else None
    boxes = np.array(args.box, dtype=np.float64) if args.box else None
    masks, scores, _ = predictor.predict(points, labels, boxes, multimask_output=args.multimask)
    if boxes is None:  # one prompt set: make it a batch of one
        masks, scores = masks[None], scores[None]
    candidates = np.broadcast_to(np.arange(masks.shape[1]), scores.shape)
    records, drawn = [], []
    for i in range(len(masks)):
        drawn.append(masks[i, int(np.argmax(scores[i]))])
        for j in range(masks.shape[1]):
            records.append({"segmentation": mask_to_rle(masks[i, j]),
                            "area": int(masks[i, j].sum()),
                            "bbox": mask_to_box_xywh(masks[i, j]),
                            "predicted_iou": float(scores[i, j]), "prompt_index": i,
                            "candidate": int(candidates[i, j])})
    return records, np.stack(drawn)


def _write_overlay(path: Path, picture: np.ndarray) -> None:
    fmt = Image.registered_extensions()[path.suffix.lower()]  # checked in run()
    try:
        atomic_write(path, lambda tmp: Image.fromarray(picture).save(tmp, format=fmt))
    except OSError as err:
        raise UserError(f"--output {path}: could not write the picture ({err})") from None


def _read_image(path: Path) -> np.ndarray:
    """The image as ``H x W x 3`` uint8 RGB; a missing or unreadable file is a
    :class:`UserError` naming it."""
    try:
        return read_image(path)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None


def _check_not_too_thin(path: Path, image: np.ndarray, encoder_size: int) -> None:
    """A side that the encoder's resize-longest-side rounds to 0 pixels is a :class:`UserError`
    (PIL would otherwise fail with "height and width must be > 0")."""
    from ..geometry import preprocess_shape

    h, w = image.shape[:2]
    if min(preprocess_shape(h, w, encoder_size)) < 1:
        raise UserError(f"image {path} is {w}x{h}: too thin for this model (its short side "
                        f"would be 0 pixels at the encoder's {encoder_size} input)")


def _check_prompts(args: argparse.Namespace, size: tuple[int, int]) -> None:
    """``--point``/``--box`` against the image (``size`` = ``(H, W)``), with the predictor's own
    checks (:mod:`effvit_sam.predictor_inputs`), reported naming the option."""
    from ..predictor_inputs import as_boxes, as_points

    try:
        if args.point:
            as_points([p[:2] for p in args.point], [p[2] for p in args.point], size)
    except ValueError as err:
        raise UserError(f"--point: {err}") from None
    try:
        if args.box:
            as_boxes(args.box, size)
    except ValueError as err:
        raise UserError(f"--box: {err}") from None


def run(args: argparse.Namespace) -> int:
    from ..automatic import EfficientViTSamAutomaticMaskGenerator
    from ..masks import rle_to_mask
    from ..predictor import EfficientViTSamPredictor
    from ..visualize import overlay_masks
    from ..weights import resolve_device, resolve_model

    if args.everything == bool(args.point or args.box):
        raise UserError("give prompts (--point/--box) or --everything, exactly one of the two")
    output = args.output or Path(f"{args.image.stem}_overlay.png")
    if output.suffix.lower() not in Image.registered_extensions():
        raise UserError(f"--output {output}: unknown picture format {output.suffix!r} "
                        "(use .png or .jpg)")
    for name in ("points_per_side", "points_per_batch"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got "
                            f"{getattr(args, name)}")
    if args.crop_n_layers < 0 or args.min_mask_region_area < 0:
        raise UserError("--crop-n-layers and --min-mask-region-area must be at least 0")
    for name in ("pred_iou_thresh", "stability_score_thresh"):
        if not 0 <= getattr(args, name) <= 1:  # false for NaN too
            raise UserError(f"--{name.replace('_', '-')} must be in [0, 1], got "
                            f"{getattr(args, name)}")
    image = _read_image(args.image)
    _check_prompts(args, image.shape[:2])
    device = resolve_device(args.device)
    model, weights = resolve_model(args.model, checkpoint=args.checkpoint,
                                   random_weights=args.random_weights, device=device)
    print(weights.description)
    _check_not_too_thin(args.image, image, model.encoder_size)
    if args.everything:
        generator = EfficientViTSamAutomaticMaskGenerator(
            model, points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh, crop_n_layers=args.crop_n_layers,
            min_mask_region_area=args.min_mask_region_area, output_mode="coco_rle",
            progress=True, device=device, fast=not args.no_fast)
        records = generator.generate(image)
        # Draw largest first so small masks stay visible on top.
        order = sorted(range(len(records)), key=lambda i: -records[i]["area"])
        drawn = (np.stack([rle_to_mask(records[i]["segmentation"]) for i in order])
                 if records else None)
    else:
        predictor = EfficientViTSamPredictor(model, device=device, fast=not args.no_fast)
        predictor.set_image(image)
        records, drawn = _segment_prompts(predictor, args)
    picture = overlay_masks(
        image, drawn,
        points=[p[:2] for p in args.point] or None, labels=[p[2] for p in args.point] or None,
        boxes=args.box or None)
    _write_overlay(output, picture)
    if args.json is not None:
        doc = {"image": str(args.image), "height": image.shape[0], "width": image.shape[1],
               "model": weights.model, "weights": weights.to_dict(),
               "mode": "everything" if args.everything else "prompts",
               "annotations": records}
        try:
            atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(doc)))
        except OSError as err:
            raise UserError(f"--json {args.json}: could not write the masks ({err})") from None
    print(f"{len(records)} masks; overlay written to {output}"
          + (f", masks to {args.json}" if args.json else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``effvit-sam segment``. Bad input raises :class:`UserError`, which the
    dispatcher (:func:`effvit_sam.errors.run_command`) turns into exit code 2 and one line."""
    args = build_parser().parse_args(argv)
    if args.tile is not None:
        from .segment_tiled import run_tiled

        return run_tiled(args)
    return run(args)


def tiled_main(argv: list[str] | None = None) -> int:
    """Entry point of ``effvit-sam segment-tiled``: ``segment`` in tiled mode, with ``--tile``
    defaulting to the model's encoder input (:mod:`effvit_sam.tools.segment_tiled`)."""
    from .segment_tiled import PROG, run_tiled

    parser = build_parser()
    parser.prog = PROG
    return run_tiled(parser.parse_args(argv))
