"""``effvit-sam eval`` / ``python -m eval``: parse arguments, build the model, run, report.

Many processes: launch with ``torchrun --nproc_per_node N -m eval ...`` or
``accelerate launch --multi_gpu --num_processes N -m eval ...`` (on CPU add
``ACCELERATE_USE_CPU=true``; note ``accelerate launch --cpu --num_processes N`` starts only one
process). Every process takes a disjoint slice of the images; the main process scores, prints
and writes the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

from effvit_sam import list_models
from effvit_sam.errors import UserError
from effvit_sam.io import read_json

from .datasets import DATASET_KINDS, EvalDataset, open_dataset
from .predictors import SamBatchPredictor
from .report import file_sha256, format_table, markdown_row, write_report
from .runner import MODES, EvalTask, run_evaluation

logger = logging.getLogger(__name__)

DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="effvit-sam eval",
                                description="Zero-shot COCO/LVIS evaluation of a SAM model.")
    p.add_argument("mode", choices=MODES, help="box: GT boxes (mIoU); box-from-detector: a "
                   "detector's boxes (mask AP); point: simulated clicks (mIoU)")
    p.add_argument("--dataset", choices=DATASET_KINDS, required=True)
    p.add_argument("--annotations", required=True,
                   help="instances_val2017.json, lvis_v1_val.json or any COCO-format file")
    p.add_argument("--images", required=True, help="image folder (for LVIS: the COCO root or "
                   "the folder holding the images named by coco_url)")
    p.add_argument("--detections", help="detector results in COCO results format "
                   "(box-from-detector only)")
    p.add_argument("--model", default=None, help=f"one of {', '.join(list_models())} (default: "
                   "l0 if its official file is in the Hugging Face cache, else the bundled "
                   "model; a save_pretrained --checkpoint folder names its own)")
    p.add_argument("--checkpoint", help="weights file or save_pretrained folder, loaded "
                   "strictly (default: the official file in the Hugging Face cache, else the "
                   "bundled model; without any the command stops)")
    p.add_argument("--random-weights", action="store_true", help="evaluate random weights "
                   "(seeded with --seed; a pipeline test, the figures mean nothing)")
    p.add_argument("--fast", action="store_true", help="measure the fast path "
                   "(FastPathOptions.auto: BN folded, channels-last, ...; a bf16 encoder on "
                   "AMX / AVX512-BF16 CPUs) instead of the reference eager float32 computation "
                   "that published figures use")
    p.add_argument("--output", help="write every metric and the run's settings to this JSON")
    p.add_argument("--limit", type=int, help="evaluate only the first N images (sorted ids)")
    p.add_argument("--num-clicks", type=int, default=5, help="clicks per instance (point)")
    p.add_argument("--feed-logits", action="store_true", help="point: give each round's "
                   "low-res logits to the next as mask_input (off: clicks only, as the "
                   "official figures)")
    p.add_argument("--include-crowd", action="store_true", help="box/point: also prompt "
                   "crowd (iscrowd) regions, as the official script does (skipped by default)")
    p.add_argument("--box-noise", type=float, default=0.0, metavar="FRACTION",
                   help="box: move every box coordinate by N(0, FRACTION x the box's side) "
                   "pixels, at most 20 (SAM's training noise; 0.1 is SAM's), the same boxes "
                   "for every model: how the masks hold up under a loose box (default 0: exact)")
    p.add_argument("--max-prompts", type=int, default=64,
                   help="prompts per decoder call (bounds memory on crowded images)")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-weights: every "
                   "process must build the same model")
    p.add_argument("--device", help="torch device (default: accelerate's choice per process)")
    return p


def check_detections(path: str) -> int:
    """Check a COCO results file before any model is built; returns its number of detections.

    Raises :class:`UserError` naming ``--detections``, the file and the first bad entry: not
    JSON, not a list, an entry that is not an object or lacks a key, a ``bbox`` that is not 4
    numbers, a ``score`` that is not a number.
    """
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--detections {path}: file not found")
    try:
        results = read_json(file)
    except (ValueError, OSError) as err:
        raise UserError(f"--detections: {err}") from None
    if not isinstance(results, list):
        raise UserError(f"--detections {path} is not a COCO results list (a JSON list of "
                        f"{{{', '.join(DETECTION_KEYS)}}}), got a {type(results).__name__}")
    for i, det in enumerate(results):
        problem = None
        if not isinstance(det, dict):
            problem = f"is a {type(det).__name__}, not an object"
        elif missing := [k for k in DETECTION_KEYS if k not in det]:
            problem = f"has no {', '.join(map(repr, missing))}"
        elif not (isinstance(det["bbox"], list) and len(det["bbox"]) == 4
                  and all(isinstance(v, (int, float)) for v in det["bbox"])):
            problem = "has a bbox that is not 4 numbers (x, y, width, height)"
        elif not isinstance(det["score"], (int, float)):
            problem = "has a score that is not a number"
        if problem is not None:
            raise UserError(f"--detections {path}: entry {i} {problem}: {str(det)[:200]}")
    return len(results)


def _check_settings(args: argparse.Namespace) -> tuple[EvalTask, EvalDataset]:
    """Every argument and input file, checked before a model is built; :class:`UserError`
    naming the argument or file."""
    for flag, value in (("--limit", args.limit), ("--num-clicks", args.num_clicks),
                        ("--max-prompts", args.max_prompts)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if args.output and Path(args.output).is_dir():  # found now, not after the evaluation
        raise UserError(f"--output {args.output} is a folder: give the report's file path, "
                        "e.g. report.json")
    if (args.mode == "box-from-detector") != (args.detections is not None):
        raise UserError("--detections is needed by, and only by, box-from-detector")
    if args.detections is not None:
        check_detections(args.detections)
    try:
        task = EvalTask(mode=args.mode, num_clicks=args.num_clicks, limit=args.limit,
                        detections=args.detections, feed_logits=args.feed_logits,
                        include_crowd=args.include_crowd, box_noise=args.box_noise)
    except ValueError as err:
        raise UserError(str(err)) from None
    return task, open_dataset(args.dataset, args.annotations, args.images)


def inference_settings(options) -> dict:
    """``{"fast": bool, "options": the FastPathOptions as a dict, or None}`` for the report
    (``options`` is ``None`` for the reference eager float32 computation)."""
    if options is None:
        return {"fast": False, "options": None}
    fields = dataclasses.asdict(options)
    return {"fast": True, "options": {k: v if v is None or isinstance(v, (bool, int, float, str))
                                      else str(v) for k, v in fields.items()}}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``effvit-sam eval``; bad input raises :class:`UserError` (exit code 2
    through :func:`effvit_sam.errors.run_command`)."""
    from effvit_sam.weights import resolve_device

    args = build_parser().parse_args(argv)
    task, dataset = _check_settings(args)
    requested = resolve_device(args.device)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=requested is not None and requested.type == "cpu")
    try:
        return _evaluate(args, task, dataset, accelerator, requested)
    finally:
        # destroy the process group before the interpreter exits, as torch asks: once, a rank
        # of a 2-process CPU run without this aborted at exit after its work was done
        # ("terminate called without an active exception", exit code -6)
        accelerator.end_training()


