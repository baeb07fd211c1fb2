"""The inference fast path: every option against eager float32, with stated tolerances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from effvit_sam import build_sam
from effvit_sam.inference.epilogue import onednn_bf16_conv_available
from effvit_sam.inference.optimize import FastImageEncoder, FastPathOptions, optimize_for_inference
from effvit_sam.modeling import EfficientViTSam

from .test_fuse import randomise_bn

# Tolerances against eager float32 (embeddings are O(1) after the final LayerNorm).
EMBED_ATOL = {"exact": 1e-4, "compile": 1e-3}
LOGIT_ATOL = 1e-3


@pytest.fixture(scope="module")
def tiny() -> EfficientViTSam:
    torch.manual_seed(0)
    return randomise_bn(build_sam("efficientvit-sam-tiny"), seed=5)


def _inputs(model: EfficientViTSam, batch: int = 2) -> torch.Tensor:
    s = model.encoder_size
    return torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(6))


def _decode(model: EfficientViTSam, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.tensor([[[300.0, 400.0], [700.0, 200.0]]])
    labels = torch.tensor([[1, 0]])
    boxes = torch.tensor([[100.0, 150.0, 800.0, 900.0]])
    with torch.no_grad():
        return model.decode(embedding, points=(coords, labels), boxes=boxes, mask_input=None,
                            multimask_output=True)


def _check_against_eager(tiny: EfficientViTSam, options: FastPathOptions, atol: float) -> None:
    fast = optimize_for_inference(tiny, device="cpu", options=options)
    x = _inputs(tiny)
    with torch.no_grad():
        expected = tiny.encode(x)
    got = fast.encode(x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).abs().max().item() < atol
    logits_ref, iou_ref = _decode(tiny, expected[:1])
    logits, iou = _decode(fast, got[:1])
    assert (logits - logits_ref).abs().max().item() < LOGIT_ATOL
    assert (iou - iou_ref).abs().max().item() < 1e-4
    # Masks (logits > 0) agree on at least 99.99% of pixels, the reference's own criterion.
    assert ((logits > 0) == (logits_ref > 0)).float().mean().item() >= 0.9999


_EAGER = FastPathOptions.eager()
# Conv widths low enough that the tiny model's convs are rewritten too.
TINY_THRESHOLDS = {"winograd_min_channels": 8, "gemm_min_in_channels": 16}


@pytest.mark.parametrize("options", [
    _EAGER,
    _EAGER.with_(fold_bn=True),
    _EAGER.with_(fuse_epilogues=True),
    _EAGER.with_(channels_last=True),
    _EAGER.with_(fuse_neck=True),
    _EAGER.with_(channels_last=True, fuse_neck=True),
    FastPathOptions(),
], ids=["eager", "fold_bn", "fuse_epilogues", "channels_last", "fuse_neck", "fuse_neck_cl",
        "default"])
def test_exact_options_match_eager(tiny: EfficientViTSam, options: FastPathOptions) -> None:
    _check_against_eager(tiny, options, EMBED_ATOL["exact"])


@pytest.mark.parametrize("options", [
    _EAGER.with_(channels_last=True, winograd=True),
    _EAGER.with_(channels_last=True, gemm_pointwise=True),
    FastPathOptions(),
], ids=["winograd", "gemm_pointwise", "default"])
def test_conv_rewrites_match_eager(tiny: EfficientViTSam, options: FastPathOptions) -> None:
    # The tiny model is narrower than the default thresholds; lower them so every eligible conv
    # of it is rewritten, and check the rewrite really happened.
    from effvit_sam.inference import convs as fast_convs

    options = options.with_(**TINY_THRESHOLDS)
    fast = optimize_for_inference(tiny, device="cpu", options=options)
    kinds = {type(m) for m in fast.modules()}
    assert (fast_convs.WinogradConv3x3 in kinds) == options.winograd
    assert (fast_convs.GemmConv1x1 in kinds) == options.gemm_pointwise
    # Winograd's rounding is ~5x a direct conv's; still far inside the exact tolerance.
    _check_against_eager(tiny, options, EMBED_ATOL["exact"])


@pytest.mark.slow
def test_compiled_encoder_matches_eager(tiny: EfficientViTSam) -> None:
    # Inductor with weight freezing (CPU): the first call compiles (slow on 2 cores). The
    # Winograd and GEMM rewrites are forced onto the tiny model so they are compiled too.
    _check_against_eager(tiny, FastPathOptions(compile=True, **TINY_THRESHOLDS),
                         EMBED_ATOL["compile"])


def test_freezing_is_scoped_to_the_compiled_call(tiny: EfficientViTSam) -> None:
    import torch._inductor.config as inductor_config

    before = inductor_config.freezing
    fast = optimize_for_inference(tiny, device="cpu", options=FastPathOptions())
    fast.encode(_inputs(tiny, 1))
    assert inductor_config.freezing == before


def test_quantized_decoder_close_to_float(tiny: EfficientViTSam) -> None:
    fast = optimize_for_inference(tiny, device="cpu",
                                  options=FastPathOptions(quantize_decoder=True))
    assert not any(isinstance(m, nn.Linear) and type(m) is nn.Linear
                   for m in fast.mask_decoder.modules())
    with torch.no_grad():
        emb = tiny.encode(_inputs(tiny, 1))
    logits_ref, iou_ref = _decode(tiny, emb)
    logits, iou = _decode(fast, emb)
    # int8 weights and activations: logits move by a few percent of their range, masks barely.
    scale = logits_ref.abs().max().item()
    assert (logits - logits_ref).abs().max().item() < 0.1 * scale
    assert ((logits > 0) == (logits_ref > 0)).float().mean().item() > 0.98
    assert not torch.equal(logits, logits_ref)  # the option really changed the computation


def test_interface_and_original_untouched(tiny: EfficientViTSam) -> None:
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    fast = optimize_for_inference(tiny)
    assert isinstance(fast, EfficientViTSam) and isinstance(fast.image_encoder, FastImageEncoder)
    assert fast.encoder_size == tiny.encoder_size == fast.image_encoder.img_size
    assert fast.config == tiny.config
    assert fast.prompt_encoder is not tiny.prompt_encoder
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    torch.testing.assert_close(fast.preprocess(image), tiny.preprocess(image))
    low = torch.randn(1, 3, 256, 256)
    torch.testing.assert_close(fast.postprocess_masks(low, (683, 1024), (40, 60)),
                               tiny.postprocess_masks(low, (683, 1024), (40, 60)))
    for key, value in tiny.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(ValueError, match="encoder input"):
        fast.encode(torch.zeros(1, 3, 32, 32))


def test_bad_options_raise(tiny: EfficientViTSam) -> None:
    with pytest.raises(ValueError, match="autocast_dtype"):
        FastPathOptions(autocast_dtype=torch.float64)
    with pytest.raises(ValueError, match="float16 is for GPUs"):
        optimize_for_inference(tiny, device="cpu", options=FastPathOptions.bf16().with_(
            autocast_dtype=torch.float16))
    for name in ("winograd", "gemm_pointwise"):  # float32 rewrites: not under autocast
        with pytest.raises(ValueError, match=f"{name} is a float32 rewrite"):
            FastPathOptions.bf16().with_(**{name: True})
    for name in TINY_THRESHOLDS:
        for bad in (0, -3, 8.0):
            with pytest.raises(ValueError, match=f"{name} must be a positive int"):
                FastPathOptions().with_(**{name: bad})
    with pytest.raises(TypeError):
        optimize_for_inference(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        FastPathOptions().with_(no_such_option=True)
    for name in ("winograd", "gemm_pointwise"):
        with pytest.raises(ValueError, match=f"{name} works on channels-last"):
            FastPathOptions(channels_last=False, **{"winograd": False, "gemm_pointwise": False,
                                                     name: True})
    with pytest.raises(ValueError, match="int8_encoder quantises"):
        FastPathOptions.int8().with_(winograd=True)


def test_auto_options_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = FastPathOptions.exact("cpu")  # auto is per CPU (tests/test_cpu_features.py)
    assert cpu.fold_bn and cpu.fuse_epilogues and cpu.channels_last and cpu.keep_freed_memory
    assert cpu.autocast_dtype is None and not cpu.compile
    assert cpu.winograd and cpu.gemm_pointwise and cpu.fuse_neck
    assert FastPathOptions.auto("cpu") in (cpu, FastPathOptions.bf16())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for bf16, dtype in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, _v=bf16, **k: _v)
        cuda, why = FastPathOptions.auto_explained("cuda")
        assert cuda.autocast_dtype is dtype and cuda.compile
        assert why["autocast_dtype"].startswith("bf16" if bf16 else "fp16")
        assert not (cuda.winograd or cuda.gemm_pointwise or cuda.fuse_neck)  # cuDNN's choice
        assert not cuda.keep_freed_memory
    assert not FastPathOptions.eager().keep_freed_memory


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_autocast_close_to_float32(tiny: EfficientViTSam) -> None:
    model = tiny.to("cuda")
    fast = optimize_for_inference(model, device="cuda", options=FastPathOptions(
        autocast_dtype=torch.bfloat16, winograd=False, gemm_pointwise=False))
    x = _inputs(model).cuda()
    with torch.no_grad():
        expected = model.encode(x)
    # bf16 convolutions: a 8-bit mantissa, so a few 1e-2 after the final LayerNorm.
    assert (fast.encode(x) - expected).abs().max().item() < 5e-2


class _RecordDtypes(torch.overrides.TorchFunctionMode):
    """Records the result dtype of every call to the named torch functions/tensor methods."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = names
        self.seen: dict[str, set[torch.dtype]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in self.names and isinstance(out, torch.Tensor):
            self.seen.setdefault(name, set()).add(out.dtype)
        return out


@pytest.mark.parametrize("options", [
    pytest.param(FastPathOptions.bf16().with_(compiled_gelu=False, onednn_epilogues=True),
                 marks=pytest.mark.skipif(not onednn_bf16_conv_available(),
                                          reason="oneDNN has no bf16 convolution on this CPU")),
    FastPathOptions.bf16().with_(compiled_gelu=False, onednn_epilogues=False),
    FastPathOptions.bf16().with_(compiled_gelu=False, fuse_neck=False, fuse_epilogues=False,
                                 fold_bn=False, onednn_epilogues=False),
], ids=["bf16_onednn", "bf16", "bf16_plain_modules"])
def test_cpu_bf16_encoder_close_to_float32(tiny: EfficientViTSam,
                                           options: FastPathOptions) -> None:
    assert options.autocast_dtype is torch.bfloat16
    fast = optimize_for_inference(tiny, device="cpu", options=options)
    x = _inputs(tiny)
    with torch.no_grad():
        expected = tiny.encode(x)
    # Tensor operators reach the mode by method name: `@` as matmul, `/` as div.
    record = _RecordDtypes(("conv2d", "layer_norm", "matmul", "div", "baddbmm_", "interpolate",
                            "_convolution_pointwise"))
    with record:
        got = fast.encode(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    rel = ((got - expected).norm() / expected.norm()).item()
    assert 1e-5 < rel < 5e-2  # bf16 really ran (not exact), and stays close
    seen = record.seen
    convs = ("conv2d", "_convolution_pointwise") if options.onednn_epilogues else ("conv2d",)
    assert all(seen[n] == {torch.bfloat16} for n in convs)  # every convolution in bf16
    assert ("_convolution_pointwise" in seen) == options.onednn_epilogues
    # Linear attention (its products and its normalising division), the LayerNorm and the
    # neck's resizes stay float32 inside the bf16 encoder.
    assert seen["matmul"] == {torch.float32} and seen["div"] == {torch.float32}
    norm_ops = {"layer_norm"} if options.fuse_neck else {"div"}
    assert all(seen[n] == {torch.float32} for n in norm_ops)
    resize_ops = ("matmul", "baddbmm_") if options.fuse_neck else ("interpolate",)
    assert all(seen[n] == {torch.float32} for n in resize_ops)
    logits_ref, _ = _decode(tiny, expected[:1])
    logits, _ = _decode(fast, got[:1])
    assert ((logits > 0) == (logits_ref > 0)).float().mean().item() > 0.98


def test_fastpath_accuracy_has_a_bf16_row(tiny: EfficientViTSam,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from effvit_sam.tools import fastpath_accuracy as acc

    assert acc.OPTION_SETS["bf16"] == FastPathOptions.bf16()
    assert "bf16" in acc.SLOW_OPTION_SETS and "bf16" not in acc.parse_args([]).options
    # Without the GELU kernel's bf16 compile (20-30 s here; the kernel has its own tests).
    monkeypatch.setitem(acc.OPTION_SETS, "bf16", FastPathOptions.bf16().with_(compiled_gelu=False))
    (row,) = acc.measure(tiny, _inputs(tiny, 1), ["bf16"])
    assert row.name == "bf16" and 1e-5 < row.embed_rel_l2 < 5e-2
    assert min(row.masks_equal.values()) > 0.98
