"""Epilogue fusion: a convolution's activation and residual add done in its output buffer.

After BatchNorm folding (:mod:`effvit_sam.inference.fuse`) every EfficientViT block is a chain of
``conv (+ bias) -> GELU`` and ``conv (+ bias) -> + shortcut``. Run as separate out-of-place ops,
each GELU and each add allocates another activation-sized tensor. On CPU the big ones (32 MiB at
L0's 128x128 and 64x64 stages) come straight from the OS, and first-touch page faults then cost
several times the arithmetic: a ReLU on a fresh 32 MiB tensor takes 31 ms here, 5 ms into an
existing buffer. Doing the add and the activation in place on the convolution's own (fresh)
output removes every such allocation and runs exactly the same kernels, so the result is
bit-identical to the unfused ops.

In place is only safe without autograd, so :class:`FusedConv` falls back to the out-of-place ops
whenever a tensor needs a gradient, and while being traced or exported.

:func:`use_onednn_epilogues` goes one step further where it was measured to pay (AMX CPUs, and
bf16 encoders on AVX512-BF16 ones; see ``FastPathOptions.onednn_epilogues``): the conv, its
residual add and its activation become one oneDNN convolution with the add and the activation
as post-ops, applied to each output block while it is still in cache. In bf16 this matters
most: PyTorch's own ``gelu_`` on a bf16 tensor costs 25x the 1x1 convolution before it (11 ms
against 0.45 ms for a 64->256 channel 128x128 conv on a 2-core AMX Xeon), the post-op 1.1 ms.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..modeling.blocks import FusedMBConv, MBConv, ResBlock, Residual
from ..modeling.layers import ConvNormAct
from .gelu import gelu_tanh_


def _in_place(act: nn.Module):
    """The in-place form of ``act``; None when there is none."""
    if isinstance(act, nn.Identity):
        return lambda t: t
    if isinstance(act, nn.GELU):
        approximate = act.approximate
        return lambda t: torch.ops.aten.gelu_(t, approximate=approximate)
    if isinstance(act, nn.ReLU):
        return torch.relu_
    return None


def _needs_out_of_place(*tensors: torch.Tensor | None) -> bool:
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class FusedConv(nn.Module):
    """``act(conv(x) [+ residual])`` with the add and the activation in the conv's output buffer.

    Built from a ``ConvNormAct`` whose norm has been folded (an ``Identity``); keeps ``conv`` and
    ``act`` so the out-of-place fallback is the original computation.
    """

    def __init__(self, conv: nn.Conv2d, act: nn.Module) -> None:
        super().__init__()
        act_ = _in_place(act)
        if act_ is None:
            raise ValueError(f"no in-place form of activation {act!r}")
        self.conv = conv
        self.act = act
        self._act_ = act_
        self.post_op: tuple[str, str | None] | None = None  # set by use_onednn_epilogues

    @classmethod
    def from_conv_norm_act(cls, layer: ConvNormAct) -> FusedConv:
        if not isinstance(layer.norm, nn.Identity):
            raise ValueError("fold the BatchNorm first (effvit_sam.inference.fuse.fuse)")
        return cls(layer.conv, layer.act)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        # Under torch.compile inductor fuses conv epilogues itself (weight freezing): the plain
        # ops compile into one graph, where the oneDNN call would break it at every conv.
        if self.post_op is not None and x.device.type == "cpu" \
                and not torch.compiler.is_compiling() and not _needs_out_of_place(x, residual):
            return self._onednn(x, residual)
        out = self.conv(x)
        if _needs_out_of_place(out, residual):
            return self.act(out + residual if residual is not None else out)
        if residual is not None:
            out.add_(residual)
        return self._act_(out)

    def _onednn(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        conv, (attr, algorithm) = self.conv, self.post_op
        # What autocast would hand the conv: its dtype, or else the weight's.
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") \
            else conv.weight.dtype
        w = conv.weight.to(dtype)
        b = conv.bias.to(dtype) if conv.bias is not None else None
        args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(x.to(dtype), w, b, *args, attr, [],
                                                           algorithm)
        # act(conv(x) + residual): oneDNN applies the binary post-op, then the eltwise one, but
        # takes only ReLU after an add; other activations run in place on the fused sum.
        fused_act = attr == "relu"
        out = torch.ops.mkldnn._convolution_pointwise.binary(
            x.to(dtype), residual.to(dtype), w, b, *args, "add", None,
            "relu" if fused_act else None, [], None)
        return out if fused_act or attr == "none" else self._act_(out)


def _post_op(act: nn.Module) -> tuple[str, str | None] | None:
    """oneDNN's name (and algorithm) for ``act`` as a convolution post-op; None if it has none."""
    if isinstance(act, nn.Identity):
        return ("none", None)
    if isinstance(act, nn.GELU):
        return ("gelu", act.approximate)  # "tanh" or "none" (erf)
    if isinstance(act, nn.ReLU):
        return ("relu", None)
    return None


