"""What this CPU can do, and what that means for the encoder's fast path.

:func:`detect_cpu_features` asks PyTorch first: ``torch.cpu.get_capabilities()`` (cpuinfo's
CPUID reading, the same library ATen and oneDNN dispatch on) and
``torch.backends.cpu.get_cpu_capability()`` (the vector kernels this torch build runs). Where
the first is missing (older torch) it reads ``/proc/cpuinfo``: the x86 ``flags`` line or the
ARM ``Features`` line. Both paths end in one frozen :class:`CpuFeatures`.

:data:`CONV_THRESHOLDS` holds, per instruction-set tier (:attr:`CpuFeatures.tier`), the channel
widths above which the Winograd and GEMM convolutions beat oneDNN's own kernels; each entry says
whether it was measured or copied from another tier until someone measures it.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")

# CpuFeatures field -> (torch.cpu.get_capabilities() key, /proc/cpuinfo flag). One table for
# both sources, so a feature cannot be read under two spellings.
_X86 = {
    "avx2": ("avx2", "avx2"),
    "avx512f": ("avx512_f", "avx512f"),
    "avx512bw": ("avx512_bw", "avx512bw"),
    "avx512vl": ("avx512_vl", "avx512vl"),
    "avx512_vnni": ("avx512_vnni", "avx512_vnni"),
    "avx_vnni": ("avx_vnni", "avx_vnni"),
    "avx512_bf16": ("avx512_bf16", "avx512_bf16"),
    "amx_tile": ("amx_tile", "amx_tile"),
    "amx_bf16": ("amx_bf16", "amx_bf16"),
    "amx_int8": ("amx_int8", "amx_int8"),
}
_ARM = {
    "neon": ("neon", "asimd"),
    "sve": ("sve", "sve"),
    "arm_bf16": ("bf16", "bf16"),
}


@dataclass(frozen=True)
class CpuFeatures:
    """The instruction-set features of one CPU (x86 and ARM fields; the other kind's are False).

    ``torch_kernels`` is ``torch.backends.cpu.get_cpu_capability()`` ("AVX512", "AVX2",
    "SVE256", "DEFAULT", ...): which of ATen's vectorised kernels this build runs here, which
    can be less than the hardware has (``ATEN_CPU_CAPABILITY``). ``source`` says where the
    flags came from.
    """

    arch: str
    model_name: str
    torch_kernels: str
    source: str
    avx2: bool = False
    avx512f: bool = False
    avx512bw: bool = False
    avx512vl: bool = False
    avx512_vnni: bool = False
    avx_vnni: bool = False
    avx512_bf16: bool = False
    amx_tile: bool = False
    amx_bf16: bool = False
    amx_int8: bool = False
    neon: bool = False
    sve: bool = False
    arm_bf16: bool = False

    @property
    def avx512(self) -> bool:
        """AVX-512 F, BW and VL: what oneDNN's ``avx512_core`` kernels need."""
        return self.avx512f and self.avx512bw and self.avx512vl

    @property
    def amx(self) -> bool:
        """AMX tiles with bf16 multiplies: bf16 convolutions and GEMMs at many times fp32's rate."""
        return self.amx_tile and self.amx_bf16

    @property
    def bf16_units(self) -> bool:
        """bf16 arithmetic in hardware (AMX-BF16, AVX512-BF16 or ARM BF16); without it oneDNN
        emulates bf16, many times slower than float32."""
        return self.amx or self.avx512_bf16 or self.arm_bf16

    @property
    def tier(self) -> str:
        """The instruction-set tier the fast path's per-CPU choices are keyed by: ``amx``,
        ``avx512``, ``avx2``, ``arm`` (NEON) or ``baseline``."""
        if self.amx:
            return "amx"
        if self.avx512:
            return "avx512"
        if self.avx2:
            return "avx2"
        if self.neon:
            return "arm"
        return "baseline"

    def names(self) -> list[str]:
        """The features present, in their usual spelling."""
        spelled = [("avx2", "AVX2"), ("avx512", "AVX-512(F/BW/VL)"),
                   ("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"),
                   ("avx512_bf16", "AVX512-BF16"), ("amx_tile", "AMX-TILE"),
                   ("amx_bf16", "AMX-BF16"), ("amx_int8", "AMX-INT8"), ("neon", "NEON"),
                   ("sve", "SVE"), ("arm_bf16", "ARM-BF16")]
        return [label for attr, label in spelled if getattr(self, attr)]

    def summary(self) -> str:
        """One line: model, arch, features, torch's kernel level and the tier."""
        feats = " ".join(self.names()) or "no vector extensions detected"
        return (f"{self.model_name} ({self.arch}): {feats}; torch kernels {self.torch_kernels}; "
                f"fast-path tier {self.tier} (from {self.source})")


def features_from_capabilities(caps: Mapping[str, object], *, torch_kernels: str,
                               model_name: str | None = None) -> CpuFeatures:
    """:class:`CpuFeatures` from a ``torch.cpu.get_capabilities()`` mapping."""
    arch = str(caps.get("architecture", platform.machine()))
    name = model_name or str(caps.get("cpu_name") or "unknown CPU")
    flags = {field: bool(caps.get(key, False))
             for field, (key, _) in (*_X86.items(), *_ARM.items())}
    return CpuFeatures(arch=arch, model_name=name, torch_kernels=torch_kernels,
                       source="torch.cpu.get_capabilities", **flags)


def features_from_cpuinfo(text: str, *, torch_kernels: str, arch: str | None = None
                          ) -> CpuFeatures:
    """:class:`CpuFeatures` from the text of ``/proc/cpuinfo`` (its first processor block).

    x86 lists its features on a ``flags`` line and names the CPU on ``model name``; ARM lists
    them on ``Features`` and names only the implementer and part numbers.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key and key not in fields:
            fields[key] = value.strip()
    if "flags" in fields:
        present, table = set(fields["flags"].split()), _X86
        arch = arch or "x86_64"
        name = fields.get("model name", "unknown x86 CPU")
    elif "features" in fields:
        present, table = set(fields["features"].split()), _ARM
        arch = arch or "aarch64"
        name = fields.get("model name") or (f"ARM implementer {fields.get('cpu implementer', '?')}"
                                            f" part {fields.get('cpu part', '?')}")
    else:
        raise ValueError("no 'flags' (x86) or 'Features' (ARM) line in the cpuinfo text")
    flags = {field: flag in present for field, (_, flag) in table.items()}
    return CpuFeatures(arch=arch, model_name=name, torch_kernels=torch_kernels,
                       source="/proc/cpuinfo", **flags)


def _model_name_from_cpuinfo() -> str | None:
    try:
        for line in CPUINFO.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "model name":
                return value.strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def detect_cpu_features() -> CpuFeatures:
    """This machine's :class:`CpuFeatures` (computed once per process: the CPU does not change).

    Raises ``RuntimeError`` when neither torch's query nor ``/proc/cpuinfo`` is available.
    """
    kernels = torch.backends.cpu.get_cpu_capability()
    get_caps = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.9
    if get_caps is not None:
        # cpuinfo's name for AMD parts is short ("AMD EPYC"); the kernel's is often fuller.
        return features_from_capabilities(get_caps(), torch_kernels=kernels,
                                          model_name=_model_name_from_cpuinfo())
    try:
        text = CPUINFO.read_text()
    except OSError as err:
        raise RuntimeError(f"cannot detect CPU features: torch {torch.__version__} has no "
                           f"torch.cpu.get_capabilities and {CPUINFO} is unreadable ({err})"
                           ) from err
    return features_from_cpuinfo(text, torch_kernels=kernels, arch=platform.machine())


CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")


def _size_bytes(text: str) -> int | None:
    """sysfs cache sizes: ``"2048K"``, ``"32M"``, ``"491520K"``."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in "KMG" else text
    return int(digits) * scale if digits.isdigit() else None


def last_level_cache_bytes(root: Path = CPU_CACHES) -> int | None:
    """The size of the largest-level data/unified cache cpu0 sees (Linux sysfs), or None where
    the kernel does not say (other systems, some containers)."""
    best: tuple[int, int] | None = None
    for index in sorted(root.glob("index[0-9]*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = _size_bytes((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind != "Instruction" and size and (best is None or level > best[0]):
            best = (level, size)
    return best[1] if best else None


@dataclass(frozen=True)
class ConvThresholds:
    """When the fast path's convolution rewrites pay off on a tier (``FastPathOptions`` fields).

    winograd_min_channels: a stride-1 3x3 conv is computed as Winograd F(4x4, 3x3) when both
    its input and output widths reach this. gemm_min_in_channels: a 1x1 conv is one GEMM on
    the NHWC view when its input width reaches this. ``provenance`` says where they come from.
    """

    winograd_min_channels: int
    gemm_min_in_channels: int
    provenance: str


_MEASURED = ConvThresholds(64, 1024, "measured (README speed section) on a 2-core AMD EPYC VM "
                                     "documented there as AVX2 without AVX-512")
_COPIED = "not re-measured: the AVX2 values"

# Per tier. Below these widths the transforms or the GEMM call cost more than they save.
CONV_THRESHOLDS: dict[str, ConvThresholds] = {
    "avx2": _MEASURED,
    "avx512": ConvThresholds(64, 1024, _COPIED + " (the AMX Xeon's AVX-512 float32 path measured "
                                                 "best at the same widths)"),
    "amx": ConvThresholds(64, 1024, "measured on a 2-core AMX Xeon's AVX-512 float32 path "
                                    "(Winograd from 32/64/128/256 and GEMM from 256-2048 "
                                    "channels swept, L0 and XL1; README); used by "
                                    "FastPathOptions.exact(), auto runs bf16 there"),
    "arm": ConvThresholds(64, 1024, _COPIED),
    "baseline": ConvThresholds(64, 1024, _COPIED),
}

# Tiers where oneDNN's convolution with fused GELU / residual-add post-ops was measured faster
# than the conv followed by the in-place epilogue in float32 (README; on the AVX2 EPYC it was
# slower, on the AVX512-BF16 EPYC the same). Wherever the encoder runs in bf16 they are on too.
ONEDNN_EPILOGUE_TIERS = ("amx",)

FAST_DECODER_REASON = ("SAM's mask decoder with the shared image-side work done once per call "
                       "and exact low-rank attention: logits within 1e-6 of SAM's, same keys")


BF16_AMX_FIGURES = ("measured on a 2-core AMX Xeon: L0 encoder 3.96x and XL1 4.58x eager "
                    "float32 (batch 1), masks >= 99.5% equal to float32 on the reference weights "
                    "and on the trained bundled model (XL1's official box prompt 99.41%; README); "
                    "FastPathOptions.exact() keeps float32")


BF16_AVX512_FIGURES = ("measured on a 2-core AVX512-BF16 EPYC (Zen 4, no AMX): L0 encoder "
                       "2.17x and XL1 1.96x eager float32 at batch 1, against 1.29x / 1.29x for "
                       "the float32 fast path; masks >= 99.5% equal to float32 on the reference "
                       "weights and on the trained bundled model (README); "
                       "FastPathOptions.exact() keeps float32")


def auto_bf16(f: CpuFeatures) -> bool:
    """Whether ``auto`` runs the encoder in bf16 on this CPU: where bf16 multiplies are in
    hardware and oneDNN has bf16 convolutions for them, AMX-BF16 tiles or AVX-512 with
    AVX512-BF16 (measured there; ARM's BF16 is not measured and stays opt-in)."""
    return f.amx or (f.avx512 and f.avx512_bf16)


def _bf16_reason(f: CpuFeatures, exact: bool) -> str:
    if auto_bf16(f):
        unit = "AMX-BF16" if f.amx else "AVX512-BF16"
        if exact:
            return f"off: exact() keeps float32 (auto picks bf16 on this {unit} CPU)"
        kernels = "AMX convolutions" if f.amx else "AVX512-BF16 convolutions"
        return (f"bf16: {unit} is here; oneDNN's {kernels} with linear attention, LayerNorm and "
                "the neck's resizes in float32, "
                + (BF16_AMX_FIGURES if f.amx else BF16_AVX512_FIGURES))
    if f.bf16_units:
        return ("bf16 dot products (ARM BF16) but bf16 is not measured on this kind of CPU, and "
                "not exact: opt in with FastPathOptions.bf16()")
    return ("no bf16 units (AMX-BF16, AVX512-BF16); bf16 would be emulated: measured 0.11x "
            "eager float32 (L0 encoder, 2-core AVX2 EPYC), and less exact")


def _onednn_reason(f: CpuFeatures, on: bool, onednn: bool) -> str:
    if not onednn:
        return "off: this torch build has no oneDNN convolution"
    if on and f.tier == "amx":
        return (f"tier {f.tier}: each plain conv with its GELU and residual add as one oneDNN "
                "convolution with post-ops; measured L0 1.47x / XL1 1.51x eager in float32 "
                "(1.36x / 1.42x without), and in bf16 3.96x / 4.58x (3.25x / 4.07x without: "
                "PyTorch's bf16 GELU costs 25x a 1x1 conv)")
    if on:
        return (f"tier {f.tier}, bf16 encoder: each plain conv with its GELU and residual add as "
                "one oneDNN bf16 convolution with post-ops; measured L0 0.254 s against 0.265 s "
                "without (median of 7, AVX512-BF16 EPYC)")
    return (f"tier {f.tier}: not measured faster here in float32 (AVX512-BF16 EPYC: L0 0.423 s "
            "with, 0.417 s without; on the AVX2 EPYC the fused conv+GELU was slower than the "
            "conv and the compiled GELU); opt in with onednn_epilogues=True")


def cpu_choices(f: CpuFeatures, *, cxx_compiler: bool, onednn: bool = True,
                exact: bool = False) -> dict[str, tuple[object, str]]:
    """``FastPathOptions.auto`` on a CPU with features ``f``: option name -> (value, why).

    cxx_compiler: whether inductor finds a C++ compiler (the compiled GELU needs one). onednn:
    whether torch has oneDNN's fused convolution. exact: float32 only (``FastPathOptions.exact``),
    no bf16 even where auto picks it. Every ``FastPathOptions`` field is named, so
    ``effvit-sam env`` can say why for each.
    """
    t = CONV_THRESHOLDS[f.tier]
    bf16 = auto_bf16(f) and not exact
    onednn_on = onednn and (f.tier in ONEDNN_EPILOGUE_TIERS or bf16)
    rewrite_off = "off: a float32 rewrite, and the encoder runs in bf16 here (autocast_dtype)"
    vnni = "VNNI int8 dot products here" if f.avx512_vnni or f.avx_vnni or f.amx_int8 \
        else "no VNNI here: 7-bit activations"
    return {
        "fold_bn": (True, "exact: BatchNorm folded into its conv, one pass less per layer"),
        "fuse_epilogues": (True, "bit-identical: GELU and residual adds in the conv's own output "
                                 "buffer, no activation-sized allocation each"),
        "channels_last": (True, "oneDNN's depthwise and 1x1 kernels prefer NHWC; the Winograd and "
                                "GEMM convolutions need it"),
        "winograd": (False, rewrite_off) if bf16 else (
            True, "float32 Winograd F(4x4,3x3) for wide stride-1 3x3 convs: 4x fewer "
                  "multiplications, ~1e-5 relative rounding per conv"),
        "winograd_min_channels": (t.winograd_min_channels, f"tier {f.tier}: {t.provenance}"),
        "gemm_pointwise": (False, rewrite_off) if bf16 else (
            True, "1x1 convs reading many channels as one GEMM: oneDNN's 1x1 kernel is 2-3x "
                  "slower there; exact up to rounding"),
        "gemm_min_in_channels": (t.gemm_min_in_channels, f"tier {f.tier}: {t.provenance}"),
        "fuse_neck": (True, "the neck's bicubic resizes as GEMMs accumulating into one buffer; "
                            "exact up to rounding"),
        "compiled_gelu": (cxx_compiler, "a C++ compiler was found: inductor's in-place GELU loop, "
                                        "half the time of PyTorch's tanh kernel" if cxx_compiler
                          else "no C++ compiler ($CXX, c++, g++, clang++): PyTorch's gelu_"),
        "onednn_epilogues": (onednn_on, _onednn_reason(f, onednn_on, onednn)),
        "compile": (False, "opt-in: torch.compile's first call takes a minute or more on a small "
                           "CPU"),
        "freeze_weights": (True, "only used with compile: inductor folds and prepacks the weights"),
        "keep_freed_memory": (True, "large activations reuse freed memory instead of page-faulting "
                                    "a fresh mmap each (glibc)"),
        "int8_encoder": (False, f"lossy (~6% relative L2 on embeddings), opt-in with "
                                f"FastPathOptions.int8(); {vnni}"),
        "autocast_dtype": (torch.bfloat16 if bf16 else None, _bf16_reason(f, exact)),
        "quantize_decoder": (False, "lossy (masks 98-99% equal), opt-in"),
        "fast_decoder": (True, FAST_DECODER_REASON),
        "decoder_dtype": (None, "float32: the bf16 decoder is lossy (bench-decoder measures "
                                "it), opt-in" + (" (AMX tiles here)" if f.amx else "")),
    }
