"""The tanh-form GELU as one compiled in-place CPU loop.

The official models use ``GELU(approximate="tanh")``: ``0.5 x (1 + tanh(u))`` with
``u = sqrt(2/pi) (x + 0.044715 x^3)``. PyTorch's CPU kernel evaluates ``tanh`` with a
1-ulp vector routine that costs about 2 ns per element on a 2-core AVX2 machine, which makes
GELU 20% of an L0 encoder call once the convolutions are fast. The same function is
``x * sigmoid(2u)``; ``torch.compile`` (inductor) turns that form into one C++ loop over the
tensor, in place, twice as fast (README). Rounding differs from PyTorch's kernel by about
5e-7 per element.

It needs what ``torch.compile`` needs on CPU: a C++ compiler. The kernel is compiled once per
process (dynamic shapes) on first use; if compiling fails, a warning is logged and PyTorch's
own ``gelu_`` is used from then on, so a machine without a compiler loses speed, never work.
"""

from __future__ import annotations

import logging
import math
import os
import shutil

import torch

log = logging.getLogger(__name__)

_K = 2 * math.sqrt(2 / math.pi)  # sigmoid(2u) == 0.5 (1 + tanh(u))
_K3 = _K * 0.044715

_state: dict = {"fn": None, "failed": False}


def cxx_compiler_available() -> bool:
    """Whether a C++ compiler for inductor's CPU kernels is on this machine."""
    candidates = [os.environ.get("CXX"), "c++", "g++", "clang++"]
    return any(c and shutil.which(c) for c in candidates)


def _gelu_sigmoid_(t: torch.Tensor) -> torch.Tensor:
    return t.copy_(t * torch.sigmoid(t * (_K + _K3 * t * t)))


def reference_gelu_(t: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_(t, approximate="tanh")


def gelu_tanh_(t: torch.Tensor) -> torch.Tensor:
    """``GELU(approximate="tanh")`` of ``t`` in place (CPU: the compiled loop; elsewhere, or
    when compiling failed: PyTorch's ``gelu_``). Inference only: no autograd."""
    if t.device.type != "cpu" or _state["failed"]:
        return reference_gelu_(t)
    if _state["fn"] is None:
        _state["fn"] = torch.compile(_gelu_sigmoid_, dynamic=True)
    try:
        return _state["fn"](t)
    except Exception as err:  # noqa: BLE001 - any compiler failure falls back, loudly
        _state["failed"] = True
        log.warning("compiled GELU unavailable (%s: %s); using PyTorch's gelu_",
                    type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return reference_gelu_(t)
