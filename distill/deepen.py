"""Start a deeper encoder from a trained shallower one without changing what the model draws.

``model.sizes: {encoder.depths: [...]}`` gives a run's backbone more blocks per stage than the
weights in ``model.init`` have. Every block after a stage's downsampling block is residual
(``x + f(x)``: EfficientViT's MBConv / FusedMBConv / ResBlock blocks, and both halves of an
attention block), so the new blocks are appended at the end of their stage and start as
identities: the last BatchNorm of each new residual branch gets weight and bias 0, so ``f(x) =
0`` and the deepened model's outputs equal the old model's at step 0 (Goyal et al.'s
zero-initialised residual, Net2Net's deeper network). The other weights of a new block keep
their random initialisation, so the branch learns as soon as that norm's weight moves: its
gradient is the branch's normalised features, which are not zero.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from effvit_sam.modeling import EfficientViTSam
from effvit_sam.modeling.blocks import Residual

_BLOCK = re.compile(r"^image_encoder\.backbone\.stages\.(\d+)\.op_list\.(\d+)\.")


def stage_blocks(keys) -> dict[int, int]:
    """Ops per backbone stage (the downsampling block included) in a state dict's keys."""
    count: dict[int, int] = {}
    for key in keys:
        match = _BLOCK.match(key)
        if match:
            stage, op = int(match[1]), int(match[2])
            count[stage] = max(count.get(stage, 0), op + 1)
    return count


def is_shallower(state: dict[str, torch.Tensor], model: EfficientViTSam) -> bool:
    """Whether ``state``'s backbone has fewer blocks than ``model``'s in some stage (and more in
    none, which no deepening can give)."""
    have, want = stage_blocks(state), stage_blocks(model.state_dict())
    if set(have) != set(want):
        return False
    return all(have[s] <= want[s] for s in want) and any(have[s] < want[s] for s in want)


def _zero_residual_branches(block: nn.Module) -> int:
    """Zero the last BatchNorm of every residual branch in ``block``; how many."""
    done = 0
    for module in block.modules():
        if isinstance(module, Residual) and module.shortcut:
            norms = [m for m in module.main.modules() if isinstance(m, nn.BatchNorm2d)]
            if not norms:
                raise ValueError(f"a residual branch without a BatchNorm "
                                 f"({type(module.main).__name__}) cannot start as an identity")
            with torch.no_grad():
                norms[-1].weight.zero_()
                norms[-1].bias.zero_()
            done += 1
    return done


def deepen_encoder(state: dict[str, torch.Tensor], model: EfficientViTSam,
                   ) -> dict[str, torch.Tensor]:
    """A state dict for ``model``: ``state``'s weights, and for each backbone block ``state``
    does not have (appended at the end of its stage) ``model``'s own random weights with every
    residual branch starting at zero, so the outputs are ``state``'s model's. ``model``'s own
    new blocks are changed in place (their zeroed norms)."""
    have, want = stage_blocks(state), stage_blocks(model.state_dict())
    if set(have) != set(want) or any(have[s] > want[s] for s in want):
        raise ValueError(f"cannot deepen a backbone of {have} blocks per stage to {want}: "
                         "every stage must keep or gain blocks")
    stages = model.image_encoder.backbone.stages
    for stage, count in want.items():
        for op in range(have[stage], count):
            if not _zero_residual_branches(stages[stage].op_list[op]):
                raise ValueError(f"block {op} of stage {stage} has no residual branch: it "
                                 "cannot start as an identity")
    out = dict(state)
    for key, value in model.state_dict().items():
        match = _BLOCK.match(key)
        if match and int(match[2]) >= have[int(match[1])]:
            if key in out:
                raise ValueError(f"{key} is in the weights but beyond their stage's blocks")
            out[key] = value.detach().clone()
    return out