def _evaluate(args: argparse.Namespace, task: EvalTask, dataset: EvalDataset, accelerator,
              requested) -> int:
    from accelerate.utils import gather_object

    from effvit_sam.weights import resolve_model

    device = requested if requested is not None else accelerator.device
    model, weights = resolve_model(args.model, checkpoint=args.checkpoint,
                                   random_weights=args.random_weights, device=device,
                                   seed=args.seed)
    options = None
    if args.fast:
        from effvit_sam.inference import FastPathOptions, optimize_for_inference

        options = FastPathOptions.auto(device)
        model = optimize_for_inference(model, device=device, options=options)
    inference = inference_settings(options)
    # The predictor runs the model as given: eager float32 unless --fast built the fast path.
    predictor = SamBatchPredictor(model, device=device, max_prompts=args.max_prompts, fast=False)
    if accelerator.is_main_process:
        logger.info("evaluating %s on %s (%s) with %d process(es); %s", weights.model,
                    args.dataset, args.mode, accelerator.num_processes, weights.description)
    start = time.perf_counter()
    summary = run_evaluation(task, predictor, dataset, process_index=accelerator.process_index,
                             num_processes=accelerator.num_processes, gather=gather_object)
    if summary is None:
        return 0
    seconds = time.perf_counter() - start  # includes scoring; a rough figure, never tested
    unit, done = (("detections", summary["num_detections"]) if "num_detections" in summary
                  else ("instances", summary["num_instances"]["all"]))
    summary["timing"] = {"seconds": round(seconds, 3),
                         f"{unit}_per_second": round(done / seconds, 3) if seconds else None}
    settings = {
        "model": weights.model,
        "weights": {**weights.to_dict(), "sha256": file_sha256(weights.file)},
        "inference": inference, "dataset": args.dataset,
        "annotations": args.annotations, "images": args.images, "detections": args.detections,
        "mode": args.mode, "num_clicks": args.num_clicks if args.mode == "point" else None,
        "feed_logits": args.feed_logits if args.mode == "point" else None,
        "include_crowd": args.include_crowd if args.mode != "box-from-detector" else None,
        "box_noise": args.box_noise if args.mode == "box" else None,
        "limit": args.limit, "num_processes": accelerator.num_processes, "device": str(device),
    }
    print(format_table(settings, summary))
    print(weights.description)
    if options is None:
        print("inference: reference eager float32 (the official computation)")
    else:
        enabled = [k for k, v in inference["options"].items() if v is True]
        dtype = options.autocast_dtype
        precision = f"{str(dtype).removeprefix('torch.')} encoder (lossy)" if dtype else "float32"
        print(f"inference: fast path, FastPathOptions.auto ({precision}): {', '.join(enabled)}")
    print(markdown_row(settings, summary))
    if args.output:
        try:
            write_report(args.output, settings, summary)
        except OSError as err:
            raise UserError(f"--output {args.output}: could not write the report ({err})") from None
        logger.info("wrote %s", args.output)
    return 0
