"""``effvit-sam export-onnx``: write ``encoder.onnx`` and ``decoder.onnx`` and check them with
onnxruntime against PyTorch (:func:`effvit_sam.export.onnx.export_onnx`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    """``effvit-sam export-onnx --model NAME [--checkpoint PATH] --out DIR [--no-verify]``."""
    from ..build import build_sam, list_models
    from ..export.onnx import export_onnx

    parser = argparse.ArgumentParser(prog="effvit-sam export-onnx",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help=f"one of {', '.join(list_models())}")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="official or save_pretrained checkpoint (default: random weights)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the two graphs")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the onnxruntime vs PyTorch check")
    parser.add_argument("--official-names", nargs="?", const="multimask", default=None,
                        choices=("multimask", "single-mask"),
                        help="write the official EfficientViT-SAM export's tensor names and "
                             "decoder inputs (points only); 'single-mask': the decoder returns "
                             "the best of the four masks per prompt, as its --return-single-mask")
    args = parser.parse_args(argv)
    if args.checkpoint is None:
        log.warning("no --checkpoint: exporting randomly initialised weights")
    model = build_sam(args.model, checkpoint=args.checkpoint).eval()
    result = export_onnx(model, args.out, verify=not args.no_verify,
                         official_names=args.official_names is not None,
                         single_mask=args.official_names == "single-mask")
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0
