"""``python -m distill export-pretrained --checkpoint RUN/checkpoint.pt --out DIR``: the model of
a (possibly unfinished) training checkpoint as a ``save_pretrained`` folder, so that any step
can be scored by ``effvit-sam eval`` while the run goes on."""

from __future__ import annotations

import argparse
import json


def export_main(argv: list[str]) -> int:
    import torch

    from effvit_sam import build_sam
    from effvit_sam.checkpoint import load_checkpoint, save_pretrained
    from effvit_sam.configs import SamConfig

    parser = argparse.ArgumentParser(prog="python -m distill export-pretrained",
                                     description="a training checkpoint's model as a folder")
    parser.add_argument("--checkpoint", required=True, help="a run's checkpoint.pt")
    parser.add_argument("--out", required=True, help="output save_pretrained folder")
    args = parser.parse_args(argv)
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model = build_sam(SamConfig.from_dict(ckpt["model_config"]))
    load_checkpoint(model, ckpt["model"])  # strict; refuses non-finite weights
    out = save_pretrained(model, args.out)
    print(json.dumps({"step": int(ckpt["step"]), "out": str(out)}))
    return 0
