"""A tiny randomly initialised ``segment_anything`` ``Sam`` (ViT encoder of depth 1) for tests
that compare our predictor / mask generator with SAM's own on the same weights."""

from __future__ import annotations

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)


def tiny_sam(seed: int = 0) -> Sam:
    """SAM's real structure at 1024 input with a 1-block, 32-wide ViT; eval mode, CPU.

    Embeddings, prompt encoder and mask decoder are 32 wide instead of SAM's 256: the decoder
    runs once per prompt over 64 x 64 image tokens, and at 256 wide a 64-point batch takes
    tens of seconds on a shared 2-core CPU. The code paths are the same.
    """
    torch.manual_seed(seed)
    encoder = ImageEncoderViT(depth=1, embed_dim=32, img_size=1024, patch_size=16, num_heads=2,
                              out_chans=32, global_attn_indexes=(0,), window_size=4,
                              use_rel_pos=True)
    prompt_encoder = PromptEncoder(embed_dim=32, image_embedding_size=(64, 64),
                                   input_image_size=(1024, 1024), mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64,
                                                        num_heads=2),
                          transformer_dim=32, iou_head_depth=3, iou_head_hidden_dim=32)
    return Sam(encoder, prompt_encoder, decoder).eval()


def smooth_upscaling_(model: torch.nn.Module, logit_scale: float = 300.0) -> torch.nn.Module:
    """Make the mask decoder's two 2x2 transposed convs the same at every kernel position, in place.

    Random transposed-conv kernels paint a 4 x 4 checkerboard into the low-res logits, so the
    masks of a random model are speckle with tens of thousands of runs each. Averaged kernels
    upsample like nearest neighbour followed by a channel mix: masks become blobs that follow
    the image embedding, as a trained model's do, and tests of the mask generator stay fast.
    The hypernetworks' last layers are scaled by ``logit_scale`` so logits leave the +-1 band
    around the threshold (a random decoder's are tiny) and stability scores are not all 0.
    """
    with torch.no_grad():
        for module in model.mask_decoder.output_upscaling:
            if isinstance(module, torch.nn.ConvTranspose2d):
                module.weight.copy_(module.weight.mean(dim=(2, 3), keepdim=True).expand_as(
                    module.weight))
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(logit_scale)
            mlp.layers[-1].bias.mul_(logit_scale)
    return model
