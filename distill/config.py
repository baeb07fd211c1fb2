"""Typed run configs for both phases, loaded from YAML recipes with ``--set`` overrides.

A recipe is a YAML mapping of sections (``model``, ``teacher``, ``data``, ``train``, ``prompts``,
``eval``, ``run``) onto the dataclasses below, optionally with ``base: OTHER``: a recipe whose
keys it inherits, section by section (:func:`read_recipe_with_base`). Unknown keys, values of
the wrong type, unknown recipes and malformed YAML raise :class:`ConfigError` (a
:class:`~effvit_sam.errors.UserError`: a CLI exits with code 2 and one line) naming the key and
the file or ``--set`` override it came from, so a typo never silently trains with a default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import yaml

from .config_types import ConfigError, build_dataclass
from .losses import DICE_WEIGHT, FOCAL_WEIGHT, IOU_WEIGHT
from .recipes import CONFIG_DIR as CONFIG_DIR  # recipe reading is in .recipes; re-exported
from .recipes import apply_overrides, read_recipe_with_base, resolve_recipe

EMBED_LOSSES = ("mse", "l1", "huber", "cosine")
MASK_LOSSES = ("focal", "bce")
PRECISIONS = ("auto", "no", "bf16", "fp16")
TEACHER_KINDS = ("sam", "efficientvit")
MODEL_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")
"""The parts of a model that ``train.freeze`` and ``train.part_lr`` name."""
BEST_METRICS = ("box", "click", "mean")
EVAL_DATASETS = ("coco", "lvis")
CORRECTION_CLICKS = ("uniform", "farthest")




@dataclass
class ModelConfig:
    """The student. ``init``: weights to start from (a ``save_pretrained`` dir, a weights or
    checkpoint file, or a registry name such as ``efficientvit-sam-l0``, resolved with
    :func:`effvit_sam.build.from_pretrained`); ``decoder_from``: copy only ``prompt_encoder.*``
    and ``mask_decoder.*`` from this file or dir (SAM ViT-H's in the EfficientViT-SAM recipe)."""

    name: str = "efficientvit-sam-tiny"
    init: str | None = None
    decoder_from: str | None = None
    input_size: int | None = None
    """The encoder's input side for this run (``None``: the variant's own). An EfficientViT encoder
    takes any multiple of 32 with the same weights (its neck resizes every stage to the embedding
    grid); the run's ``pretrained/config.json`` records the size."""
    mask_dim: int | None = None
    """Channels of the mask decoder's upscaled embedding (``None``: the variant's own, SAM's
    ``prompt_embed_dim // 8`` unless it says otherwise); recorded in ``config.json`` too."""
    sizes: dict[str, int | list[int]] = field(default_factory=dict)
    """Integer fields of the variant's ``SamConfig`` changed for this run, by name
    (``prompt_embed_dim``, ``decoder_heads``, ...; ``encoder.out_dim`` for the encoder's), and
    per-stage ones as lists (``encoder.depths: [1, 1, 2, 4, 4]``); recorded in ``config.json``.
    A decoder wider than the encoder's output needs ``encoder.out_dim`` to match; a deeper
    backbone than ``init``'s starts its new blocks as identities (:mod:`distill.deepen`)."""
    init_fresh: list[str] = field(default_factory=list)
    """State-dict key prefixes that ``init`` does not provide (say ``mask_decoder.`` for a new,
    wider decoder on a trained encoder): those weights keep their random initialisation, every
    other key loads strictly; a prefix that names no key of the model is an error."""


def resized(spec, sizes: dict[str, int | list[int]]):
    """``spec`` (a ``SamConfig``) with the integer fields named in ``sizes`` replaced
    (``encoder.X`` for the encoder's; a list for a per-stage field such as ``encoder.depths``,
    one entry per stage); an unknown field or a value of the wrong kind raises
    :class:`ConfigError`."""
    top, enc = {}, {}
    for key, value in sizes.items():
        target, name = (enc, key.removeprefix("encoder.")) if key.startswith("encoder.") \
            else (top, key)
        where = "EncoderConfig" if target is enc else "SamConfig"
        current = getattr(spec.encoder if target is enc else spec, name, None)
        if isinstance(value, list):
            if not isinstance(current, tuple) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in current):
                raise ConfigError(f"model.sizes: {key} is not a per-stage integer field of "
                                  f"{where}")
            if len(value) != len(current):
                raise ConfigError(f"model.sizes: {key} needs {len(current)} entries (one per "
                                  f"stage), got {len(value)}")
            if any(v < 0 for v in value):
                raise ConfigError(f"model.sizes: {key} entries must be >= 0, got {value}")
            target[name] = tuple(value)
            continue
        if not isinstance(current, int) or isinstance(current, bool):
            raise ConfigError(f"model.sizes: {key} is not an integer field of {where}")
        target[name] = value
    try:
        return replace(spec, **top, encoder=replace(spec.encoder, **enc))
    except ValueError as err:
        raise ConfigError(f"model.sizes: {err}") from None



