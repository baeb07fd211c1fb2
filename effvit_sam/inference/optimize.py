"""The inference fast path: ``optimize_for_inference(model) -> model`` with the same interface.

Every option is a field of :class:`FastPathOptions`; :meth:`FastPathOptions.auto` picks the set
that measurably helps on a device type and, on CPU, on this CPU's instruction-set tier
(:mod:`effvit_sam.inference.cpu_features`; ``effvit-sam env`` prints the choice and the reason
for each field; figures in the README's speed section). Each option is tested against eager
float32 with a stated tolerance in ``tests/test_fastpath.py``:

* ``fold_bn`` - BatchNorm folded into convolutions (:func:`effvit_sam.inference.fuse.fuse`);
  exact up to float32 rounding (embeddings within 1e-4).
* ``fuse_epilogues`` - each conv's activation and residual add done in place in the conv's output
  buffer (:mod:`effvit_sam.inference.epilogue`): no activation-sized allocation per GELU or add,
  the same kernels, bit-identical results.
* ``channels_last`` - NHWC activations, which oneDNN's depthwise and 1x1 kernels prefer; exact up
  to rounding.
* ``winograd`` - stride-1 3x3 convolutions with at least ``winograd_min_channels`` channels
  computed as Winograd F(4x4, 3x3) (:mod:`effvit_sam.inference.convs`): 4x fewer
  multiplications, about 1e-5 relative rounding per convolution instead of 2e-6. Needs
  ``channels_last``.
* ``gemm_pointwise`` - 1x1 convolutions with at least ``gemm_min_in_channels`` input channels as
  one GEMM on the NHWC view (:mod:`effvit_sam.inference.convs`), where oneDNN's 1x1 kernel is
  2-3x slower. Needs ``channels_last``; exact up to rounding. Both widths are per CPU tier
  (:data:`effvit_sam.inference.cpu_features.CONV_THRESHOLDS`, chosen by ``auto``).
* ``fuse_neck`` - the neck's bicubic upsample-and-sum as two small GEMMs accumulating into one
  buffer, the final LayerNorm2d as one ``F.layer_norm`` (:mod:`effvit_sam.inference.neck`); exact up
  to rounding.
* ``compiled_gelu`` - each in-place epilogue GELU as one inductor-compiled C++ loop in the
  ``x * sigmoid(2u)`` form (:mod:`effvit_sam.inference.gelu`): half the time of PyTorch's tanh
  kernel, about 5e-7 rounding per element. Needs ``fuse_epilogues`` and a C++ compiler (auto:
  on for CPU when one is found; a failed compile logs a warning and falls back).
* ``compile`` - ``torch.compile`` (inductor) of the image encoder. On CPU it runs with inductor's
  weight freezing (constant-folded, prepacked oneDNN weights and conv+GELU epilogue fusion),
  enabled only around the compiled call, never globally. Embeddings within 1e-3.
* ``onednn_epilogues`` - each plain conv (not a Winograd/GEMM rewrite) with its residual add and
  activation as one oneDNN convolution with post-ops (:mod:`effvit_sam.inference.epilogue`; CPU,
  auto on the tiers where it was measured faster; under ``compile`` inductor's own fusion runs
  instead). Rounding of oneDNN's own GELU.
* ``autocast_dtype`` - bf16/fp16 autocast of the encoder on GPU, bf16 on CPU (oneDNN's bf16
  convolutions: AMX tiles or AVX512-BF16 where the CPU has them, emulated elsewhere), with the
  conv weights stored in bf16 once. Linear attention, LayerNorm and the bicubic upsampling run
  in float32 whatever the autocast dtype, as the official model requires. Excludes the float32
  rewrites ``winograd`` and ``gemm_pointwise``. Not exact (about 1e-2 relative L2 on
  embeddings, masks >= 99.5% equal on the reference and a trained model): ``auto`` on AMX and
  AVX512-BF16 CPUs, opt-in elsewhere (``FastPathOptions.bf16()``); ``FastPathOptions.exact()``
  never uses it.
* ``keep_freed_memory`` - make the process reuse freed CPU memory instead of page-faulting fresh
  memory for every large activation (:mod:`effvit_sam.inference.cpu_memory`; glibc Linux).
  Process-wide and applied on the first CPU encoder call; it changes no value, only where
  memory comes from.
* ``int8_encoder`` - static int8 quantisation of the image encoder, calibrated on images the
  caller passes, compiled by inductor into oneDNN int8 convolutions
  (:mod:`effvit_sam.inference.quantize`; CPU, needs ``torchao``, opt-in:
  ``FastPathOptions.int8()``). Not exact: about 6% relative embedding error and 98-99% mask
  agreement on the reference L0 weights (README; ``effvit-sam fastpath-accuracy`` measures it
  on yours).
* ``fast_decoder`` - SAM's mask decoder computed for many prompts at once
  (:class:`effvit_sam.inference.decoder.FastMaskDecoder`): what is the same for every prompt is
  computed once per image, the image-side attention projections in low rank, the upscaling as
  GEMMs; same weights and state-dict keys, low-res logits within 1e-3 of ``MaskDecoder`` in
  float32 (measured ~4e-7). On by default; not combined with ``quantize_decoder``, whose int8
  ``Linear`` layers it cannot read (that option keeps SAM's decoder, quantised).
* ``decoder_dtype`` - autocast dtype of the fast decoder's products (bf16 on CPU, through AMX
  tiles where the CPU has them; bf16/fp16 on GPU); outputs stay float32. Lossy and opt-in: its
  accuracy is printed by ``effvit-sam bench-decoder`` (README).
* ``quantize_decoder`` - dynamic int8 quantisation of the mask decoder's ``nn.Linear`` layers
  (CPU only; the encoder has no Linear layers). Changes masks slightly; off by default.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..modeling import EfficientViTSam
from .convs import convert_convs
from .cpu_features import (
    CONV_THRESHOLDS,
    FAST_DECODER_REASON,
    cpu_choices,
    detect_cpu_features,
)
from .cpu_memory import keep_freed_memory
from .decoder import FastMaskDecoder
from .epilogue import (
    fuse_epilogues,
    onednn_bf16_conv_available,
    onednn_conv_available,
    use_compiled_gelu,
    use_onednn_epilogues,
)
from .fuse import fuse
from .gelu import cxx_compiler_available
from .neck import fuse_neck

log = logging.getLogger(__name__)

_AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class FastPathOptions:
    """Which inference optimisations to apply (see the module docstring for each one's cost)."""

    fold_bn: bool = True
    fuse_epilogues: bool = True
    channels_last: bool = True
    winograd: bool = True
    gemm_pointwise: bool = True
    winograd_min_channels: int = CONV_THRESHOLDS["avx2"].winograd_min_channels
    gemm_min_in_channels: int = CONV_THRESHOLDS["avx2"].gemm_min_in_channels
    fuse_neck: bool = True
    compiled_gelu: bool = False
    onednn_epilogues: bool = False
    compile: bool = False
    freeze_weights: bool = True
    keep_freed_memory: bool = False
    int8_encoder: bool = False
    autocast_dtype: torch.dtype | None = None
    quantize_decoder: bool = False
    fast_decoder: bool = True
    decoder_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.autocast_dtype is not None and self.autocast_dtype not in _AUTOCAST_DTYPES:
            raise ValueError(f"autocast_dtype must be one of {_AUTOCAST_DTYPES} or None, "
                             f"got {self.autocast_dtype}")
        if self.int8_encoder and not (self.compile and self.freeze_weights):
            raise ValueError("int8_encoder needs compile=True and freeze_weights=True (inductor "
                             "turns the quantised graph into int8 kernels); use "
                             "FastPathOptions.int8()")
        for name in ("winograd", "gemm_pointwise"):
            if getattr(self, name) and not self.channels_last:
                raise ValueError(f"{name} works on channels-last activations: set "
                                 f"channels_last=True or {name}=False")
            if getattr(self, name) and self.autocast_dtype is not None:
                raise ValueError(f"{name} is a float32 rewrite; with autocast_dtype the "
                                 f"convolutions run in oneDNN/cuDNN's low-precision kernels: set "
                                 f"{name}=False (FastPathOptions.bf16() does)")
        for name in ("winograd_min_channels", "gemm_min_in_channels"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.compiled_gelu and not self.fuse_epilogues:
            raise ValueError("compiled_gelu runs in the in-place epilogues: set "
                             "fuse_epilogues=True or compiled_gelu=False")
        if self.int8_encoder and (self.winograd or self.gemm_pointwise or self.fuse_neck):
            raise ValueError("int8_encoder quantises the plain convolutions: winograd, "
                             "gemm_pointwise and fuse_neck must be False; use "
                             "FastPathOptions.int8()")
        if self.onednn_epilogues and (not self.fuse_epilogues or self.int8_encoder):
            raise ValueError("onednn_epilogues fuses the epilogues of fuse_epilogues' convs: it "
                             "needs fuse_epilogues=True and no int8_encoder")
        if self.int8_encoder and self.autocast_dtype is not None:
            raise ValueError("int8_encoder and autocast_dtype exclude each other")
        if self.decoder_dtype is not None and (self.decoder_dtype not in _AUTOCAST_DTYPES
                                               or not self.fast_decoder
                                               or self.quantize_decoder):
            raise ValueError(f"decoder_dtype must be one of {_AUTOCAST_DTYPES} or None and "
                             f"needs fast_decoder=True without quantize_decoder, got "
                             f"{self.decoder_dtype}")

    @classmethod
    def auto(cls, device: str | torch.device | None = None) -> FastPathOptions:
        """The default for a device type and, on CPU, for this CPU: what measurably helps there
        and keeps the masks.

        CPU: BN folding, epilogue fusion, channels-last, the fused neck, the compiled GELU (when
        a C++ compiler is found) and kept freed memory everywhere; then per instruction-set tier
        (:attr:`~effvit_sam.inference.cpu_features.CpuFeatures.tier`): on AMX and AVX512-BF16
        CPUs a bf16 encoder with oneDNN's fused conv epilogues (masks >= 99.5% equal to float32,
        measured; README), elsewhere float32 with the Winograd 3x3 and GEMM 1x1 convolutions at
        the tier's widths.
        ``compile=True`` and int8 are opt-in. :meth:`exact` is the float32-only choice.
        CUDA: BN folding, epilogues, channels-last, a compiled encoder and bf16 autocast (fp16
        where the GPU has no bf16); cuDNN picks its own convolution algorithms.
        :meth:`auto_explained` gives the reason for each field.
        """
        return cls.auto_explained(device)[0]

    @classmethod
    def exact(cls, device: str | torch.device | None = None) -> FastPathOptions:
        """``auto`` without lossy options: float32 (exact up to rounding, embeddings within 1e-4
        of eager) on every CPU, AMX included. On other devices the same as ``auto``."""
        return cls.auto_explained(device, exact=True)[0]

    @classmethod
    def auto_explained(cls, device: str | torch.device | None = None, *, exact: bool = False
                       ) -> tuple[FastPathOptions, dict[str, str]]:
        """``auto(device)`` (``exact(device)`` with ``exact=True``) and, for every field, why it
        has that value."""
        dev = torch.device(device if device is not None else "cpu")
        if dev.type == "cpu":
            choices = cpu_choices(detect_cpu_features(), cxx_compiler=cxx_compiler_available(),
                                  onednn=onednn_conv_available(), exact=exact)
            return (cls(**{k: v for k, (v, _) in choices.items()}),
                    {k: why for k, (_, why) in choices.items()})
        gpu = cls(winograd=False, gemm_pointwise=False, fuse_neck=False)
        why = dict(fold_bn="exact: BatchNorm folded into its conv",
                   fuse_epilogues="bit-identical: GELU and adds in the conv's output buffer",
                   channels_last="NHWC for the GPU's tensor-core convolution kernels",
                   winograd="off: cuDNN picks its own convolution algorithms",
                   gemm_pointwise="off: cuDNN picks its own convolution algorithms",
                   fuse_neck="off: a CPU rewrite", compiled_gelu="off: a CPU kernel",
                   onednn_epilogues="off: a CPU kernel",
                   keep_freed_memory="off: a CPU allocator setting",
                   int8_encoder="off: CPU only", quantize_decoder="off: CPU only",
                   fast_decoder=FAST_DECODER_REASON,
                   decoder_dtype="float32: a bf16/fp16 decoder is lossy, opt-in",
                   winograd_min_channels="unused: winograd is off",
                   gemm_min_in_channels="unused: gemm_pointwise is off",
                   freeze_weights="CPU inductor only")
        if dev.type == "cuda":
            bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            why.update(compile="on: inductor fuses the elementwise ops around cuDNN's convs",
                       autocast_dtype="bf16: this GPU supports it" if bf16
                       else "fp16: this GPU has no bf16")
            return (gpu.with_(compile=True,
                              autocast_dtype=torch.bfloat16 if bf16 else torch.float16), why)
        # mps and others: only the transformations that cannot hit unsupported kernels.
        why.update(compile="off: not measured on this device type",
                   autocast_dtype="off: not measured on this device type")
        return gpu, why

    @classmethod
    def bf16(cls) -> FastPathOptions:
        """The CPU fast path with a bf16 encoder (``auto`` on AMX and AVX512-BF16 CPUs;
        elsewhere opt-in, and slower where the CPU has no bf16 units: see the module
        docstring). oneDNN's fused epilogues are on wherever oneDNN runs them in bf16 (not on
        AVX2-only CPUs): PyTorch's own GELU on bf16 tensors is slower than the fused post-op."""
        return cls.exact("cpu").with_(autocast_dtype=torch.bfloat16, winograd=False,
                                      gemm_pointwise=False,
                                      onednn_epilogues=onednn_conv_available()
                                      and onednn_bf16_conv_available())

    @classmethod
    def int8(cls) -> FastPathOptions:
        """The CPU fast path with an int8 encoder (pass ``calibration`` images)."""
        return cls(compile=True, keep_freed_memory=True, int8_encoder=True, winograd=False,
                   gemm_pointwise=False, fuse_neck=False)

    @classmethod
    def eager(cls) -> FastPathOptions:
        """Nothing applied: the official float32 computation (for comparisons)."""
        return cls(fold_bn=False, fuse_epilogues=False, channels_last=False, winograd=False,
                   gemm_pointwise=False, fuse_neck=False, fast_decoder=False)

    def with_(self, **changes: object) -> FastPathOptions:
        """A copy with some fields changed; an unknown field raises ``TypeError``."""
        return replace(self, **changes)


class FastImageEncoder(nn.Module):
    """Wraps an (already fused) image encoder: memory format, autocast and compilation.

    Same interface as the encoder it wraps: ``img_size`` and ``B x 3 x S x S`` in,
    ``B x C x 64 x 64`` float32 (contiguous) out. Inference only: runs under ``no_grad``.
    """

    def __init__(self, encoder: nn.Module, *, options: FastPathOptions) -> None:
        super().__init__()
        self.encoder = encoder
        self.img_size = int(encoder.img_size)
        self.options = options
        # Kept out of the module tree so parameters are not registered twice.
        self.__dict__["_compiled"] = torch.compile(encoder, dynamic=False) if options.compile \
            else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.img_size, self.img_size):
            # Checked here too so a bad input never reaches (and recompiles) the compiled graph.
            raise ValueError(f"encoder input must be Bx3x{self.img_size}x{self.img_size}, "
                             f"got {tuple(x.shape)}")
        opts = self.options
        if opts.keep_freed_memory and x.device.type == "cpu":
            keep_freed_memory()  # tries once per process, then returns at once
        if opts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(x.device.type, dtype=opts.autocast_dtype) \
            if opts.autocast_dtype is not None else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            if self._compiled is None:
                out = self.encoder(x)
            elif x.device.type == "cpu" and opts.freeze_weights:
                # Freezing must be on when inductor compiles (on the first call and on any
                # recompilation for a new batch size), so it is scoped to this call only.
                import torch._inductor.config as inductor_config

                with inductor_config.patch(freezing=True):
                    out = self._compiled(x)
            else:
                out = self._compiled(x)
        return out.float().contiguous()


def _cast_conv_weights(encoder: nn.Module, dtype: torch.dtype) -> None:
    """Stores every convolution's weight and bias in the autocast dtype, once: CPU autocast casts
    them on every call otherwise (its weight cache only keeps tensors that require grad), about
    10% of a bf16 L0 encoder call. Same values: autocast would round them the same way."""
    for module in encoder.modules():
        if isinstance(module, nn.Conv2d):
            for name in ("weight", "bias"):
                param = getattr(module, name)
                if param is not None:
                    param.data = param.data.to(dtype)


def optimize_for_inference(model: EfficientViTSam, *, device: str | torch.device | None = None,
                           options: FastPathOptions | None = None,
                           calibration: torch.Tensor | None = None) -> EfficientViTSam:
    """An inference copy of ``model`` with the fast path applied; ``model`` is not modified.

    device: where the copy runs (default: the model's device). options: default
    ``FastPathOptions.auto(device)``. calibration: for ``int8_encoder`` only, preprocessed
    encoder inputs ``N x 3 x S x S`` from images like the ones to segment
    (``geometry.preprocess_image``), a few to a few dozen. The result is an
    :class:`EfficientViTSam` (same ``encode``/``decode``/``postprocess_masks``/``encoder_size``/
    ``config``) whose image encoder is a :class:`FastImageEncoder`; it is meant for inference only
    (no gradients).
    """
    if not isinstance(model, EfficientViTSam):
        raise TypeError(f"optimize_for_inference expects an EfficientViTSam, "
                        f"got {type(model).__name__}")
    dev = torch.device(device) if device is not None else model.device
    opts = options if options is not None else FastPathOptions.auto(dev)
    if not isinstance(opts, FastPathOptions):
        raise TypeError(f"options must be FastPathOptions, got {type(opts).__name__}")
    if opts.autocast_dtype == torch.float16 and dev.type == "cpu":
        raise ValueError("autocast_dtype=torch.float16 is for GPUs; on CPU use torch.bfloat16 "
                         "(FastPathOptions.bf16())")
    if opts.decoder_dtype == torch.float16 and dev.type == "cpu":
        raise ValueError("decoder_dtype=torch.float16 is for GPUs; on CPU use torch.bfloat16")
    if opts.quantize_decoder and dev.type != "cpu":
        raise ValueError("quantize_decoder (dynamic int8) runs on CPU only")
    if opts.int8_encoder and dev.type != "cpu":
        raise ValueError("int8_encoder runs on CPU only")
    if opts.onednn_epilogues and dev.type == "cpu" and not onednn_conv_available():
        raise ValueError("onednn_epilogues needs a torch build with oneDNN "
                         "(torch.backends.mkldnn.is_available() is False here)")
    if opts.onednn_epilogues and opts.autocast_dtype == torch.bfloat16 and dev.type == "cpu" \
            and not onednn_bf16_conv_available():
        raise ValueError("onednn_epilogues with a bf16 encoder needs AVX-512 BW/VL/DQ or "
                         "AVX-NE-CONVERT, which this CPU lacks: use FastPathOptions.bf16()")
    if opts.int8_encoder and calibration is None:
        raise ValueError("int8_encoder needs calibration images: pass calibration= "
                         "(N x 3 x S x S preprocessed encoder inputs)")
    if calibration is not None and not opts.int8_encoder:
        raise ValueError("calibration is only used with int8_encoder")

    if opts.autocast_dtype == torch.bfloat16 and dev.type == "cpu":
        feats = detect_cpu_features()
        if not feats.bf16_units:
            log.warning("bf16 encoder on a CPU without bf16 units (%s): oneDNN emulates bf16, "
                        "measured 9x slower than float32 (L0, 2-core AVX2 EPYC); "
                        "FastPathOptions.auto() is faster here", feats.summary())
    base = fuse(model) if opts.fold_bn else copy.deepcopy(model).eval()
    if opts.fuse_epilogues and not opts.int8_encoder:
        # The quantiser matches plain conv/act patterns, so the int8 graph keeps them.
        base = fuse_epilogues(base)  # converts the BN-free convs (all of them once BN is folded)
        if opts.compiled_gelu:
            use_compiled_gelu(base)
    base.to(dev)
    encoder = base.image_encoder
    if opts.int8_encoder:
        from .quantize import quantize_encoder_int8

        encoder = quantize_encoder_int8(encoder, calibration)
    else:
        # The int8 graph is built from the plain modules; these are float32 rewrites.
        if opts.fuse_neck:
            fuse_neck(encoder)
        if opts.winograd or opts.gemm_pointwise:
            convert_convs(encoder, winograd=opts.winograd, gemm_pointwise=opts.gemm_pointwise,
                          winograd_min_channels=opts.winograd_min_channels,
                          gemm_min_in_channels=opts.gemm_min_in_channels)
        if opts.onednn_epilogues and dev.type == "cpu":
            use_onednn_epilogues(encoder)  # the convs the rewrites above left plain
        if opts.channels_last:
            encoder = encoder.to(memory_format=torch.channels_last)
        if opts.autocast_dtype is not None and dev.type == "cpu":
            _cast_conv_weights(encoder, opts.autocast_dtype)
    for p in base.parameters():
        p.requires_grad_(False)
    if opts.quantize_decoder:
        from .quantize import quantize_linear_int8

        decoder = quantize_linear_int8(base.mask_decoder)
    elif opts.fast_decoder:
        decoder = FastMaskDecoder(base.mask_decoder, autocast_dtype=opts.decoder_dtype)
    else:
        decoder = base.mask_decoder
    log.info("fast path on %s: %s", dev, opts)
    fast = EfficientViTSam(FastImageEncoder(encoder, options=opts), base.prompt_encoder, decoder,
                           config=base.config)
    return fast.eval()
