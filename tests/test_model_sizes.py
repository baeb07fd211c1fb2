"""A run's model with other sizes than its variant's (``model.sizes``) and weights from a
trained model for all but some parts (``model.init_fresh``): a wider decoder on a trained
encoder, say."""

from __future__ import annotations

import pytest
import torch

from distill.config import ConfigError, ModelConfig, load_config
from distill.init import build_model
from effvit_sam.build import from_pretrained
from effvit_sam.checkpoint import CheckpointError, save_pretrained

TINY = "efficientvit-sam-tiny"  # 32-wide decoder, encoder out_dim 32
WIDER = {"prompt_embed_dim": 64, "decoder_heads": 4, "encoder.out_dim": 64}
FRESH = ["image_encoder.neck.output_ops.", "image_encoder.norm.", "prompt_encoder.",
         "mask_decoder."]


def test_sizes_change_the_variant_and_are_recorded(tmp_path):
    model = build_model(ModelConfig(name=TINY, sizes=WIDER))
    cfg = model.config
    assert (cfg.prompt_embed_dim, cfg.decoder_heads, cfg.encoder.out_dim) == (64, 4, 64)
    assert model.mask_decoder.transformer_dim == 64 and cfg.mask_channels == 8
    save_pretrained(model, tmp_path / "wide")
    assert from_pretrained(tmp_path / "wide").config == cfg


@pytest.mark.parametrize("sizes, message", [
    ({"decoder_width": 64}, "decoder_width is not an integer field of SamConfig"),
    ({"encoder.widths": 8}, "encoder.widths is not an integer field of EncoderConfig"),
    ({"single_mask": 1}, "single_mask is not an integer field"),
])
def test_bad_sizes_are_config_errors_before_a_run(sizes, message):
    key, value = next(iter(sizes.items()))
    with pytest.raises(ConfigError, match=message):
        load_config("smoke_phase2", [f"model.sizes={{{key}: {value}}}"])


def test_init_fresh_keeps_the_trained_encoder_and_a_new_decoder(trained_tiny):
    old, path = trained_tiny
    torch.manual_seed(3)
    model = build_model(ModelConfig(name=TINY, init=str(path), sizes=WIDER, init_fresh=FRESH))
    new, before = model.state_dict(), old.state_dict()
    kept = [k for k in new if not any(k.startswith(p) for p in FRESH)]
    assert kept and all(torch.equal(new[k], before[k]) for k in kept)
    assert any(k.startswith("image_encoder.backbone") for k in kept)
    # the fresh parts are the random initialisation (not the perturbed trained values)
    torch.manual_seed(3)
    reference = build_model(ModelConfig(name=TINY, sizes=WIDER)).state_dict()
    fresh = [k for k in new if k not in kept]
    assert fresh and all(torch.equal(new[k], reference[k]) for k in fresh)


def test_init_fresh_errors_name_the_problem(trained_tiny):
    _, path = trained_tiny
    with pytest.raises(CheckpointError, match="prefix 'mask_decoderX.' names no weight"):
        build_model(ModelConfig(name=TINY, init=str(path), init_fresh=["mask_decoderX."]))
    # a part whose shape changed but is not declared fresh: the strict load says which
    with pytest.raises(CheckpointError, match="image_encoder.neck.output_ops"):
        build_model(ModelConfig(name=TINY, init=str(path), sizes=WIDER,
                                init_fresh=["prompt_encoder.", "mask_decoder."]))
    with pytest.raises(CheckpointError, match="model.init is not set"):
        build_model(ModelConfig(name=TINY, init_fresh=["mask_decoder."]))
