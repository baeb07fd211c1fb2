"""``effvit-sam demo`` / ``python -m demo``: load a model and serve the page.

Weights follow :func:`effvit_sam.weights.resolve_model`: ``--checkpoint PATH`` (a weights file
or a ``save_pretrained`` folder, loaded strictly); ``--random-weights`` (no weights at all; the
page shows a red "random weights: masks are meaningless" banner); otherwise the official
checkpoint of ``--model`` from the local Hugging Face cache, then from the hub unless
``--offline``, then the bundled model of that name (the page says "bundled model trained on
synthetic scenes"). Without ``--model``: l0 if its official file is found, else the bundled
model. If none is found the command stops with a message naming the ways out: it never falls
back to random weights on its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import torch

from effvit_sam import list_models
from effvit_sam.errors import UserError
from effvit_sam.modeling import EfficientViTSam
from effvit_sam.weights import WeightsInfo, resolve_device, resolve_model

from .upload import DEFAULT_MAX_PIXELS

logger = logging.getLogger(__name__)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="effvit-sam demo", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None,
                   help=f"model name ({', '.join(list_models())}); default: l0 if its official "
                        "file is found, else the bundled model")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", type=Path, default=None,
                         help="weights file for --model (loaded strictly)")
    weights.add_argument("--random-weights", action="store_true",
                         help="run without trained weights (the page says masks are meaningless)")
    p.add_argument("--offline", action="store_true",
                   help="only look in the local Hugging Face cache, never download")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    p.add_argument("--points-per-side", type=int, default=32,
                   help="grid of the 'everything' mode (points_per_side^2 prompts)")
    p.add_argument("--session-ttl", type=float, default=1800.0,
                   help="seconds an idle tab keeps its image and embedding")
    p.add_argument("--max-sessions", type=int, default=32,
                   help="sessions kept in memory at most (least recently used dropped first)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="largest upload in pixels (W x H); larger ones are refused with a message")
    args = p.parse_args(argv)
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    for flag, value in (("--points-per-side", args.points_per_side),
                        ("--max-sessions", args.max_sessions),
                        ("--max-pixels", args.max_pixels),
                        ("--session-ttl", args.session_ttl)):
        if value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    return args


def load_model(name: str | None, *, checkpoint: Path | None, random_weights: bool,
               offline: bool, device: torch.device | None) -> tuple[EfficientViTSam, WeightsInfo]:
    """The model and where its weights came from (``info.description`` is shown on the page).

    Downloads the official file only without ``offline``. Raises :class:`UserError` (unknown
    model, bad checkpoint, nothing found without ``random_weights``).
    """
    return resolve_model(name, checkpoint=checkpoint, random_weights=random_weights,
                         device=device, allow_download=not offline)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    # Weights before gradio is imported: a bad --model or --checkpoint fails in a second.
    device = resolve_device(args.device)
    model, weights = load_model(args.model, checkpoint=args.checkpoint,
                                random_weights=args.random_weights, offline=args.offline,
                                device=device)
    print(weights.description, flush=True)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a demo
    from .app import build_app
    from .session import DemoBackend

    backend = DemoBackend(model=model, model_name=weights.model, weights=weights.description,
                          random_weights=weights.is_random, device=device,
                          points_per_side=args.points_per_side, max_pixels=args.max_pixels,
                          bundled=weights.kind == "bundled")
    app = build_app(backend, session_ttl=args.session_ttl)
    app.queue()
    app.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True,
               state_session_capacity=args.max_sessions, quiet=True, show_error=True)
    print(f"effvit-sam demo: {backend.model_name} running at {app.local_url}", flush=True)
    # SIGTERM (a service manager, a test) ends like Ctrl-C: the server closes and exit handlers
    # delete the sessions' download folders.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        app.block_thread()
    finally:
        app.close()
    return 0
