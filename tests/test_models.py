"""Every registered variant: official key table, parameter count, shapes, gradients, parity."""

from __future__ import annotations

import pytest
import torch

from effvit_sam import build_sam, get_config, list_models
from effvit_sam.configs import resolve_name

from .conftest import OFFICIAL, deterministic_model, key_table, parity_fixture

OFFICIAL_PARAMS = {
    "efficientvit-sam-l0": 34_792_784,
    "efficientvit-sam-l1": 47_650_128,
    "efficientvit-sam-l2": 61_328_592,
    "efficientvit-sam-xl0": 116_957_904,
    "efficientvit-sam-xl1": 203_346_128,
}


def test_registry_names() -> None:
    assert set(OFFICIAL) == set(OFFICIAL_PARAMS)
    assert "efficientvit-sam-tiny" in list_models()
    assert "efficientvit-sam-mini" in list_models()
    assert not ({"efficientvit-sam-tiny", "efficientvit-sam-mini"} & set(OFFICIAL))


def test_mini_variant_shape() -> None:
    """The made-shard distillation run's model: 64-wide embedding and decoder, two decoder
    layers, 256 input."""
    cfg = get_config("mini")
    assert (cfg.encoder.input_size, cfg.encoder.out_dim, cfg.prompt_embed_dim) == (256, 64, 64)
    assert (cfg.decoder_depth, cfg.decoder_heads, cfg.hub_file) == (2, 4, None)
    with torch.device("meta"):
        model = build_sam("mini")
    assert sum(p.numel() for p in model.parameters()) == 1_038_064
    assert sum(p.numel() for p in model.image_encoder.parameters()) == 844_968
    assert resolve_name("l0") == resolve_name("EfficientViT_SAM_L0") == "efficientvit-sam-l0"
    with pytest.raises(KeyError, match="valid names: efficientvit-sam-l0"):
        build_sam("efficientvit-sam-l9")


@pytest.mark.parametrize("variant", OFFICIAL)
def test_state_dict_matches_official_key_table(variant: str) -> None:
    with torch.device("meta"):
        model = build_sam(variant)
    ours = {k: (tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()}
    official = {}
    for line in key_table(variant).read_text().splitlines():
        name, shape, dtype = line.split("\t")
        official[name] = (tuple(eval(shape)), dtype)
    assert ours == official


@pytest.mark.parametrize("variant", OFFICIAL)
def test_parameter_count(variant: str) -> None:
    with torch.device("meta"):
        model = build_sam(variant)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[variant]


@pytest.mark.parametrize("variant", OFFICIAL)
def test_fixture_parity(variant: str) -> None:
    """Deterministic weights + the fixture photo reproduce the official encoder input/output."""
    ref = parity_fixture(variant)
    model = deterministic_model(variant)
    x = model.preprocess(ref["image"])
    input_diff = (x - ref["encoder_input"]).abs().max().item()
    assert input_diff < 1e-3
    with torch.inference_mode():
        emb = model.encode(ref["encoder_input"])
    assert emb.shape == (1, 256, 64, 64)
    emb_diff = (emb - ref["image_embeddings"]).abs().max().item()
    assert emb_diff < 1e-3


def _train_step_loss(model, batch: int = 1) -> torch.Tensor:
    """One loss touching every parameter: two decodes cover both mask-input branches and both
    multimask settings (SAM uses ``no_mask_embed`` only without a mask input, and mask token 0
    only for single-mask output)."""
    size = model.encoder_size
    images = torch.randn(batch, 3, size, size)
    emb = model.encode(images)
    coords = torch.tensor([[[100.0, 200.0], [400.0, 300.0]]])
    labels = torch.tensor([[1, 0]])
    box = torch.tensor([[50.0, 60.0, 500.0, 700.0]])
    mask = torch.randn(1, 1, 256, 256)
    low1, iou1 = model.decode(emb[:1], points=(coords, labels), boxes=box, mask_input=mask,
                              multimask_output=True)
    low2, iou2 = model.decode(emb[:1], points=(coords, labels), boxes=None, mask_input=None,
                              multimask_output=False)
    return low1.mean() + low2.mean() + iou1.mean() + iou2.mean() + emb.mean()


@pytest.mark.parametrize("variant", list_models())
def test_forward_backward_every_parameter_gets_gradient(variant: str) -> None:
    torch.manual_seed(0)
    model = build_sam(variant).train()
    cfg = get_config(variant)
    size = cfg.encoder.input_size
    with torch.no_grad():
        emb = model.encode(torch.randn(1, 3, size, size))
    assert emb.shape == (1, cfg.encoder.out_dim, 64, 64)
    assert torch.isfinite(emb).all()
    model.zero_grad()
    _train_step_loss(model).backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert no_grad == []


def test_forward_batches_and_rejects_wrong_size(tiny_model) -> None:
    size = tiny_model.encoder_size
    images = torch.randn(2, 3, size, size)
    coords = torch.tensor([[[10.0, 20.0]]])
    labels = torch.tensor([[1]])
    out = tiny_model(images, points=[(coords, labels), None],
                     boxes=[None, torch.tensor([[0.0, 0.0, 100.0, 100.0]])])
    assert [o[0].shape for o in out] == [(1, 3, 256, 256)] * 2
    assert [o[1].shape for o in out] == [(1, 3)] * 2
    with pytest.raises(ValueError, match=f"Bx3x{size}x{size}"):
        tiny_model.encode(torch.randn(1, 3, size + 1, size))


def test_linear_and_quadratic_attention_agree() -> None:
    """The official model switches to quadratic attention for tiny maps; both compute the same
    normalised attention, so they must agree where both are defined."""
    from effvit_sam.modeling.blocks import LiteMLA

    mla = LiteMLA(32, dim=8, scales=(5,), norm_layer=torch.nn.BatchNorm2d).eval()
    qkv = torch.rand(2, 3 * 32 * 2, 6, 7)
    torch.testing.assert_close(mla.linear_attention(qkv), mla.quadratic_attention(qkv),
                               rtol=1e-4, atol=1e-5)
