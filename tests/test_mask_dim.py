"""A mask head wider than SAM's ``dim // 8`` (``SamConfig.mask_dim``): built with SAM's layers
and names, saved and loaded through ``config.json``, decoded by the fast decoder, and widened
from a trained narrow head without changing the logits (``distill/widen.py``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from distill.config import ModelConfig, load_config
from distill.init import build_model
from distill.widen import mask_channels, widen_mask_head
from effvit_sam import build_sam
from effvit_sam.build import from_pretrained
from effvit_sam.checkpoint import CheckpointError, save_pretrained
from effvit_sam.configs import SamConfig, get_config
from effvit_sam.inference.decoder import FastMaskDecoder

TINY = "efficientvit-sam-tiny"  # a 32-wide decoder: SAM's head has 4 channels (hidden 8)


def _logits(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    embedding = torch.randn(1, model.config.prompt_embed_dim, 64, 64, generator=gen)
    boxes = torch.tensor([[100.0, 120, 500, 600], [0, 0, 1023, 1023], [700, 40, 760, 90]])
    clicks = (torch.tensor([[[300.0, 400], [320, 410]]] * 3), torch.tensor([[1, 0]] * 3))
    with torch.no_grad():
        return model.decode(embedding, points=clicks, boxes=boxes, mask_input=None,
                            multimask_output=True)


def _trained_like(model):
    """Random weights with a trained decoder's logit scale (a fresh one's are ~0.02)."""
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(50.0)
    return model


def test_sam_head_is_the_default_and_mask_dim_widens_it():
    cfg = get_config(TINY)
    assert cfg.mask_dim is None and cfg.mask_channels == 4
    up = build_sam(TINY).mask_decoder.output_upscaling
    assert (up[0].out_channels, up[3].out_channels) == (8, 4)
    wide = build_sam(replace(cfg, mask_dim=12)).eval()
    up = wide.mask_decoder.output_upscaling
    assert (up[0].out_channels, up[1].weight.shape[0], up[3].out_channels) == (24, 24, 12)
    assert all(m.layers[-1].out_features == 12 for m in wide.mask_decoder.output_hypernetworks_mlps)
    logits, iou = _logits(wide)
    assert logits.shape == (3, 3, 256, 256) and iou.shape == (3, 3)
    with pytest.raises(ValueError, match="mask_dim must be a positive"):
        replace(cfg, mask_dim=0)


def test_a_wide_model_round_trips_through_its_folder(tmp_path):
    torch.manual_seed(0)
    model = _trained_like(build_sam(replace(get_config(TINY), mask_dim=8)).eval())
    save_pretrained(model, tmp_path / "wide")
    loaded = from_pretrained(tmp_path / "wide").eval()
    assert loaded.config.mask_dim == 8 and loaded.config == model.config
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)
    assert SamConfig.from_dict(model.config.to_dict()) == model.config
    # The registered (narrow) variant does not take the wide weights silently.
    with pytest.raises(CheckpointError):
        build_sam(TINY, checkpoint=tmp_path / "wide" / "model.safetensors")


def test_fast_decoder_decodes_a_wide_head_as_sam_does():
    torch.manual_seed(1)
    model = _trained_like(build_sam(replace(get_config(TINY), mask_dim=16)).eval())
    fast = FastMaskDecoder(model.mask_decoder, chunk_size=2)
    gen = torch.Generator().manual_seed(3)
    image = torch.randn(1, 32, 64, 64, generator=gen)
    boxes = torch.tensor([[100.0, 120, 500, 600], [0, 0, 1023, 1023], [700, 40, 760, 90]])
    pe = model.prompt_encoder
    with torch.no_grad():
        sparse, dense = pe(points=None, boxes=boxes, masks=None)
        want = model.mask_decoder(image, pe.get_dense_pe(), sparse, dense, True)
        got = fast(image, pe.get_dense_pe(), sparse, dense, True)
    assert want[0].abs().max() > 1.0  # logits of a trained model's size, not ~0
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-3)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-4)


@pytest.mark.parametrize("mask_dim", [4, 8, 16])
def test_widening_keeps_the_logits_and_the_new_channels_learn(mask_dim):
    torch.manual_seed(2)
    narrow = _trained_like(build_sam(TINY).eval())
    state = narrow.state_dict()
    wide_state = widen_mask_head(state, mask_dim)
    assert mask_channels(wide_state) == mask_dim and mask_channels(state) == 4
    wide = build_sam(replace(narrow.config, mask_dim=mask_dim)).eval()
    wide.load_state_dict(wide_state, strict=True)
    want, got = _logits(narrow), _logits(wide)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-5)
    mlps = wide.mask_decoder.output_hypernetworks_mlps
    assert all(not m.layers[-1].weight[4:].any() and not m.layers[-1].bias[4:].any() for m in mlps)
    last = mlps[1].layers[-1]  # the first multimask token's (token 0 is the single-mask one)
    # One backward pass: the new channels' hypernetwork rows get a gradient (they can learn).
    wide.train()
    logits, _ = wide.decode(torch.randn(1, 32, 64, 64), points=None,
                            boxes=torch.tensor([[100.0, 100, 600, 700]]), mask_input=None,
                            multimask_output=True)
    logits.sigmoid().mean().backward()
    if mask_dim > 4:
        assert last.weight.grad[4:].abs().sum() > 0


@pytest.mark.parametrize("mask_dim, message", [(2, "mask_dim at least 4"),
                                               (6, "must be a multiple of the old one")])
def test_widening_refuses_what_it_cannot_embed(mask_dim, message):
    with pytest.raises(ValueError, match=message):
        widen_mask_head(build_sam(TINY).state_dict(), mask_dim)


def test_a_run_widens_its_narrow_init_and_draws_the_same_masks(tmp_path):
    torch.manual_seed(4)
    narrow = _trained_like(build_sam(TINY).eval())
    save_pretrained(narrow, tmp_path / "narrow")
    wide = build_model(ModelConfig(name=TINY, init=str(tmp_path / "narrow"), mask_dim=16)).eval()
    assert wide.config.mask_channels == 16
    torch.testing.assert_close(_logits(wide)[0], _logits(narrow)[0], rtol=0, atol=1e-4)
    # Without mask_dim the same init loads as it is; a recipe's mask_dim is checked.
    same = build_model(ModelConfig(name=TINY, init=str(tmp_path / "narrow"))).eval()
    assert same.config.mask_channels == 4
    with pytest.raises(ValueError, match="model.mask_dim must be a positive"):
        load_config("smoke_phase2", ["model.mask_dim=0"])
    with pytest.raises(CheckpointError, match="mask head widened to 6"):
        build_model(ModelConfig(name=TINY, init=str(tmp_path / "narrow"), mask_dim=6))


def test_a_wide_head_exports_to_onnx_and_matches(tmp_path):
    from effvit_sam.export.onnx import DECODER_ATOL, export_onnx

    torch.manual_seed(5)
    model = _trained_like(build_sam(replace(get_config(TINY), mask_dim=8)).eval())
    result = export_onnx(model, tmp_path)  # verifies against PyTorch, raises beyond the atol
    assert 0 <= result["decoder_max_abs_diff"] <= DECODER_ATOL
