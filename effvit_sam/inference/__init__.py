"""What rewrites a trained model for speed; nothing here changes what the model computes
beyond float rounding, except the opt-in lossy options (int8), whose accuracy is measured.

* :mod:`.optimize` - :class:`FastPathOptions` and :func:`optimize_for_inference`, the entry point;
* :mod:`.fuse` - BatchNorm folding (``fuse``) and the fused inference model (``fuse_model``);
* :mod:`.epilogue` - GELU and residual adds in place in each conv's output buffer;
* :mod:`.gelu` - the epilogue GELU as one compiled in-place loop;
* :mod:`.convs` - Winograd F(4x4, 3x3) and 1x1-as-GEMM convolutions;
* :mod:`.neck` - the neck's upsample-and-sum as accumulating GEMMs, one-pass LayerNorm2d;
* :mod:`.quantize` - the static int8 encoder (torchao PT2E);
* :mod:`.cpu_memory` - keeping freed memory for reuse (glibc ``mallopt``);
* :mod:`.cpu_features` - what this CPU has (AVX2/AVX-512/VNNI/AMX, NEON/SVE/BF16) and the
  per-tier choices ``FastPathOptions.auto`` makes from it.
"""

from .fuse import fuse, fuse_model
from .optimize import FastImageEncoder, FastPathOptions, optimize_for_inference

__all__ = ["FastImageEncoder", "FastPathOptions", "fuse", "fuse_model", "optimize_for_inference"]
