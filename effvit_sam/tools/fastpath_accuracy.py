"""``effvit-sam fastpath-accuracy``: what each fast-path option changes, against eager float32.

For one image and a box and a point prompt, every option set is applied to the same model and
compared with the eager float32 model (the official computation): the embeddings' max absolute
difference and relative L2 error, the share of mask pixels that agree (logits > 0, all multimask
outputs at the low-res 256 x 256 scale), and the largest logit and IoU-prediction differences.
Run it on your checkpoint and an image of your own before relying on a non-exact option.

Weights (:func:`effvit_sam.weights.resolve_model`): ``--checkpoint PATH``, else the official
file of ``--model`` in the local Hugging Face cache, else the bundled model of that name, else
random weights (seed 0), which are allowed here as the tool only compares two computations of
the same weights; the printed heading says which weights were used. ``--random-weights`` skips
the search.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..inference.epilogue import onednn_conv_available
from ..inference.optimize import FastPathOptions, optimize_for_inference
from ..io import read_image
from ..modeling import EfficientViTSam

_E = FastPathOptions.eager()
OPTION_SETS: dict[str, FastPathOptions] = {
    "fold_bn": _E.with_(fold_bn=True),
    "fuse_epilogues": _E.with_(fuse_epilogues=True),
    "fuse_model": _E.with_(fold_bn=True, fuse_epilogues=True),
    "channels_last": _E.with_(channels_last=True),
    "winograd": _E.with_(channels_last=True, winograd=True),
    "gemm_pointwise": _E.with_(channels_last=True, gemm_pointwise=True),
    "fuse_neck": _E.with_(channels_last=True, fuse_neck=True),
    "compiled_gelu": _E.with_(fuse_epilogues=True, compiled_gelu=True),
    "fast_decoder": _E.with_(fast_decoder=True),
    "auto": FastPathOptions.auto("cpu"),
    "exact": FastPathOptions.exact("cpu"),
    "compile": FastPathOptions.auto("cpu").with_(compile=True),
    "quantize_decoder": FastPathOptions.exact("cpu").with_(quantize_decoder=True),
    "bf16": FastPathOptions.bf16(),
    "int8": FastPathOptions.int8(),
}

if onednn_conv_available():  # torch builds without oneDNN cannot run it
    OPTION_SETS["onednn_epilogues"] = _E.with_(fold_bn=True, fuse_epilogues=True,
                                               onednn_epilogues=True)

# Left out of the default list: inductor compiles for minutes on a small CPU, and bf16 is
# emulated (slow) on CPUs without bf16 units.
SLOW_OPTION_SETS = ("compile", "int8", "bf16")


@dataclass
class OptionAccuracy:
    name: str
    embed_max_abs: float
    embed_rel_l2: float
    masks_equal: dict[str, float]  # prompt -> share of equal low-res mask pixels
    logit_max_abs: float
    iou_max_abs: float

    def row(self) -> str:
        masks = " | ".join(f"{100 * v:.3f}%" for v in self.masks_equal.values())
        return (f"| {self.name} | {self.embed_max_abs:.1e} | {100 * self.embed_rel_l2:.4f}% | "
                f"{masks} | {self.logit_max_abs:.1e} | {self.iou_max_abs:.1e} |")


def _prompts(encoder_input_size: tuple[int, int]) -> dict[str, dict]:
    """A centred box and a point, in the 1024 prompt frame of an image of that size."""
    h, w = encoder_input_size
    box = torch.tensor([[w * 0.25, h * 0.25, w * 0.7, h * 0.65]])
    point = (torch.tensor([[[w * 0.5, h * 0.45]]]), torch.tensor([[1]]))
    return {"box": {"points": None, "boxes": box}, "point": {"points": point, "boxes": None}}


@torch.no_grad()
def measure(model: EfficientViTSam, x: torch.Tensor, names: list[str], *,
            calibration: torch.Tensor | None = None) -> list[OptionAccuracy]:
    """Each option set in ``names`` against ``model`` (eager float32) on encoder input ``x``."""
    unknown = [n for n in names if n not in OPTION_SETS]
    if unknown:
        raise ValueError(f"unknown option sets {unknown}; choose from {list(OPTION_SETS)}")
    model = model.eval()
    prompts = _prompts((1024, 1024))
    ref = model.image_encoder(x)
    ref_out = {k: model.decode(ref, mask_input=None, multimask_output=True, **kw)
               for k, kw in prompts.items()}
    results = []
    for name in names:
        opts = OPTION_SETS[name]
        calib = None
        if opts.int8_encoder:
            calib = calibration if calibration is not None else x
        fast = optimize_for_inference(model, options=opts, calibration=calib)
        emb = fast.image_encoder(x)
        equal, logit, iou = {}, 0.0, 0.0
        for k, kw in prompts.items():
            lo, io = fast.decode(emb, mask_input=None, multimask_output=True, **kw)
            lr, ir = ref_out[k]
            equal[k] = ((lo > 0) == (lr > 0)).float().mean().item()
            logit = max(logit, (lo - lr).abs().max().item())
            iou = max(iou, (io - ir).abs().max().item())
        results.append(OptionAccuracy(name, (emb - ref).abs().max().item(),
                                      ((emb - ref).norm() / ref.norm()).item(), equal, logit, iou))
    return results


def markdown(results: list[OptionAccuracy]) -> str:
    lines = ["| options | embeddings max abs diff | relative L2 | box masks equal | "
             "point masks equal | max logit diff | max IoU diff |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    return "\n".join(lines + [r.row() for r in results]) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="effvit-sam fastpath-accuracy",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="l0")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="weights file or save_pretrained folder (default: the official file "
                             "in the Hugging Face cache, else random weights, said so)")
    parser.add_argument("--random-weights", action="store_true",
                        help="random weights (seed 0) without looking for any")
    parser.add_argument("--image", type=Path, default=None,
                        help="an image to encode (default: a made scene)")
    parser.add_argument("--options", nargs="+", choices=list(OPTION_SETS),
                        default=[n for n in OPTION_SETS if n not in SLOW_OPTION_SETS],
                        help=f"default: all but {', '.join(SLOW_OPTION_SETS)} (slow: compiling, "
                             "or bf16 emulated on CPUs without bf16 units)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    return args


def _image(path: Path | None) -> np.ndarray:
    if path is not None:
        try:
            return read_image(path)
        except (FileNotFoundError, ValueError) as err:
            raise UserError(f"--image: {err}") from None
    rng = np.random.default_rng(0)  # smooth colour blobs: structure, unlike white noise
    yy, xx = np.mgrid[0:480, 0:640]
    image = np.zeros((480, 640, 3), np.float64)
    for _ in range(12):
        cy, cx, r = rng.uniform(0, 480), rng.uniform(0, 640), rng.uniform(30, 150)
        image += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None] \
            * rng.uniform(0, 255, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def main(argv: list[str]) -> int:
    from ..geometry import preprocess_image
    from ..weights import resolve_model

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    image = _image(args.image)
    model, weights = resolve_model(args.model, checkpoint=args.checkpoint,
                                   random_weights=args.random_weights, require_weights=False)
    x = preprocess_image(image, model.encoder_size)
    calibration = torch.cat([x, x.flip(-1), x.flip(-2), x.roll(x.shape[-1] // 5, -1)])
    results = measure(model, x, args.options, calibration=calibration)
    print(f"{weights.model}, {weights.description}, image {args.image or 'made scene'}:\n")
    print(markdown(results))
    return 0
