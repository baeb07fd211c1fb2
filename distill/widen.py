"""Start a wider mask head from a trained narrow one without changing what the model draws.

``model.mask_dim`` gives a run's model more upscaled-embedding channels than the weights in
``model.init`` were trained with (SAM's ``dim // 8``: 8 for the made models' 64-wide decoder).
A mask is a per-pixel combination of those channels, so a narrow head caps how well a model can
draw however well its transformer knows the object. Retraining the head from random weights
would throw away what the decoder learned; instead the narrow head is embedded in the wide one
(Net2Net-style) so the widened model's logits equal the old model's at step 0:

* the first transposed conv's ``h`` output channels are repeated ``r`` times (``r`` = new
  hidden / ``h``): a LayerNorm over ``r`` copies of the same channels has the same mean and
  variance, so every copy is normalised exactly as before;
* the second transposed conv reads each copy with ``1 / r`` of the old weights into the old
  output channels (their sum is the old value) and with fresh random weights into the new ones;
* each hypernetwork's last layer keeps its rows for the old channels and gets zero rows for the
  new ones, so the new channels add nothing until training moves those rows (their gradient is
  the new channels' features, which are not zero).
"""

from __future__ import annotations

import math

import torch

UPSCALE = "mask_decoder.output_upscaling."
HYPER = "mask_decoder.output_hypernetworks_mlps."


def mask_channels(state: dict[str, torch.Tensor]) -> int:
    """Channels of the upscaled embedding in a SAM-family state dict."""
    return state[UPSCALE + "3.weight"].shape[1]


def widen_mask_head(state: dict[str, torch.Tensor], mask_dim: int) -> dict[str, torch.Tensor]:
    """A copy of ``state`` whose mask head has ``mask_dim`` channels (hidden ``2 * mask_dim``),
    drawing the same logits; the new weights come from the global torch RNG."""
    up0, up3 = state[UPSCALE + "0.weight"], state[UPSCALE + "3.weight"]
    hidden, old = up0.shape[1], up3.shape[1]
    new_hidden = 2 * mask_dim
    if mask_dim < old or new_hidden % hidden:
        raise ValueError(f"cannot widen a mask head of {old} channels (hidden {hidden}) to "
                         f"{mask_dim} (hidden {new_hidden}): the new hidden width must be a "
                         f"multiple of the old one and mask_dim at least {old}")
    r = new_hidden // hidden
    out = dict(state)
    for key in ("0.weight", "0.bias", "1.weight", "1.bias"):
        tensor = state[UPSCALE + key]
        axis = 1 if key == "0.weight" else 0
        out[UPSCALE + key] = torch.cat([tensor] * r, axis)
    fresh = torch.randn(new_hidden, mask_dim - old, 2, 2, dtype=up3.dtype) / math.sqrt(new_hidden)
    out[UPSCALE + "3.weight"] = torch.cat([torch.cat([up3 / r] * r, 0), fresh], 1)
    bias = state[UPSCALE + "3.bias"]
    out[UPSCALE + "3.bias"] = torch.cat([bias, bias.new_zeros(mask_dim - old)])
    last = [k for k in state if k.startswith(HYPER) and ".layers." in k]
    depth = max(int(k.split(".layers.")[1].split(".")[0]) for k in last)
    for key in last:
        if f".layers.{depth}." not in key:
            continue
        tensor = state[key]
        pad = tensor.new_zeros((mask_dim - old, *tensor.shape[1:]))
        out[key] = torch.cat([tensor, pad], 0)
    return out
