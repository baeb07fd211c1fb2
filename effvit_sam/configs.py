"""Variants are data: one frozen config per EfficientViT-SAM model, in one registry."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

BLOCK_TYPES = ("res", "fmb", "mb", "att")


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of an EfficientViT-L image encoder (backbone + SAM neck).

    Stage 0 is the stem (a stride-2 conv followed by ``depths[0]`` residual blocks); every later
    stage starts with a stride-2 downsampling block followed by ``depths[i]`` blocks of
    ``blocks[i]``.
    """

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    blocks: tuple[str, ...]
    expands: tuple[int, ...]
    fewer_norm: tuple[bool, ...]
    attention_scales: tuple[int, ...]
    qkv_dim: int = 32
    neck_stages: tuple[int, ...] = (4, 3, 2)
    neck_width: int = 256
    neck_depth: int = 4
    neck_expand: int = 1
    out_dim: int = 256
    input_size: int = 512
    embed_size: int = 64
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        n = len(self.widths)
        for name in ("depths", "blocks", "expands", "fewer_norm"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, widths has {n}")
        unknown = set(self.blocks) - set(BLOCK_TYPES)
        if unknown:
            raise ValueError(f"unknown block types {sorted(unknown)}; valid: {BLOCK_TYPES}")
        if self.blocks[0] != "res":
            raise ValueError("stage 0 (the stem) must use 'res' blocks")
        if any(s <= 0 or s >= n for s in self.neck_stages):
            raise ValueError(f"neck_stages {self.neck_stages} must name stages 1..{n - 1}")


SINGLE_MASK_MODES = ("token", "best_of_three")


@dataclass(frozen=True)
class SamConfig:
    """A whole EfficientViT-SAM model: encoder plus SAM's prompt encoder and mask decoder."""

    name: str
    encoder: EncoderConfig
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    # Channels of the upscaled image embedding that each mask token's hypernetwork reads (a mask
    # is their per-pixel combination); ``None``: SAM's ``prompt_embed_dim // 8``. Wider heads
    # keep SAM's module names and layout (2x2 transposed conv to ``2 * mask_dim``, LayerNorm2d,
    # GELU, 2x2 transposed conv to ``mask_dim``, GELU), only the channel counts differ.
    mask_dim: int | None = None
    transformer_norm_eps: float = 1e-6
    # What a single-mask request returns: "token", SAM's first mask token; "best_of_three", the
    # best-scored of the three multimask outputs, for models trained on those alone
    # (``prompts.multimask_all``), whose first token is untrained.
    single_mask: str = "token"
    hub_file: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.single_mask not in SINGLE_MASK_MODES:
            raise ValueError(f"single_mask must be one of {SINGLE_MASK_MODES}, got "
                             f"{self.single_mask!r}")
        if self.mask_dim is not None and self.mask_dim < 1:
            raise ValueError(f"mask_dim must be a positive channel count, got {self.mask_dim}")

    @property
    def mask_channels(self) -> int:
        """Channels of the upscaled embedding (``mask_dim``, or SAM's ``prompt_embed_dim // 8``)."""
        return self.mask_dim or self.prompt_embed_dim // 8

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SamConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown SamConfig keys {sorted(unknown)}")
        enc = dict(data["encoder"])
        enc_known = {f.name for f in fields(EncoderConfig)}
        if set(enc) - enc_known:
            raise ValueError(f"unknown EncoderConfig keys {sorted(set(enc) - enc_known)}")
        for key, value in enc.items():
            if isinstance(value, list):
                enc[key] = tuple(value)
        return cls(**{**data, "encoder": EncoderConfig(**enc)})


_L_WIDTHS = (32, 64, 128, 256, 512)
_L_BLOCKS = ("res", "fmb", "fmb", "mb", "att")
_L_EXPANDS = (1, 4, 4, 4, 6)
_L_FEWER = (False, False, False, True, True)

_XL_WIDTHS = (32, 64, 128, 256, 512, 1024)
_XL_BLOCKS = ("res", "fmb", "fmb", "fmb", "att", "att")
_XL_EXPANDS = (1, 4, 4, 4, 4, 6)
_XL_FEWER = (False, False, False, False, True, True)


def _l(depths: tuple[int, ...], neck_depth: int) -> EncoderConfig:
    return EncoderConfig(widths=_L_WIDTHS, depths=depths, blocks=_L_BLOCKS, expands=_L_EXPANDS,
                         fewer_norm=_L_FEWER, attention_scales=(5,), neck_stages=(4, 3, 2),
                         neck_depth=neck_depth, neck_expand=1, input_size=512)


def _xl(depths: tuple[int, ...], neck_depth: int) -> EncoderConfig:
    return EncoderConfig(widths=_XL_WIDTHS, depths=depths, blocks=_XL_BLOCKS, expands=_XL_EXPANDS,
                         fewer_norm=_XL_FEWER, attention_scales=(3,), neck_stages=(5, 4, 3),
                         neck_depth=neck_depth, neck_expand=4, input_size=1024)


# The made-data models (distill/made_model_run.sh) train the three multimask outputs only, so a
# single-mask request takes the best of them (single_mask="best_of_three").
_MINI_DECODER = dict(prompt_embed_dim=64, decoder_depth=2, decoder_mlp_dim=256, decoder_heads=4,
                     iou_head_hidden_dim=64, mask_in_chans=16)

MODEL_CONFIGS: dict[str, SamConfig] = {
    "efficientvit-sam-l0": SamConfig("efficientvit-sam-l0", _l((1, 1, 1, 4, 4), 4),
                                     hub_file="efficientvit_sam_l0.pt"),
    "efficientvit-sam-l1": SamConfig("efficientvit-sam-l1", _l((1, 1, 1, 6, 6), 8),
                                     hub_file="efficientvit_sam_l1.pt"),
    "efficientvit-sam-l2": SamConfig("efficientvit-sam-l2", _l((1, 2, 2, 8, 8), 12),
                                     hub_file="efficientvit_sam_l2.pt"),
    "efficientvit-sam-xl0": SamConfig("efficientvit-sam-xl0", _xl((0, 1, 1, 2, 3, 3), 6),
                                      hub_file="efficientvit_sam_xl0.pt"),
    "efficientvit-sam-xl1": SamConfig("efficientvit-sam-xl1", _xl((1, 2, 2, 4, 6, 6), 12),
                                      hub_file="efficientvit_sam_xl1.pt"),
    # A few-MFLOP model of the same structure for fast tests and smoke training runs. It is not
    # an official variant: no checkpoint exists for it.
    "efficientvit-sam-tiny": SamConfig(
        "efficientvit-sam-tiny",
        EncoderConfig(widths=(8, 16, 24, 32, 48), depths=(1, 1, 1, 1, 1), blocks=_L_BLOCKS,
                      expands=(1, 2, 2, 2, 2), fewer_norm=_L_FEWER, attention_scales=(5,),
                      qkv_dim=8, neck_stages=(4, 3, 2), neck_width=32, neck_depth=1,
                      out_dim=32, input_size=256, embed_size=64),
        prompt_embed_dim=32, decoder_depth=1, decoder_mlp_dim=64, decoder_heads=2,
        # mask_in_chans // 4 must exceed 1: a LayerNorm over one channel outputs a constant.
        iou_head_hidden_dim=32, mask_in_chans=8,
    ),
    # Not official either: the smallest model whose mask decoder learns to follow prompts when
    # trained from scratch on a CPU (the tiny decoder, 32 wide and one layer deep, learns only
    # a prompt-independent "salient objects" mask). The student of the made-data distillation
    # (distill/made_model_run.sh). At 256 input the neck fuses stages 1, 3 and 4 (strides 4, 16,
    # 32), so the 64 x 64 embedding has stride-4 detail (not stride-8 features upsampled: many
    # made objects are small) as well as the attention stage's context. Depths 1,1,2,6,6 (0.48
    # GMACs per 256 x 256 image) since the bundled model was distilled from the deepened teacher;
    # the first bundled students had 1,1,1,2,2 (0.40 G: their recipes set model.sizes).
    "efficientvit-sam-mini": SamConfig(
        "efficientvit-sam-mini",
        EncoderConfig(widths=(8, 16, 32, 48, 64), depths=(1, 1, 2, 6, 6), blocks=_L_BLOCKS,
                      expands=(1, 2, 4, 4, 4), fewer_norm=_L_FEWER, attention_scales=(5,),
                      qkv_dim=16, neck_stages=(4, 3, 1), neck_width=64, neck_depth=1,
                      out_dim=64, input_size=256, embed_size=64),
        **_MINI_DECODER, single_mask="best_of_three",
    ),
    # Its teacher, trained from scratch on made data: the same prompt encoder and mask decoder
    # (the student copies them, as EfficientViT-SAM's students copy SAM ViT-H's) behind a wider
    # encoder (1.97 GMACs per 256 x 256 image at these depths; the bundled student's teacher,
    # made_teacher_deeper, runs it at depths 1,1,4,8,8: 2.51 G, 5.2x the student's 0.48 G).
    "efficientvit-sam-mini-teacher": SamConfig(
        "efficientvit-sam-mini-teacher",
        EncoderConfig(widths=(16, 32, 64, 96, 128), depths=(1, 1, 2, 2, 2), blocks=_L_BLOCKS,
                      expands=(1, 4, 4, 4, 4), fewer_norm=_L_FEWER, attention_scales=(5,),
                      qkv_dim=16, neck_stages=(4, 3, 1), neck_width=96, neck_depth=2,
                      out_dim=64, input_size=256, embed_size=64),
        **_MINI_DECODER, single_mask="best_of_three",
    ),
}

OFFICIAL_VARIANTS = tuple(name for name, cfg in MODEL_CONFIGS.items() if cfg.hub_file)
HUB_REPO_ID = "mit-han-lab/efficientvit-sam"


def resolve_name(name: str) -> str:
    """Full registry name for ``name`` (``"l0"`` and ``"efficientvit-sam-l0"`` both work)."""
    key = name.lower().replace("_", "-")
    if key in MODEL_CONFIGS:
        return key
    if f"efficientvit-sam-{key}" in MODEL_CONFIGS:
        return f"efficientvit-sam-{key}"
    raise KeyError(f"unknown model {name!r}; valid names: {', '.join(MODEL_CONFIGS)}")


def get_config(name: str) -> SamConfig:
    """The frozen config of a registered model; an unknown name raises with the valid names."""
    return MODEL_CONFIGS[resolve_name(name)]


def list_models(*, official_only: bool = False) -> list[str]:
    """Registered model names (``official_only``: only those with released checkpoints)."""
    return list(OFFICIAL_VARIANTS if official_only else MODEL_CONFIGS)