def onednn_conv_available() -> bool:
    """Whether this torch build has oneDNN's fused CPU convolution (``mkldnn`` ops)."""
    return torch.backends.mkldnn.is_available() and \
        hasattr(torch.ops.mkldnn, "_convolution_pointwise")


@functools.cache
def onednn_bf16_conv_available() -> bool:
    """Whether oneDNN's fused convolution runs in bf16 on this CPU. oneDNN refuses it without
    AVX-512 BW/VL/DQ or AVX-NE-CONVERT (an AVX2-only EPYC: "bf16 path needs the cpu support
    ..."), where plain bf16 convolutions still run on a slower kernel: one tiny probe call,
    once per process."""
    if not onednn_conv_available():
        return False
    x = torch.zeros(1, 8, 2, 2, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    w = torch.zeros(8, 8, 1, 1, dtype=torch.bfloat16)
    try:
        torch.ops.mkldnn._convolution_pointwise(x, w, None, [0, 0], [1, 1], [1, 1], 1, "none",
                                                [], None)
    except RuntimeError:
        return False
    return True


# The conv chain of each residual block type, in call order (their forward is exactly this chain).
_CHAINS = {ResBlock: ("conv1", "conv2"), FusedMBConv: ("spatial_conv", "point_conv"),
           MBConv: ("inverted_conv", "depth_conv", "point_conv")}


class FusedResidual(nn.Module):
    """``Residual(block)`` whose last conv adds the shortcut in its epilogue."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.layers[:-1]:
            h = layer(h)
        return self.layers[-1](h, residual=x)


def _fused_chain(block: nn.Module) -> list[nn.Module] | None:
    names = _CHAINS.get(type(block))
    if names is None:
        return None
    layers = [getattr(block, n) for n in names]
    return layers if isinstance(layers[-1], FusedConv) else None


def _convert(module: nn.Module) -> nn.Module | None:
    """The fused replacement of ``module`` itself, or None when it is not converted."""
    if isinstance(module, ConvNormAct) and isinstance(module.norm, nn.Identity) \
            and _in_place(module.act) is not None:
        return FusedConv.from_conv_norm_act(module)
    if isinstance(module, Residual) and module.shortcut:
        chain = _fused_chain(module.main)
        if chain is not None:
            return FusedResidual(chain)
    return None


def fuse_epilogues(module: nn.Module) -> nn.Module:
    """Converts ``module`` in place and returns it (or its replacement, when ``module`` itself is
    converted): every BN-free ``ConvNormAct`` becomes a :class:`FusedConv`, then every shortcut
    ``Residual`` over a ResBlock/FusedMBConv/MBConv whose last conv was converted becomes a
    :class:`FusedResidual`. Meant for an inference copy whose BatchNorms are already folded;
    convs that still have a norm are left as they are."""
    for kinds in ((ConvNormAct,), (Residual,)):  # convs first: a residual needs its last conv
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                new = _convert(child) if isinstance(child, kinds) else None
                if new is not None:
                    setattr(parent, name, new)
        if isinstance(module, kinds):
            module = _convert(module) or module
    return module


def use_compiled_gelu(module: nn.Module) -> int:
    """Makes every :class:`FusedConv` under ``module`` whose activation is the tanh GELU apply it
    with :func:`effvit_sam.inference.gelu.gelu_tanh_` (one compiled in-place loop) instead of
    PyTorch's kernel. The out-of-place fallback is unchanged. Returns how many were switched."""
    count = 0
    for sub in module.modules():
        if isinstance(sub, FusedConv) and isinstance(sub.act, nn.GELU) \
                and sub.act.approximate == "tanh":
            sub._act_ = gelu_tanh_
            count += 1
    return count


def use_onednn_epilogues(module: nn.Module) -> int:
    """Makes every :class:`FusedConv` under ``module`` whose conv is a plain zero-padded
    ``nn.Conv2d`` (not a Winograd or GEMM rewrite) and whose activation oneDNN has as a post-op
    run as one oneDNN convolution with its residual add and activation fused (CPU, no autograd;
    otherwise the unfused path). Returns how many were switched."""
    if not onednn_conv_available():
        raise RuntimeError("this torch build has no oneDNN convolution (torch.backends.mkldnn)")
    count = 0
    for sub in module.modules():
        if isinstance(sub, FusedConv) and type(sub.conv) is nn.Conv2d \
                and sub.conv.padding_mode == "zeros" and not isinstance(sub.conv.padding, str):
            post_op = _post_op(sub.act)
            if post_op is not None:
                sub.post_op = post_op
                count += 1
    return count
