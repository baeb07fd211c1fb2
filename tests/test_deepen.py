"""A deeper backbone started from a trained shallower one (``model.sizes: {encoder.depths}``,
:mod:`distill.deepen`): the same outputs at step 0, new blocks that can learn, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.config import ConfigError, ModelConfig, load_config
from distill.deepen import deepen_encoder, is_shallower, stage_blocks
from distill.init import build_model
from effvit_sam import build_sam
from effvit_sam.build import from_pretrained
from effvit_sam.checkpoint import CheckpointError, save_pretrained

TINY = "efficientvit-sam-tiny"  # depths (1, 1, 1, 1, 1): res, fmb, fmb, mb, att stages
DEEPER = {"encoder.depths": [1, 2, 1, 3, 3]}


def _embed(model, image):
    with torch.no_grad():
        return model.image_encoder(image)


def test_deeper_backbone_draws_what_the_shallow_one_drew(trained_tiny, tmp_path):
    old, path = trained_tiny
    torch.manual_seed(5)
    model = build_model(ModelConfig(name=TINY, init=str(path), sizes=DEEPER)).eval()
    assert model.config.encoder.depths == (1, 2, 1, 3, 3)
    assert stage_blocks(model.state_dict()) == {0: 2, 1: 3, 2: 2, 3: 4, 4: 4}
    image = torch.randn(2, 3, 256, 256)
    want, got = _embed(old, image), _embed(model, image)
    assert want.abs().mean() > 0.05
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # the old weights are kept exactly, the new blocks are not all zeros (they can learn)
    state, before = model.state_dict(), old.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before.items())
    new = [k for k in state if k not in before]
    assert len(new) > 20 and all("backbone.stages." in k for k in new)
    conv = "image_encoder.backbone.stages.3.op_list.3.main.inverted_conv.conv.weight"
    assert state[conv].abs().sum() > 0
    zeroed = [k for k in new if k.endswith("norm.weight") and not state[k].any()]
    # stage 1: one FusedMBConv; stage 3: two MBConvs; stage 4: two attention blocks of two
    # residual halves each
    assert len(zeroed) == 1 + 2 + 4
    # a loss through the new blocks moves their zeroed norms
    model.train()
    model.image_encoder(image).square().mean().backward()
    grads = [p.grad for n, p in model.named_parameters()
             if f"image_encoder.{n.removeprefix('image_encoder.')}" in zeroed]
    assert len(grads) == len(zeroed) and all(g is not None and g.abs().sum() > 0 for g in grads)
    # the deeper config travels with the weights
    save_pretrained(model, tmp_path / "deep")
    assert from_pretrained(tmp_path / "deep").config.encoder.depths == (1, 2, 1, 3, 3)


def test_same_depth_is_not_deepened_and_shallower_is_refused(trained_tiny):
    old, path = trained_tiny
    state = old.state_dict()
    assert not is_shallower(state, build_sam(TINY))
    deeper = build_model(ModelConfig(name=TINY, sizes=DEEPER))
    assert is_shallower(state, deeper)
    with pytest.raises(ValueError, match="every stage must keep or gain blocks"):
        deepen_encoder(deeper.state_dict(), build_sam(TINY))
    # a model shallower than its init: the strict load names the file and the blocks it cannot
    # take (the weights are read once, the error still says where from)
    save_pretrained(deeper, path.parent / "deep")
    with pytest.raises(CheckpointError,
                       match=r"unexpected keys \(70\): image_encoder.backbone.stages.1.op_list.2"
                       ) as err:
        build_model(ModelConfig(name=TINY, init=str(path.parent / "deep")))
    assert str(err.value).startswith(f"{path.parent / 'deep' / 'model.safetensors'} does not fit")
    # its config.json says what the model should have been: the error says what to set
    assert str(err.value).endswith("encoder depths [1, 2, 1, 3, 3], the model has [1, 1, 1, 1, 1]: "
                                   "set model.sizes: {encoder.depths: [1, 2, 1, 3, 3]}")
    # with the sizes set, the same folder loads
    model = build_model(ModelConfig(name=TINY, init=str(path.parent / "deep"), sizes=DEEPER))
    assert model.config.encoder.depths == (1, 2, 1, 3, 3)


def test_every_new_block_starts_as_an_identity():
    torch.manual_seed(1)
    model = build_model(ModelConfig(name=TINY, sizes=DEEPER)).eval()
    stages = model.image_encoder.backbone.stages
    shallow = build_sam(TINY).state_dict()
    deepen_encoder(shallow, model)
    x = torch.randn(1, 32, 16, 16)
    for block in list(stages[3].op_list)[2:]:
        with torch.no_grad():
            torch.testing.assert_close(block(x), x, rtol=0, atol=0)
    norms = [m for m in stages[4].op_list[3].modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not norms[-1].weight.any()


@pytest.mark.parametrize("value, message", [
    ("[1, 2, 3]", "encoder.depths needs 5 entries"),
    ("[1, 1, 1, -1, 1]", "entries must be >= 0"),
])
def test_bad_depths_are_config_errors(value, message):
    with pytest.raises(ConfigError, match=message):
        load_config("smoke_phase2", [f"model.sizes={{encoder.depths: {value}}}"])
    with pytest.raises(ConfigError, match="not a per-stage integer field"):
        load_config("smoke_phase2", ["model.sizes={encoder.blocks: [1, 1, 1, 1, 1]}"])
