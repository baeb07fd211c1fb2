"""int8 on CPU (opt-in): static int8 of the image encoder (needs ``torchao``), and dynamic int8
of the mask decoder's linear layers (:func:`quantize_linear_int8`).

The encoder is 75-80% convolution on CPU, already near this class of CPU's float32 peak, so the
one large remaining step is doing the convolutions in int8. This uses PyTorch's PT2E flow from
``torchao``: ``torch.export`` of the (BN-folded) encoder, ``X86InductorQuantizer`` (int8
per-channel symmetric weights, uint8 per-tensor activations) calibrated on the caller's images,
``convert_pt2e``, then inductor with weight freezing, which lowers the quantised patterns to
oneDNN int8 convolutions.

On CPUs without VNNI (this one: AVX2 only) oneDNN's int8 convolutions add u8 x s8 products in
saturating 16-bit sums, so activations are quantised to 7 bits there (``reduce_range``); with 8
bits the compiled kernels drifted 26% from the quantised model's own arithmetic in a two-conv
test. Accuracy is not exact: it depends on the weights and on how well the calibration images
represent the real ones. Figures on the reference's deterministic L0 weights are in the README;
check it on your own data before relying on it.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

log = logging.getLogger(__name__)


def _require_torchao():
    try:
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as err:
        raise ImportError("int8 encoder quantisation needs torchao: "
                          "pip install 'effvit-sam[quant]' (or pip install torchao)") from err
    return prepare_pt2e, convert_pt2e, allow_exported_model_train_eval, xiq


def has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI or AVX-VNNI)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    except OSError:
        pass
    return False  # unknown: the safe choice is the reduced range


def check_calibration(calibration: torch.Tensor, img_size: int) -> torch.Tensor:
    """``N x 3 x S x S`` float32 encoder inputs (already preprocessed), N >= 1."""
    if not isinstance(calibration, torch.Tensor):
        raise TypeError("calibration must be a tensor of preprocessed encoder inputs "
                        f"(N x 3 x {img_size} x {img_size}), got {type(calibration).__name__}; "
                        "effvit_sam.geometry.preprocess_image turns images into them")
    if calibration.ndim != 4 or calibration.shape[1:] != (3, img_size, img_size) \
            or calibration.shape[0] < 1:
        raise ValueError(f"calibration must be N x 3 x {img_size} x {img_size} with N >= 1, "
                         f"got {tuple(calibration.shape)}")
    if not calibration.is_floating_point():
        raise ValueError(f"calibration must be float (normalised encoder inputs), "
                         f"got {calibration.dtype}")
    return calibration.float()


def quantize_encoder_int8(encoder: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """The int8-quantised (not yet compiled) copy of ``encoder``, calibrated on ``calibration``.

    ``encoder`` must be an inference (eval, BN-folded or not) image encoder with ``img_size``;
    it is not modified. The result is a ``torch.fx.GraphModule`` whose float execution simulates
    the int8 arithmetic; compile it with inductor's freezing to get the int8 kernels (the fast
    path does). Inputs of any batch size are accepted.
    """
    prepare_pt2e, convert_pt2e, allow_exported_model_train_eval, xiq = _require_torchao()
    size = int(encoder.img_size)
    calibration = check_calibration(calibration, size)
    start = time.perf_counter()
    example = calibration[:1].expand(2, -1, -1, -1)  # batch 2: a size-1 dim would be specialised
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        exported = torch.export.export(encoder.eval(), (example,),
                                       dynamic_shapes=({0: batch},)).module()
    quantizer = xiq.X86InductorQuantizer()
    # Without VNNI, oneDNN's int8 kernels multiply u8 x s8 pairs into saturating int16 sums;
    # 7-bit activations (reduce_range) keep those sums in range. Measured here (AVX2): a conv
    # pair compiled with 8-bit activations was 26% off its own quantised reference, 0.1% with 7.
    reduce_range = not has_vnni()
    quantizer.set_global(
        xiq.get_default_x86_inductor_quantization_config(reduce_range=reduce_range))
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for image in calibration.split(1):
            prepared(image)
    quantized = convert_pt2e(prepared)
    # An exported graph refuses .train()/.eval() unless told how; the model wrapping it calls
    # .eval(), which for this graph (no dropout, BN folded) changes nothing.
    allow_exported_model_train_eval(quantized)
    quantized.img_size = size
    log.info("int8 encoder (%s-bit activations) calibrated on %d images in %.1fs",
             7 if reduce_range else 8, len(calibration), time.perf_counter() - start)
    return quantized


def quantize_linear_int8(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose ``nn.Linear`` layers run as dynamic int8 (weights int8 per
    tensor, activations quantised per call): the opt-in ``quantize_decoder`` of the fast path."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)