@dataclass
class TeacherConfig:
    """Phase-1 teacher: ``kind`` ``sam`` (``name`` vit_b/vit_l/vit_h) or ``efficientvit``.

    ``checkpoint`` is required unless ``random_init`` is set (only for smoke runs and benchmarks:
    a randomly initialised teacher seeded with ``train.seed``).
    """

    kind: str = "sam"
    name: str = "vit_h"
    checkpoint: str | None = None
    random_init: bool = False
    batch_size: int = 4


@dataclass
class DataConfig:
    """SA-1B-format shards (brace patterns allowed, e.g. ``sa1b/sa_{000000..000999}.tar``)."""

    shards: str = ""
    cache: str | None = None
    max_masks: int = 64
    batch_size: int = 2
    num_workers: int = 0
    shuffle_buffer: int = 0
    resampled: bool = False
    epoch_length: int | None = None


@dataclass
class TrainConfig:
    steps: int = 1000
    lr: float = 1e-4
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    grad_accum: int = 1
    clip_grad: float | None = 1.0
    mixed_precision: str = "auto"
    embed_loss: str = "mse"
    mask_loss: str = "focal"
    focal_weight: float = FOCAL_WEIGHT
    """Phase 2: weight of the focal (or BCE) term; SAM's 20:1 with ``dice_weight``."""
    dice_weight: float = DICE_WEIGHT
    iou_weight: float = IOU_WEIGHT
    """Phase 2: weight of the IoU head's MSE against each output's actual IoU (SAM's 1). The
    evaluators keep the best-scored of the three masks, so this head decides which one."""
    seed: int = 0
    max_nonfinite_steps: int = 5
    """Stop the run (exit code 2) after this many consecutive steps whose loss or gradient norm
    was NaN/inf; each such step is skipped (no weight update) and counted in ``metrics.csv``."""
    freeze: list[str] = field(default_factory=list)
    """Phase 2: parts (of :data:`MODEL_PARTS`) kept fixed: ``requires_grad=False``, not in the
    optimizer, in eval mode (their BatchNorm statistics do not move)."""
    part_lr: dict[str, float] = field(default_factory=dict)
    """Phase 2: learning-rate multipliers of ``train.lr`` per part, e.g. ``{image_encoder: 0.1}``
    (parts not named get 1.0)."""
    fast_decoder: bool = True
    """Phase 2: decode through :class:`effvit_sam.inference.decoder.FastMaskDecoder` (the image
    side shared by an image's prompts, low-rank attention): SAM's decoder function and gradients
    up to float rounding, about 1.9x faster forward + backward for 6 prompts of the made teacher
    (README). Off: SAM's ``MaskDecoder`` itself. Parameters a step does not use (the single-mask
    hypernetwork under ``multimask_all``) get no gradient here where SAM's gives them zeros."""


