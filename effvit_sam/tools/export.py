"""``effvit-sam export-onnx``: write ``encoder.onnx`` and ``decoder.onnx`` and check them with
onnxruntime against PyTorch (:func:`effvit_sam.export.onnx.export_onnx`).

Weights follow :func:`effvit_sam.weights.resolve_model`; exporting random weights needs
``--random-weights`` (a graph of random weights is only good for testing a runtime).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    """``effvit-sam export-onnx [--model NAME] [--checkpoint PATH | --random-weights] --out DIR
    [--no-verify]``."""
    from ..configs import list_models
    from ..errors import UserError
    from ..export.onnx import export_onnx
    from ..weights import resolve_model

    parser = argparse.ArgumentParser(prog="effvit-sam export-onnx",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None,
                        help=f"one of {', '.join(list_models())} (default: l0 if its official "
                             "file is in the Hugging Face cache, else the bundled model)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="weights file or save_pretrained folder")
    parser.add_argument("--random-weights", action="store_true",
                        help="export random weights, seed 0 (for testing a runtime only)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the two graphs")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the onnxruntime vs PyTorch check")
    parser.add_argument("--official-names", nargs="?", const="multimask", default=None,
                        choices=("multimask", "single-mask"),
                        help="write the official EfficientViT-SAM export's tensor names and "
                             "decoder inputs (points only); 'single-mask': the decoder returns "
                             "the best of the four masks per prompt, as its --return-single-mask")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file, not a directory")
    model, weights = resolve_model(args.model, checkpoint=args.checkpoint,
                                   random_weights=args.random_weights)
    print(weights.description)
    result = export_onnx(model, args.out, verify=not args.no_verify,
                         official_names=args.official_names is not None,
                         single_mask=args.official_names == "single-mask")
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0
