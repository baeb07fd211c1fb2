"""The XL structure (six stages, two attention stages, ``neck_expand=4``) through every generic
path at a size a test can afford: fast path, ONNX export, gradients.

The registered XL variants run at 1024 pixels with 117-203 M parameters; this config has their
shape (stage kinds, neck stages 5/4/3, expanded neck blocks) at 256 pixels and a few hundred
thousand parameters, so every rewrite that walks the XL block layout is exercised on each run.
"""

from __future__ import annotations

import pytest
import torch

from effvit_sam import build_sam
from effvit_sam.configs import MODEL_CONFIGS, EncoderConfig, SamConfig
from effvit_sam.inference import FastPathOptions, optimize_for_inference

from .test_fuse import randomise_bn
from .test_models import _train_step_loss

XL = MODEL_CONFIGS["efficientvit-sam-xl0"].encoder
XL_SHAPED = SamConfig(
    "xl-shaped-test",
    EncoderConfig(widths=(8, 16, 24, 32, 48, 64), depths=(1, 1, 1, 1, 1, 1), blocks=XL.blocks,
                  expands=(1, 2, 2, 2, 2, 2), fewer_norm=XL.fewer_norm,
                  attention_scales=XL.attention_scales, qkv_dim=8, neck_stages=XL.neck_stages,
                  neck_width=32, neck_depth=2, neck_expand=XL.neck_expand, out_dim=32,
                  input_size=256, embed_size=64),
    prompt_embed_dim=32, decoder_depth=1, decoder_mlp_dim=64, decoder_heads=2,
    iou_head_hidden_dim=32, mask_in_chans=8,
)


@pytest.fixture(scope="module")
def xl_shaped():
    torch.manual_seed(0)
    return randomise_bn(build_sam(XL_SHAPED), seed=3).eval()


def _inputs(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 256, 256, generator=torch.Generator().manual_seed(1))


def test_config_has_the_xl_structure() -> None:
    enc = XL_SHAPED.encoder
    assert len(enc.widths) == 6 and enc.neck_expand == 4 and enc.neck_stages == (5, 4, 3)
    assert enc.blocks == ("res", "fmb", "fmb", "fmb", "att", "att")


@pytest.mark.parametrize("options", ["exact", "folding_only"])
def test_fast_path_matches_eager(xl_shaped, options: str) -> None:
    opts = FastPathOptions.exact("cpu") if options == "exact" else FastPathOptions(
        channels_last=False, winograd=False, gemm_pointwise=False, fuse_neck=False)
    fast = optimize_for_inference(xl_shaped, options=opts)
    x = _inputs()
    with torch.inference_mode():
        expected = xl_shaped.encode(x)
        got = fast.encode(x)
    assert got.shape == (2, 32, 64, 64)
    assert (got - expected).abs().max().item() < 1e-4


def test_onnx_export_matches_pytorch(xl_shaped, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from effvit_sam.export.onnx import DECODER_ATOL, ENCODER_ATOL, export_onnx

    result = export_onnx(xl_shaped, tmp_path, verify=True)
    assert (tmp_path / "encoder.onnx").is_file() and (tmp_path / "decoder.onnx").is_file()
    assert result["encoder_max_abs_diff"] <= ENCODER_ATOL
    assert result["decoder_max_abs_diff"] <= DECODER_ATOL


def test_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    model = build_sam(XL_SHAPED).train()
    _train_step_loss(model).backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert missing == []
