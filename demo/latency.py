"""Click-to-mask latency of the demo's handlers, in process: ``python -m demo.latency``.

Encodes one example image once (the upload handler), then times ``clicks`` point clicks (the
click handler: prompt bookkeeping, decoder, mask upscaling, and drawing the overlay that goes back
to the page). Random weights by default: timing does not depend on the weights' values.
Prints the first encode, the median click, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from effvit_sam import build_sam

from .app import example_images
from .session import DemoBackend


def measure(model_name: str, image: np.ndarray, *, clicks: int = 20, seed: int = 0,
            device: torch.device | None = None) -> dict[str, float]:
    """``{"encode_ms", "click_median_ms", "decoder_median_ms"}`` for ``clicks`` random clicks.

    Each click starts from a cleared prompt set, so every timing is one single-point decode.
    """
    backend = DemoBackend(model=build_sam(model_name, device=device), model_name=model_name,
                          weights="random weights", random_weights=True, device=device)
    session = backend.new_session(image)
    rng = np.random.default_rng(seed)
    h, w = session.image_size
    totals, decoder = [], []
    for _ in range(clicks):
        backend.clear(session)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        start = time.perf_counter()
        backend.click(session, x, y, mode="point", background=False, multimask=True)
        backend.overlay(session)
        backend.status(session)
        totals.append((time.perf_counter() - start) * 1000)
        decoder.append(session.decode_ms)
    return {"encode_ms": session.encode_ms, "click_median_ms": statistics.median(totals),
            "decoder_median_ms": statistics.median(decoder)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.latency", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="efficientvit-sam-l0")
    p.add_argument("--image", type=Path, default=None, help="default: the first bundled example")
    p.add_argument("--clicks", type=int, default=20)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.clicks < 1:
        p.error("--clicks must be positive")
    path = args.image or example_images()[0]
    image = np.asarray(Image.open(path).convert("RGB"))
    r = measure(args.model, image, clicks=args.clicks, device=torch.device(args.device))
    print(f"{args.model} on {path.name} ({image.shape[1]}x{image.shape[0]}), {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"first encode (upload handler)  {r['encode_ms']:9.1f} ms")
    print(f"click, median of {args.clicks:<3}         {r['click_median_ms']:9.1f} ms "
          f"(decoder + upscale {r['decoder_median_ms']:.1f} ms, rest: overlay drawing)")
    print(f"encode / click                 {r['encode_ms'] / r['click_median_ms']:9.1f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
