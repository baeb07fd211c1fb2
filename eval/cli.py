"""``effvit-sam eval`` / ``python -m eval``: parse arguments, build the model, run, report.

Many processes: launch with ``torchrun --nproc_per_node N -m eval ...`` or
``accelerate launch --multi_gpu --num_processes N -m eval ...`` (on CPU add
``ACCELERATE_USE_CPU=true``; note ``accelerate launch --cpu --num_processes N`` starts only one
process). Every process takes a disjoint slice of the images; the main process scores, prints
and writes the report.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from effvit_sam import build_sam, list_models

from .datasets import DATASET_KINDS, EvalDataset
from .predictors import SamBatchPredictor
from .report import file_sha256, format_table, markdown_row, write_report
from .runner import MODES, EvalTask, run_evaluation

logger = logging.getLogger(__name__)


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
    p.add_argument("--model", required=True, help=f"one of {', '.join(list_models())}")
    p.add_argument("--checkpoint", help="weights to load strictly (random weights without)")
    p.add_argument("--output", help="write every metric and the run's settings to this JSON")
    p.add_argument("--limit", type=int, help="evaluate only the first N images (sorted ids)")
    p.add_argument("--num-clicks", type=int, default=5, help="clicks per instance (point)")
    p.add_argument("--feed-logits", action="store_true", help="point: give each round's "
                   "low-res logits to the next as mask_input (off: clicks only, as the "
                   "official figures)")
    p.add_argument("--include-crowd", action="store_true", help="box/point: also prompt "
                   "crowd (iscrowd) regions, as the official script does (skipped by default)")
    p.add_argument("--max-prompts", type=int, default=64,
                   help="prompts per decoder call (bounds memory on crowded images)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (no "
                   "--checkpoint): every process must build the same model")
    p.add_argument("--device", help="torch device (default: accelerate's choice per process)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    try:  # settings and paths are checked before any model is built
        task = EvalTask(mode=args.mode, num_clicks=args.num_clicks, limit=args.limit,
                        detections=args.detections, feed_logits=args.feed_logits,
                        include_crowd=args.include_crowd)
        dataset = EvalDataset(args.dataset, args.annotations, args.images)
        if args.max_prompts < 1:
            raise ValueError(f"--max-prompts must be >= 1, got {args.max_prompts}")
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    accelerator = Accelerator(cpu=args.device == "cpu")
    device = torch.device(args.device) if args.device else accelerator.device
    # Random initialisation draws from the global RNG; seeding it gives every process (and
    # every run) the same weights when no checkpoint is loaded.
    torch.manual_seed(args.seed)
    model = build_sam(args.model, checkpoint=args.checkpoint, device=device)
    predictor = SamBatchPredictor(model, device=device, max_prompts=args.max_prompts)
    if accelerator.is_main_process:
        logger.info("evaluating %s on %s (%s) with %d process(es)", args.model, args.dataset,
                    args.mode, accelerator.num_processes)
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
        "model": args.model, "checkpoint": args.checkpoint,
        "checkpoint_sha256": file_sha256(args.checkpoint), "dataset": args.dataset,
        "annotations": args.annotations, "images": args.images, "detections": args.detections,
        "mode": args.mode, "num_clicks": args.num_clicks if args.mode == "point" else None,
        "feed_logits": args.feed_logits if args.mode == "point" else None,
        "include_crowd": args.include_crowd if args.mode != "box-from-detector" else None,
        "limit": args.limit, "seed": None if args.checkpoint else args.seed,
        "num_processes": accelerator.num_processes, "device": str(device),
    }
    print(format_table(settings, summary))
    print(markdown_row(settings, summary))
    if args.output:
        write_report(args.output, settings, summary)
        logger.info("wrote %s", args.output)
    return 0
