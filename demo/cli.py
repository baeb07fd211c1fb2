"""``effvit-sam demo`` / ``python -m demo``: load a model and serve the page.

Weights, in order: ``--checkpoint PATH`` (strict load); ``--random-weights`` (no weights at all;
the page shows a red "random weights: masks are meaningless" banner); otherwise the official
checkpoint of ``--model`` from the local Hugging Face cache, then from the hub unless
``--offline``. If none is found the command stops with a message naming both options: it never
falls back to random weights on its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import torch

from effvit_sam import build_sam, from_pretrained, list_models
from effvit_sam.checkpoint import CheckpointError
from effvit_sam.configs import resolve_name
from effvit_sam.modeling import EfficientViTSam

logger = logging.getLogger(__name__)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="effvit-sam demo", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="efficientvit-sam-l0",
                   help=f"model name ({', '.join(list_models())})")
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
    args = p.parse_args(argv)
    try:
        args.model = resolve_name(args.model)
    except KeyError as err:
        p.error(str(err.args[0]))
    if not 1 <= args.port <= 65535:
        p.error(f"--port must be in 1..65535, got {args.port}")
    if args.points_per_side < 1 or args.max_sessions < 1 or args.session_ttl <= 0:
        p.error("--points-per-side, --max-sessions and --session-ttl must be positive")
    return args


def load_model(name: str, *, checkpoint: Path | None, random_weights: bool, offline: bool,
               device: torch.device) -> tuple[EfficientViTSam, str]:
    """The model and a short description of its weights, for the page.

    Raises ``SystemExit`` with a message when no trained weights can be found and random
    weights were not asked for.
    """
    name = resolve_name(name)
    if checkpoint is not None:
        return build_sam(name, checkpoint=checkpoint, device=device), f"checkpoint {checkpoint}"
    if random_weights:
        logger.warning("running %s with random weights: masks are meaningless", name)
        return build_sam(name, device=device), "random weights"
    try:
        model = from_pretrained(name, local_files_only=True)
        return model.to(device), "official weights from the Hugging Face cache"
    except (FileNotFoundError, CheckpointError) as err:
        local_error = err
    if not offline:
        try:
            return from_pretrained(name).to(device), "official weights (downloaded)"
        except (FileNotFoundError, CheckpointError) as err:
            local_error = err
    raise SystemExit(
        f"effvit-sam demo: no trained weights for {name} ({local_error}).\n"
        "Pass --checkpoint PATH, or --random-weights to try the page with random weights "
        "(it will say the masks are meaningless)."
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a demo
    from .app import build_app
    from .session import DemoBackend

    device = torch.device(args.device)
    model, weights = load_model(args.model, checkpoint=args.checkpoint,
                                random_weights=args.random_weights, offline=args.offline,
                                device=device)
    backend = DemoBackend(model=model, model_name=args.model, weights=weights,
                          random_weights=args.random_weights, device=device,
                          points_per_side=args.points_per_side)
    app = build_app(backend, session_ttl=args.session_ttl)
    app.queue()
    app.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True,
               state_session_capacity=args.max_sessions, quiet=True, show_error=True)
    print(f"effvit-sam demo: {backend.model_name} ({weights}) running at {app.local_url}",
          flush=True)
    # SIGTERM (a service manager, a test) ends like Ctrl-C: the server closes and exit handlers
    # delete the sessions' download folders.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        app.block_thread()
    finally:
        app.close()
    return 0