@dataclass
class PromptConfig:
    """Phase-2 prompt sampling: per image, boxes with probability ``box_prob``, else 1..
    ``max_points`` points inside each mask; ``iterative_rounds`` correction clicks follow."""

    box_prob: float = 0.5
    box_jitter: float = 0.1
    max_box_jitter_px: float = 20.0
    max_points: int = 3
    iterative_rounds: int = 0
    multimask_all: bool = False
    """Decode every prompt (boxes, several clicks, correction rounds) with the three multimask
    outputs and train the best, as the zero-shot evaluator decodes them; off: SAM's rule (only
    a single click is ambiguous). For decoders trained from scratch, whose multimask outputs
    would otherwise only ever see single clicks."""
    negative_prob: float = 0.0
    """With several clicks, the chance that the later ones are negatives (label 0) placed near
    the object, in its box grown by half but outside its mask, as a user's corrective clicks
    are: teaches the background label without the cost of a correction round."""
    feed_prob: float = 1.0
    """The chance that a correction round gets the previous logits as ``mask_input`` (SAM's
    rule: always); else the round decodes the clicks alone, as ``effvit-sam eval point`` does
    by default."""
    correction_click: str = "uniform"
    """Where a correction round clicks: ``uniform`` (SAM's training: a random pixel of the error
    region, often near its boundary) or ``farthest`` (the evaluator's and a user's: the innermost
    point of the larger error region, RITM's clicker)."""


@dataclass
class EvalConfig:
    """Validation on a held-out COCO-format file (``make-shards --val-fraction`` writes one):
    box and 1-click mIoU with ``effvit-sam eval``'s protocol; off while ``annotations`` is unset.

    Every ``every`` steps, at the last step (and at step 0 with ``at_start``), on the first
    ``limit`` images; the best ``best_metric`` (box, 1-click or their mean) keeps its weights in
    ``pretrained_best/``; ``early_stop_patience`` P stops the run (exit 0) after P evaluations
    without improvement."""

    annotations: str | None = None
    images: str | None = None
    dataset: str = "coco"
    every: int = 100
    limit: int | None = None
    at_start: bool = True
    best_metric: str = "mean"
    early_stop_patience: int | None = None
    max_prompts: int = 64


@dataclass
class RunConfig:
    out_dir: str = "runs/default"
    save_every: int = 500
    log_every: int = 10
    tensorboard: bool = False
    log_keys: bool = False
    """Each rank appends the sample keys it trains on to ``keys-rank{N}.txt`` (debugging and
    the distributed tests: ranks must see different samples)."""


