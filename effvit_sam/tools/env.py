"""``effvit-sam env``: this machine, this torch build, and what the fast path picks here and why.

Prints the CPU (model, logical cores, the threads torch uses), the torch build (version, CUDA,
oneDNN and MKL, the vector kernels ATen runs), the detected CPU features
(:mod:`effvit_sam.inference.cpu_features`) and every field of ``FastPathOptions.auto(device)``
with the reason for its value. Paste it into a bug report or a benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re

import torch

from ..errors import UserError
from ..inference import mask_upscale
from ..inference.cpu_features import detect_cpu_features
from ..inference.optimize import FastPathOptions


def _onednn_version() -> str:
    if not torch.backends.mkldnn.is_available():
        return "not built in"
    found = re.search(r"MKL-DNN v([\w.]+)", torch.__config__.show())
    return f"v{found.group(1)}" if found else "built in (version not reported)"


def _cuda_line() -> str:
    if torch.version.cuda is None:
        return "CUDA: not built in"
    if not torch.cuda.is_available():
        return f"CUDA {torch.version.cuda} built in, no device visible"
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return f"CUDA {torch.version.cuda}: {names}"


def machine_lines() -> list[str]:
    """The machine and torch build, one fact per line."""
    f = detect_cpu_features()
    return [
        f"machine: {f.model_name} ({f.arch}), {os.cpu_count()} logical CPUs; torch uses "
        f"{torch.get_num_threads()} threads ({torch.get_num_interop_threads()} inter-op)",
        f"torch: {torch.__version__}; {_cuda_line()}; oneDNN {_onednn_version()}; "
        f"MKL {'yes' if torch.backends.mkl.is_available() else 'no'}; "
        f"ATen CPU kernels {torch.backends.cpu.get_cpu_capability()}",
        f"cpu features: {f.summary()}",
        mask_upscale_line(),
    ]


def mask_upscale_line() -> str:
    """Which code turns the fast predictor's and generator's logits into masks on the CPU."""
    if mask_upscale.available():
        return (f"mask upscaling (CPU): compiled, straight to boolean masks (numba "
                f"{mask_upscale.numba.__version__})")
    return (f"mask upscaling (CPU): ATen's interpolate, then a threshold (numba unavailable: "
            f"{mask_upscale.unavailable_reason()})")


def _value(v: object) -> str:
    return str(v).replace("torch.", "") if isinstance(v, torch.dtype) else repr(v)


def auto_lines(device: str) -> list[str]:
    """Each ``FastPathOptions.auto(device)`` field, its value and why."""
    opts, why = FastPathOptions.auto_explained(device)
    names = [f.name for f in dataclasses.fields(FastPathOptions)]
    missing = [n for n in names if n not in why]
    if missing:  # a field added without a reason: say so rather than print a blank
        raise RuntimeError(f"FastPathOptions.auto_explained gives no reason for {missing}")
    width = max(map(len, names))
    lines = [f"FastPathOptions.auto({device!r}):"]
    for name in names:
        value = _value(getattr(opts, name))
        lines.append(f"  {name:<{width}} = {value:<8} {why[name]}")
    return lines


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="effvit-sam env", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu",
                        help="the device whose fast-path choice to explain (default: cpu)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise UserError(f"--device {args.device!r}: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device is visible")
    print("\n".join(machine_lines() + [""] + auto_lines(device.type)))
    return 0
