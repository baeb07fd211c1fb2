"""The ``effvit-sam`` console command: a thin dispatcher to each area's own entry point.

Each subcommand lives next to the code it drives and takes its own ``argv``; importing them
lazily keeps ``effvit-sam --help`` fast and lets extras (gradio, webdataset, onnx) stay optional.
"""

from __future__ import annotations

import importlib
import logging
import sys

from .errors import run_command

COMMANDS: dict[str, tuple[str, str, str]] = {
    "segment": ("effvit_sam.tools.segment", "main",
                "segment an image from points/boxes, or everything"),
    "segment-tiled": ("effvit_sam.tools.segment", "tiled_main",
                      "segment a huge image (TIFF/BigTIFF) at native resolution, tile by tile"),
    "make-wafer": ("distill.wafer", "main",
                   "write a made wafer image (tiled BigTIFF) with COCO ground truth"),
    "bench-tiled": ("effvit_sam.tools.bench_tiled", "main",
                    "tiled prompting/everything: peak memory, equality, seam merge, tiles/s"),
    "make-shards": ("distill.cli", "make_shards_main",
                    "write synthetic scenes as SA-1B tar shards"),
    "make-eval-set": ("distill.cli", "make_eval_set_main",
                      "write a synthetic COCO/LVIS-format validation set"),
    "make-microscopy": ("distill.microscopy", "main", "write made microscopy images + masks"),
    "make-wafer-crops": ("distill.wafer_crops", "main",
                         "write crops of made wafers + masks (to fine-tune for wafer scans)"),
    "cache-teacher": ("distill.cli", "cache_teacher_main", "cache teacher embeddings as shards"),
    "distill": ("distill.cli", "distill_main", "phase 1: distil the encoder from a teacher"),
    "finetune": ("distill.cli", "finetune_main", "phase 2: fine-tune the whole model end to end"),
    "embed-mse": ("distill.cli", "embed_mse_main",
                  "student-teacher embedding MSE on held-out shards"),
    "eval": ("eval.cli", "main", "zero-shot COCO/LVIS evaluation (box, detector boxes, clicks)"),
    "demo": ("demo.cli", "main", "interactive Gradio demo"),
    "export-onnx": ("effvit_sam.tools.export", "main", "export encoder and decoder to ONNX"),
    "bench": ("effvit_sam.tools.bench", "main", "speed and memory benchmark, reported as ratios"),
    "env": ("effvit_sam.tools.env", "main", "this machine, its torch, the fast path it picks"),
    "bench-decoder": ("effvit_sam.tools.bench_decoder", "main",
                      "many-prompt decoder and everything mode vs the official computation"),
    "fastpath-accuracy": ("effvit_sam.tools.fastpath_accuracy", "main",
                          "what each fast-path option changes vs eager float32"),
}


def _usage() -> str:
    lines = ["usage: effvit-sam COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<18} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run 'effvit-sam COMMAND --help' for a command's options. Errors in what you",
              "pass exit with code 2 and one message; --debug (or EFFVIT_SAM_DEBUG=1) shows the",
              "traceback."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"effvit-sam: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    module, func, _ = COMMANDS[name]
    return run_command(f"effvit-sam {name}", getattr(importlib.import_module(module), func), rest)


if __name__ == "__main__":
    sys.exit(main())
