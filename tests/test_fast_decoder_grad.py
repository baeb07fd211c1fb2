"""FastMaskDecoder under autograd (phase 2's ``train.fast_decoder``): SAM's decoder function, so
SAM's gradients. Checked in float64, where rounding cannot hide a wrong term, and through the
whole fine-tuning step (prompts, correction rounds, fed logits, losses) in float32."""

from __future__ import annotations

import pytest
import torch

from distill.config import PromptConfig
from distill.phase2 import FinetuneStep
from effvit_sam import build_sam
from effvit_sam.inference.decoder import FastMaskDecoder

from .test_distill_units import _two_mask_batch


def _grads(model, loss: torch.Tensor, extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model.zero_grad()
    for t in extra.values():
        t.grad = None
    loss.backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    out.update({n: t.grad.clone() for n, t in extra.items()})
    return out


def _compare(sam: dict, fast: dict, *, rel: float) -> None:
    """Every gradient ours has equals SAM's; the ones ours lacks are (near) zero in SAM's: the
    single-mask hypernetwork when only multimask outputs are read, and the token->image key
    biases, which drop out of the softmax."""
    assert set(fast) <= set(sam) and "embedding" in fast
    for name, g in sam.items():
        if name not in fast:
            assert g.abs().max() < 1e-6, name
            continue
        scale = max(g.norm().item(), 1e-6)  # biases with no true gradient: rounding only
        assert (g - fast[name]).norm().item() <= rel * scale, name


@pytest.mark.parametrize("prompt, multimask", [("points", True), ("boxes", False),
                                               ("points+mask", True)])
def test_fast_decoder_gradients_equal_sams_in_float64(prompt, multimask) -> None:
    torch.manual_seed(0)
    model = build_sam("efficientvit-sam-tiny").eval()
    gen = torch.Generator().manual_seed(1)
    k = 5
    points = (torch.rand(k, 3, 2, generator=gen) * 1024,
              torch.tensor([[1, 0, 1]] * k)) if "points" in prompt else None
    boxes = torch.tensor([[100.0, 80, 600, 700]]).repeat(k, 1) if prompt == "boxes" else None
    masks = torch.randn(k, 1, 256, 256, generator=gen) * 3 if "mask" in prompt else None
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=masks)
    pe = model.prompt_encoder.get_dense_pe().double()
    model = model.double()
    sparse = sparse.detach().double().requires_grad_()
    dense = dense.detach().double()
    embedding = torch.randn(pe.shape, dtype=torch.float64, generator=gen).requires_grad_()
    extra = {"embedding": embedding, "sparse": sparse}
    grads, outs = {}, {}
    for name, decoder in (("sam", model.mask_decoder),
                          ("fast", FastMaskDecoder(model.mask_decoder))):
        logits, iou = decoder(embedding, pe, sparse, dense, multimask)
        outs[name] = logits.detach()
        weight = torch.linspace(-1, 1, logits.shape[-1], dtype=torch.float64)
        loss = (logits.sigmoid() * weight).mean() + (iou * torch.arange(1.0, iou.shape[1] + 1,
                                                     dtype=torch.float64)).sum()
        grads[name] = _grads(model, loss, extra)
    assert torch.allclose(outs["sam"], outs["fast"], atol=1e-10)
    _compare(grads["sam"], grads["fast"], rel=1e-8)


def test_finetune_step_with_the_fast_decoder_trains_like_sams() -> None:
    """The same step (boxes or clicks, two correction rounds, previous logits fed half of the
    time) gives the same loss and gradients through either decoder."""
    torch.manual_seed(0)
    model = build_sam("efficientvit-sam-tiny").train()
    batch = _two_mask_batch()
    prompts = PromptConfig(box_prob=0.5, max_points=2, negative_prob=0.5, iterative_rounds=2,
                           feed_prob=0.5, multimask_all=True)
    results = {}
    for fast in (False, True):
        step = FinetuneStep(model, prompts, mask_loss="bce", fast_decoder=fast)
        losses = []
        for seed in (0, 1):  # two prompt draws: boxes, then clicks
            loss, _ = step(batch, torch.Generator().manual_seed(seed))
            losses.append(loss)
        results[fast] = (torch.stack(losses).detach(),
                         _grads(model, torch.stack(losses).sum(), {}))
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-6)
    sam, ours = results[False][1], results[True][1]
    for name, g in sam.items():
        if name not in ours:
            assert g.abs().max() < 1e-5, name
            continue
        assert (g - ours[name]).norm() <= 2e-3 * max(g.norm().item(), 1e-4), name
    assert sum(g.abs().sum() for g in ours.values()) > 0  # a real gradient reached the model


def test_the_fast_decoder_stays_out_of_the_state_dict() -> None:
    model = build_sam("efficientvit-sam-tiny")
    step = FinetuneStep(model, PromptConfig(), mask_loss="focal")
    assert step.state_dict().keys() == FinetuneStep(
        model, PromptConfig(), mask_loss="focal", fast_decoder=False).state_dict().keys()
    assert len(list(step.parameters())) == len(list(model.parameters()))
