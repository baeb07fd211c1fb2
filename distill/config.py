"""Typed run configs for both phases, loaded from YAML recipes with ``--set`` overrides.

A recipe is a YAML mapping of sections (``model``, ``teacher``, ``data``, ``train``, ``prompts``,
``run``) onto the dataclasses below. Unknown keys and values of the wrong type raise
:class:`ValueError` naming the offending key, so a typo never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
EMBED_LOSSES = ("mse", "l1", "huber", "cosine")
MASK_LOSSES = ("focal", "bce")
PRECISIONS = ("auto", "no", "bf16", "fp16")
TEACHER_KINDS = ("sam", "efficientvit")


@dataclass
class ModelConfig:
    """The student. ``init``: weights to start from (a ``save_pretrained`` dir or a checkpoint
    file); ``decoder_from``: copy only ``prompt_encoder.*``/``mask_decoder.*`` from this file or
    dir (e.g. SAM ViT-H's, as the EfficientViT-SAM recipe does for phase 2)."""

    name: str = "efficientvit-sam-tiny"
    init: str | None = None
    decoder_from: str | None = None


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
    focal_weight: float = 20.0
    """Phase 2: weight of the focal (or BCE) term; SAM's 20:1 with ``dice_weight``."""
    dice_weight: float = 1.0
    seed: int = 0


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
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> Config:
        checks = [
            (self.phase in (1, 2), f"phase must be 1 or 2, got {self.phase}"),
            (self.train.embed_loss in EMBED_LOSSES,
             f"train.embed_loss must be one of {EMBED_LOSSES}"),
            (self.train.mask_loss in MASK_LOSSES, f"train.mask_loss must be one of {MASK_LOSSES}"),
            (self.train.mixed_precision in PRECISIONS,
             f"train.mixed_precision must be one of {PRECISIONS}"),
            (self.teacher.kind in TEACHER_KINDS, f"teacher.kind must be one of {TEACHER_KINDS}"),
            (self.train.focal_weight >= 0 and self.train.dice_weight >= 0
             and self.train.focal_weight + self.train.dice_weight > 0,
             "train.focal_weight and train.dice_weight must be >= 0, not both 0"),
            (self.train.steps > 0 and self.train.grad_accum > 0,
             "train.steps and train.grad_accum must be positive"),
            (self.data.batch_size > 0 and self.data.max_masks > 0,
             "data.batch_size and data.max_masks must be positive"),
            (0.0 <= self.prompts.box_prob <= 1.0, "prompts.box_prob must be in [0, 1]"),
            (self.prompts.max_points >= 1, "prompts.max_points must be at least 1"),
            (self.prompts.iterative_rounds >= 0, "prompts.iterative_rounds must be >= 0"),
            (0 <= self.prompts.negative_prob <= 1, "prompts.negative_prob must be in [0, 1]"),
            (0 <= self.prompts.feed_prob <= 1, "prompts.feed_prob must be in [0, 1]"),
            (self.run.save_every > 0 and self.run.log_every > 0,
             "run.save_every and run.log_every must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if not self.data.shards and not self.data.cache:
            raise ValueError("data.shards (or data.cache, phase 1) must name the training shards")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _check_type(value: Any, annotation: Any, key: str) -> Any:
    """``value`` converted to ``annotation`` (ints pass as floats, lists as tuples) or raise."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, key)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0])
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ValueError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_check_type(v, a, key) for v, a in zip(value, args, strict=True))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; it is plainly a number
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    if annotation is bool and not isinstance(value, bool):
        raise ValueError(f"{key} must be true/false, got {value!r}")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if not isinstance(value, annotation):
        raise ValueError(f"{key} must be {annotation.__name__}, got {type(value).__name__} "
                         f"{value!r}")
    return value


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ValueError(f"unknown config keys {unknown} in {where}; valid: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


def config_from_dict(data: dict) -> Config:
    return _build(Config, data, "").validate()


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` to ``(["train", "lr"], 1e-4)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each ``section.key=value`` in a nested dict (copied); unknown keys fail later."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return data


def resolve_recipe(name_or_path: str) -> Path:
    """A YAML path, or a recipe name from ``distill/configs`` (``"smoke_phase1"``)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    packaged = CONFIG_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if packaged.is_file():
        return packaged
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"no config file {name_or_path!r}; packaged recipes: {names}")


def load_config(name_or_path: str, overrides: list[str] | None = None) -> Config:
    data = yaml.safe_load(resolve_recipe(name_or_path).read_text()) or {}
    return config_from_dict(apply_overrides(data, overrides or []))


def dump_config(cfg: Config) -> str:
    def plain(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, tuple | list):
            return [plain(v) for v in obj]
        return obj

    return yaml.safe_dump(plain(cfg.to_dict()), sort_keys=False)