@dataclass
class Config:
    """A whole run: ``phase`` 1 (encoder distillation) or 2 (end-to-end fine-tuning)."""

    phase: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> Config:
        from effvit_sam.configs import get_config, resolve_name

        try:
            resolve_name(self.model.name)
        except KeyError as err:
            raise ConfigError(f"model.name: {err.args[0]}") from None
        resized(get_config(self.model.name), self.model.sizes)  # raises on a bad field
        size = self.model.input_size
        checks = [
            (size is None or (size >= 64 and size % 32 == 0),
             f"model.input_size must be a multiple of 32 of at least 64, got {size}"),
            (self.model.mask_dim is None or self.model.mask_dim >= 1,
             f"model.mask_dim must be a positive channel count, got {self.model.mask_dim}"),
            (self.phase in (1, 2), f"phase must be 1 or 2, got {self.phase}"),
            (self.train.lr > 0, f"train.lr must be positive, got {self.train.lr}"),
            (self.train.embed_loss in EMBED_LOSSES,
             f"train.embed_loss must be one of {EMBED_LOSSES}"),
            (self.train.mask_loss in MASK_LOSSES, f"train.mask_loss must be one of {MASK_LOSSES}"),
            (self.train.mixed_precision in PRECISIONS,
             f"train.mixed_precision must be one of {PRECISIONS}"),
            (self.teacher.kind in TEACHER_KINDS, f"teacher.kind must be one of {TEACHER_KINDS}"),
            (self.train.focal_weight >= 0 and self.train.dice_weight >= 0
             and self.train.focal_weight + self.train.dice_weight > 0,
             "train.focal_weight and train.dice_weight must be >= 0, not both 0"),
            (self.train.iou_weight >= 0, "train.iou_weight must be >= 0"),
            (self.train.steps > 0 and self.train.grad_accum > 0,
             "train.steps and train.grad_accum must be positive"),
            (self.train.max_nonfinite_steps > 0, "train.max_nonfinite_steps must be positive"),
            (self.data.batch_size > 0 and self.data.max_masks > 0,
             "data.batch_size and data.max_masks must be positive"),
            (0.0 <= self.prompts.box_prob <= 1.0, "prompts.box_prob must be in [0, 1]"),
            (self.prompts.max_points >= 1, "prompts.max_points must be at least 1"),
            (self.prompts.iterative_rounds >= 0, "prompts.iterative_rounds must be >= 0"),
            (0 <= self.prompts.negative_prob <= 1, "prompts.negative_prob must be in [0, 1]"),
            (0 <= self.prompts.feed_prob <= 1, "prompts.feed_prob must be in [0, 1]"),
            (self.prompts.correction_click in CORRECTION_CLICKS,
             f"prompts.correction_click must be one of {CORRECTION_CLICKS}"),
            (self.run.save_every > 0 and self.run.log_every > 0,
             "run.save_every and run.log_every must be positive"),
        ]
        for ok, message in checks + self._finetune_checks():
            if not ok:
                raise ConfigError(message)
        if not self.data.shards and not self.data.cache:
            raise ConfigError("data.shards (or data.cache, phase 1) must name the training shards")
        return self

    def _finetune_checks(self) -> list[tuple[bool, str]]:
        train, ev = self.train, self.eval
        unknown = sorted({*train.freeze, *train.part_lr} - set(MODEL_PARTS))
        both = sorted({*train.freeze} & {*train.part_lr})
        return [
            (not unknown, f"train.freeze / train.part_lr: unknown parts {unknown}; valid: "
                          f"{list(MODEL_PARTS)}"),
            (self.phase == 2 or not (train.freeze or train.part_lr),
             "train.freeze and train.part_lr are phase-2 settings (phase 1 trains only the "
             "image encoder)"),
            (set(MODEL_PARTS) - set(train.freeze), "train.freeze lists every part: no training"),
            (not both, f"train.part_lr sets rates of frozen parts {both}"),
            (all(v > 0 for v in train.part_lr.values()),
             "train.part_lr multipliers must be > 0 (freeze a part with train.freeze)"),
            (ev.dataset in EVAL_DATASETS, f"eval.dataset must be one of {EVAL_DATASETS}"),
            (ev.best_metric in BEST_METRICS, f"eval.best_metric must be one of {BEST_METRICS}"),
            (all(v is None or v > 0 for v in (ev.every, ev.max_prompts, ev.limit,
                                               ev.early_stop_patience)),
             "eval.every, max_prompts, limit and early_stop_patience must be positive (or null)"),
            ((ev.annotations is None) == (ev.images is None),
             "eval.annotations and eval.images are set together (validation on), or neither"),
            (self.phase == 2 or ev.annotations is None,
             "the eval section (validation during training) is for phase 2"),
        ]

    def to_dict(self) -> dict:
        return asdict(self)


def config_from_dict(data: dict) -> Config:
    return build_dataclass(Config, data, "").validate()


def load_config(name_or_path: str, overrides: list[str] | None = None) -> Config:
    """The validated :class:`Config` of a recipe (name or path) with ``--set`` overrides.

    Errors name their source: the recipe file for its own keys, the override for each
    ``--set`` (checked one at a time, in order), both for checks across fields.
    """
    path = resolve_recipe(name_or_path)
    data = read_recipe_with_base(path)
    try:
        build_dataclass(Config, data, "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    overrides = list(overrides or [])
    for i, text in enumerate(overrides):
        try:
            build_dataclass(Config, apply_overrides(data, overrides[: i + 1]), "")
        except ConfigError as err:
            raise ConfigError(f"--set {text}: {err}") from None
    try:
        return config_from_dict(apply_overrides(data, overrides))
    except ConfigError as err:
        where = f"{path} with --set {' '.join(overrides)}" if overrides else str(path)
        raise ConfigError(f"{where}: {err}") from None


def dump_config(cfg: Config) -> str:
    def plain(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, tuple | list):
            return [plain(v) for v in obj]
        return obj

    return yaml.safe_dump(plain(cfg.to_dict()), sort_keys=False)
