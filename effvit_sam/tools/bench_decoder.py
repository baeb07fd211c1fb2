"""``effvit-sam bench-decoder``: the many-prompt decoder and everything mode against the official
computation, in one process on the same weights, reported as ratios and masks matched.

The official computation is what the official code runs on our weights: the eager float32 model,
SAM's ``MaskDecoder`` as shipped, and ``segment_anything.SamAutomaticMaskGenerator``'s algorithm
over a plain predictor (:class:`OfficialPredictor`: ``EfficientViTSamPredictor(fast=False)``
behind ``SamPredictor``'s interface). Ours is the default fast path
(:class:`effvit_sam.inference.decoder.FastMaskDecoder` included). Three measurements:

* ``decoder``: prompts/s of one decoder call on ``--decoder-batch`` single-point prompts, SAM's
  ``MaskDecoder`` vs ``FastMaskDecoder`` on the same embedding;
* ``boxes``: ``--boxes`` boxes in one ``predict(boxes=B x 4)`` call vs one official call per box;
* ``everything``: the mask generator with ``--points-per-side`` at SAM's default thresholds, at
  0 with NMS on and at 0 with NMS off, ours with and without ``low_res_stability``; "matched"
  counts the official records that one of ours covers at mask IoU >= 0.9.

Plus an accuracy table: what each decoder option changes against SAM's decoder in float32
(largest logit and IoU differences, share of equal low-res mask pixels). Runs alternate
official/ours ``--runs`` times; figures are medians. Prints Markdown; ``--out`` also writes JSON.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.transforms import ResizeLongestSide

from ..automatic import EfficientViTSamAutomaticMaskGenerator
from ..inference.decoder import FastMaskDecoder
from ..inference.optimize import FastPathOptions
from ..predictor import EfficientViTSamPredictor
from .bench import PeakMemory

log = logging.getLogger(__name__)

MATCH_IOU = 0.9
ZERO_THRESHOLDS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
EVERYTHING_SETTINGS = (("default thresholds", {}), ("thresholds 0", ZERO_THRESHOLDS),
                       ("thresholds 0, NMS off", {**ZERO_THRESHOLDS, "box_nms_thresh": 1.0}))
"""Everything-mode rows: SAM's defaults; no candidate dropped before NMS; and none dropped at all
(every grid point's three masks reach the records, as issue #18 measured the baseline)."""


class OfficialPredictor:
    """``SamPredictor``'s interface (what ``SamAutomaticMaskGenerator`` calls) over the plain
    eager predictor: the official computation on an EfficientViT-SAM model."""

    def __init__(self, model: torch.nn.Module, *, device: str | torch.device | None = None) -> None:
        self._predictor = EfficientViTSamPredictor(model, device=device, fast=False)
        self.model = self._predictor.model
        self.device = self._predictor.device
        self.transform = ResizeLongestSide(self._predictor.prompt_frame)

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        self._predictor.set_image(image, image_format)

    def reset_image(self) -> None:
        self._predictor.reset_image()

    def predict(self, *args, **kwargs):
        return self._predictor.predict(*args, **kwargs)

    def predict_torch(self, *args, **kwargs):
        return self._predictor.predict_torch(*args, **kwargs)


def official_generator(model: torch.nn.Module, **options) -> SamAutomaticMaskGenerator:
    """``SamAutomaticMaskGenerator(**options)`` running on :class:`OfficialPredictor`."""
    generator = SamAutomaticMaskGenerator(model, **options)
    generator.predictor = OfficialPredictor(model)
    return generator


def _rle(record: dict) -> dict:
    seg = record["segmentation"]
    counts = seg["counts"]
    return {"size": list(seg["size"]), "counts": counts.encode() if isinstance(counts, str)
            else counts}


def _point_key(record: dict) -> tuple:
    return tuple(np.round(np.asarray(record.get("point_coords", []), float), 3).ravel())


def masks_matched(reference: list[dict], ours: list[dict], *, iou: float = MATCH_IOU) -> int:
    """How many ``reference`` records (``coco_rle`` output) one of ``ours`` covers at mask
    IoU >= ``iou``."""
    from pycocotools import mask as mask_utils

    if not reference or not ours:
        return 0
    ours_rles = [_rle(r) for r in ours]
    # Cheap checks first, so that thousands of records need no all-pairs IoU (3072 x 3072
    # full-image RLEs take pycocotools about an hour): identical RLEs, then the records of ours
    # from the same grid point (both generators record it; NMS may order near-ties differently).
    exact = {(tuple(r["size"]), r["counts"]) for r in ours_rles}
    by_point: dict[tuple, list[int]] = {}
    for j, r in enumerate(ours):
        by_point.setdefault(_point_key(r), []).append(j)
    rest = []
    for r in reference:
        rle = _rle(r)
        if (tuple(rle["size"]), rle["counts"]) in exact:
            continue
        same = [ours_rles[j] for j in by_point.get(_point_key(r), [])]
        if same and max(mask_utils.iou(same, [rle], [0])[:, 0]) >= iou:
            continue
        rest.append(rle)
    matched = len(reference) - len(rest)
    if rest:
        ious = mask_utils.iou(ours_rles, rest, [0] * len(rest))
        matched += int((np.asarray(ious).max(axis=0) >= iou).sum())
    return matched


def scene(height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """A made photo-like ``H x W x 3`` image: a shaded background with overlapping shapes."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 140, width)[None, :, None] + np.linspace(0, 60, height)[:, None, None]
    canvas = Image.fromarray(np.clip(ramp * [0.6, 0.8, 1.0], 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(24):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(0.05, 0.3) * width, rng.uniform(0.05, 0.3) * height
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x0 + w, y0 + h), fill=fill)
    noise = rng.normal(0, 6, (height, width, 3))
    blurred = np.asarray(canvas.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float64)
    return np.clip(blurred + noise, 0, 255).astype(np.uint8)


def _median_times(fns: dict[str, Callable[..., object]], runs: int, device: torch.device,
                  *args: object) -> tuple[dict[str, float], dict[str, float], dict]:
    """``fn(*args)`` alternating over ``fns`` ``runs`` times; median seconds, largest peak MiB
    and the last result per name."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    peaks = dict.fromkeys(fns, 0.0)
    results = {}
    for _ in range(runs):
        for name, fn in fns.items():
            with PeakMemory(device) as mem:
                start = time.perf_counter()
                results[name] = fn(*args)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[name].append(time.perf_counter() - start)
            peaks[name] = max(peaks[name], mem.peak_mb)
    return {k: statistics.median(v) for k, v in times.items()}, peaks, results


def decoder_accuracy(model: torch.nn.Module, embedding: torch.Tensor, *, prompts: int = 64,
                     seed: int = 0) -> list[dict]:
    """Each decoder option against SAM's ``MaskDecoder`` in float32 on random point and box
    prompts: largest |logit| and |IoU| differences, share of equal low-res mask pixels."""
    gen = torch.Generator().manual_seed(seed)
    pe = model.prompt_encoder
    frame = float(pe.input_image_size[0])
    points = (torch.rand(prompts, 2, 2, generator=gen) * frame,
              torch.randint(0, 2, (prompts, 2), generator=gen))
    corners = torch.sort(torch.rand(prompts, 2, 2, generator=gen) * frame, dim=1).values
    rows = []
    options = {"fast_decoder (float32)": FastMaskDecoder(model.mask_decoder),
               "fast_decoder, decoder_dtype bf16 (opt-in)":
                   FastMaskDecoder(model.mask_decoder, autocast_dtype=torch.bfloat16)}
    with torch.inference_mode():
        for prompt, kw in (("points", {"points": points, "boxes": None}),
                           ("boxes", {"points": None, "boxes": corners.reshape(prompts, 4)})):
            sparse, dense = pe(masks=None, **kw)
            for multimask in (True, False):
                args = (embedding, pe.get_dense_pe(), sparse, dense, multimask)
                want_logits, want_iou = model.mask_decoder(*args)
                for name, decoder in options.items():
                    logits, iou = decoder(*args)
                    rows.append({
                        "option": name, "prompts": f"{prompts} {prompt}",
                        "multimask": multimask,
                        "logit_max_abs": float((logits - want_logits).abs().max()),
                        "iou_max_abs": float((iou - want_iou).abs().max()),
                        "mask_agreement": float(((logits > 0) == (want_logits > 0))
                                                .float().mean()),
                    })
    return rows


def _bench_decoder(model, embedding: torch.Tensor, batch: int, runs: int,
                   device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(1)
    pe = model.prompt_encoder
    coords = torch.rand(batch, 1, 2, generator=gen) * float(pe.input_image_size[0])
    labels = torch.ones(batch, 1, dtype=torch.int)
    fast = FastMaskDecoder(model.mask_decoder)
    with torch.inference_mode():
        sparse, dense = pe(points=(coords.to(device), labels.to(device)), boxes=None, masks=None)
        args = (embedding, pe.get_dense_pe(), sparse, dense, True)
        times, peaks, out = _median_times({"official": lambda: model.mask_decoder(*args),
                                           "ours": lambda: fast(*args)}, runs, device)
    diff = float((out["official"][0] - out["ours"][0]).abs().max())
    return {"batch": batch, "official_s": times["official"], "ours_s": times["ours"],
            "official_prompts_per_s": batch / times["official"],
            "ours_prompts_per_s": batch / times["ours"],
            "x_vs_official": times["official"] / times["ours"], "logit_max_abs": diff,
            "official_peak_mb": peaks["official"], "ours_peak_mb": peaks["ours"]}


def _bench_boxes(model, image: np.ndarray, count: int, runs: int, device: torch.device) -> dict:
    rng = np.random.default_rng(2)
    h, w = image.shape[:2]
    xy = np.sort(rng.uniform(0, 1, (count, 2, 2)), axis=1) * [w, h]
    boxes = xy.reshape(count, 4)
    official = OfficialPredictor(model, device=device)
    ours = EfficientViTSamPredictor(model, device=device)
    bf16 = EfficientViTSamPredictor(model, device=device, fast=FastPathOptions.auto(device).with_(
        decoder_dtype=torch.bfloat16))  # the opt-in bf16 decoder, measured beside
    for predictor in (official, ours, bf16):
        predictor.set_image(image)

    def one_call_per_box():
        return np.stack([official.predict(box=b, multimask_output=False)[2] for b in boxes])

    times, peaks, out = _median_times(
        {"official": one_call_per_box,
         "ours": lambda: ours.predict(boxes=boxes, multimask_output=False)[2],
         "bf16": lambda: bf16.predict(boxes=boxes, multimask_output=False)[2]}, runs, device)
    want, got = out["official"], out["ours"]
    return {"boxes": count, "official_s": times["official"], "ours_s": times["ours"],
            "x_vs_official": times["official"] / times["ours"],
            "logit_max_abs": float(np.abs(want - got).max()),
            "mask_agreement": float(((want > 0) == (got > 0)).mean()),
            "official_peak_mb": peaks["official"], "ours_peak_mb": peaks["ours"],
            "bf16_decoder_s": times["bf16"], "bf16_x_vs_official": times["official"] /
            times["bf16"], "bf16_mask_agreement": float(((want > 0) == (out["bf16"] > 0)).mean())}


def _bench_everything(model, image: np.ndarray, args: argparse.Namespace,
                      device: torch.device) -> list[dict]:
    rows = []
    common = {"points_per_side": args.points_per_side, "points_per_batch": args.points_per_batch,
              "output_mode": "coco_rle"}
    for label, thresholds in EVERYTHING_SETTINGS:
        kw = {**common, **thresholds}
        official = official_generator(model, **kw)
        ours = EfficientViTSamAutomaticMaskGenerator(model, device=device, **kw)
        prefilter = EfficientViTSamAutomaticMaskGenerator(model, device=device,
                                                          low_res_stability=True, **kw)
        for generator in (ours, prefilter):  # warm up: the fast encoder compiles its GELU
            generator.predictor.set_image(image)
            generator.predictor.reset_image()
        times, peaks, out = _median_times(
            {"official": official.generate, "ours": ours.generate,
             "ours_low_res_stability": prefilter.generate}, args.runs, device, image)
        reference = out["official"]
        for name in ("ours", "ours_low_res_stability"):
            rows.append({"thresholds": label, "engine": name, "official_s": times["official"],
                         "ours_s": times[name], "x_vs_official": times["official"] / times[name],
                         "official_masks": len(reference), "ours_masks": len(out[name]),
                         "matched": masks_matched(reference, out[name]),
                         "official_peak_mb": peaks["official"], "ours_peak_mb": peaks[name]})
    return rows


def _markdown(result: dict) -> str:
    d = result["decoder"]
    lines = ["| decoder, batch | official prompts/s | ours prompts/s | x | logit max diff |",
             "|---|---|---|---|---|",
             f"| {d['batch']} single points | {d['official_prompts_per_s']:.1f} | "
             f"{d['ours_prompts_per_s']:.1f} | {d['x_vs_official']:.2f} | "
             f"{d['logit_max_abs']:.1e} |", ""]
    b = result["boxes"]
    lines += ["| boxes | official s (1 call/box) | ours s (1 call) | x | mask agreement | "
              "peak MiB official / ours |", "|---|---|---|---|---|---|",
              f"| {b['boxes']} | {b['official_s']:.2f} | {b['ours_s']:.2f} | "
              f"{b['x_vs_official']:.2f} | {100 * b['mask_agreement']:.3f}% | "
              f"{b['official_peak_mb']:.0f} / {b['ours_peak_mb']:.0f} |",
              f"| {b['boxes']}, decoder_dtype bf16 (opt-in) | {b['official_s']:.2f} | "
              f"{b['bf16_decoder_s']:.2f} | {b['bf16_x_vs_official']:.2f} | "
              f"{100 * b['bf16_mask_agreement']:.3f}% | – |", ""]
    lines += ["| everything | engine | official s | ours s | x | masks official / ours | "
              "matched (IoU >= 0.9) | peak MiB official / ours |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["everything"]:
        # With random weights the default thresholds can keep nothing: say so, not "100%".
        matched = (f"{r['matched']} ({100 * r['matched'] / r['official_masks']:.1f}%)"
                   if r["official_masks"] else "none to match")
        lines.append(f"| {r['thresholds']} | {r['engine']} | {r['official_s']:.2f} | "
                     f"{r['ours_s']:.2f} | {r['x_vs_official']:.2f} | {r['official_masks']} / "
                     f"{r['ours_masks']} | {matched} | "
                     f"{r['official_peak_mb']:.0f} / {r['ours_peak_mb']:.0f} |")
    lines += ["", "| option | prompts | multimask | logit max diff | IoU max diff | "
              "mask agreement |", "|---|---|---|---|---|---|"]
    for r in result["accuracy"]:
        lines.append(f"| {r['option']} | {r['prompts']} | {r['multimask']} | "
                     f"{r['logit_max_abs']:.1e} | {r['iou_max_abs']:.1e} | "
                     f"{100 * r['mask_agreement']:.4f}% |")
    return "\n".join(lines)


def run_benchmark(args: argparse.Namespace) -> dict:
    from ..build import build_sam
    from ..io import read_image

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.checkpoint is None:
        log.warning("no --checkpoint: random weights (masks are meaningless and the default "
                    "thresholds keep few of them; timings and agreement still hold)")
    model = build_sam(args.model, checkpoint=args.checkpoint).eval().to(device)
    if args.image is not None:
        image = read_image(args.image)
    else:
        height, width = args.size
        image = scene(height, width)
    predictor = EfficientViTSamPredictor(model, device=device, fast=False)
    predictor.set_image(image)
    embedding = predictor.get_image_embedding()
    result = {"model": args.model, "image_hw": list(image.shape[:2]),
              "threads": torch.get_num_threads(), "device": str(device),
              "points_per_side": args.points_per_side,
              "decoder": _bench_decoder(model, embedding, args.decoder_batch, args.runs, device),
              "boxes": _bench_boxes(model, image, args.boxes, args.runs, device),
              "everything": _bench_everything(model, image, args, device),
              "accuracy": decoder_accuracy(model, embedding, prompts=args.accuracy_prompts)}
    result["markdown"] = _markdown(result)
    return result


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--size must be WIDTHxHEIGHT, got {text!r}") from err
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"--size must be positive, got {text!r}")
    return h, w


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="effvit-sam bench-decoder",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="efficientvit-sam-l0")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--image", type=Path, default=None,
                        help="image to segment (default: a made scene of --size)")
    parser.add_argument("--size", type=_size, default=(768, 1024), help="WIDTHxHEIGHT of the "
                        "made scene (default 1024x768)")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--boxes", type=int, default=64)
    parser.add_argument("--decoder-batch", type=int, default=256)
    parser.add_argument("--accuracy-prompts", type=int, default=64,
                        help="random point and box prompts of the accuracy table")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write bench_decoder.json here")
    args = parser.parse_args(argv)
    for name in ("points_per_side", "points_per_batch", "boxes", "decoder_batch", "runs",
                 "accuracy_prompts"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str]) -> int:
    """``effvit-sam bench-decoder [--model NAME] [--checkpoint PATH] [--image PATH] ...``."""
    from ..io import write_json

    args = parse_args(argv)
    result = run_benchmark(args)
    print(result["markdown"])
    if args.out is not None:
        write_json(args.out / "bench_decoder.json", result)
    return 0
