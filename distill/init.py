"""The model of a run, built once for both phases: ``model.name``, ``model.init`` and
``model.decoder_from``.

``model.init`` and ``model.decoder_from`` each take a ``save_pretrained`` folder (a previous
run's ``pretrained/`` or ``pretrained_best/``), a weights file (``.safetensors``/``.pt``,
official ones included) or a training ``checkpoint.pt``; ``model.init`` also takes a registry
name (``efficientvit-sam-l0``, ``efficientvit-sam-mini``), resolved by the package's one weight
policy, :func:`effvit_sam.weights.resolve_model` (the official weights from the Hugging Face
cache or the hub, else the bundled model of that name). Loading is strict (every key, every
shape) and refuses NaN/inf weights, so a run never starts from weights it did not ask for.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from effvit_sam import build_sam
from effvit_sam.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_checkpoint,
    read_pretrained_config,
    read_state_dict,
)
from effvit_sam.configs import get_config, resolve_name
from effvit_sam.errors import UserError
from effvit_sam.modeling import EfficientViTSam
from effvit_sam.weights import resolve_model

from .config import ModelConfig, resized
from .deepen import deepen_encoder, is_shallower
from .widen import UPSCALE, mask_channels, widen_mask_head

DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")


def weights_file(path: str | Path, *, what: str) -> Path:
    """``path`` itself, or the weights file of a ``save_pretrained`` folder; ``what`` (the
    config key) names it when it is missing."""
    path = Path(path).expanduser()
    file = path / WEIGHTS_NAME if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"{what}: no weights file or save_pretrained folder at {file}")
    return file


def registry_name(spec: str | Path) -> str | None:
    """The registry name ``spec`` spells, unless a file or folder of that name exists."""
    if Path(spec).expanduser().exists():
        return None
    try:
        return resolve_name(str(spec))
    except KeyError:
        return None


def _load_with_fresh(model: EfficientViTSam, file: Path, fresh: list[str], what: str) -> None:
    """``model``'s weights from ``file`` except the keys under the ``fresh`` prefixes, which keep
    the model's own (random) values; strict for everything else."""
    own = model.state_dict()
    for prefix in fresh:
        if not any(k.startswith(prefix) for k in own):
            raise CheckpointError(f"{what}: model.init_fresh prefix {prefix!r} names no weight "
                                  "of the model")
    is_fresh = lambda key: any(key.startswith(p) for p in fresh)  # noqa: E731
    state = {k: v for k, v in read_state_dict(file).items() if not is_fresh(k)}
    state.update({k: v for k, v in own.items() if is_fresh(k)})
    try:
        load_checkpoint(model, state)
    except CheckpointError as err:
        raise CheckpointError(f"{what} {file} (without {', '.join(fresh)}): {err}") from None


def load_init(model: EfficientViTSam, path: str | Path, *, what: str = "model.init",
              fresh: list[str] | None = None) -> None:
    """Load all of ``model``'s weights from ``path`` (strictly; errors name the file), or from
    the released weights of the registry name ``path`` (which must be ``model``'s variant).
    ``fresh``: key prefixes left at the model's own initialisation (``model.init_fresh``)."""
    name = registry_name(path) if what == "model.init" else None
    if fresh:
        if name is not None:
            raise CheckpointError(f"{what} {path}: model.init_fresh needs a weights file or "
                                  "folder, not a registry name")
        _load_with_fresh(model, weights_file(path, what=what), fresh, what)
        return
    if name is None:
        file = weights_file(path, what=what)
        if what == "model.init":
            state = read_state_dict(file)
            if is_shallower(state, model):  # a deeper backbone: new blocks start as identities
                try:
                    load_checkpoint(model, deepen_encoder(state, model))
                except (ValueError, CheckpointError) as err:
                    raise CheckpointError(f"{what} {file} (backbone deepened): {err}") from None
                return
            wide = model.config.mask_channels
            if model.config.mask_dim is not None and UPSCALE + "3.weight" in state and \
                    mask_channels(state) < wide:
                try:
                    load_checkpoint(model, widen_mask_head(state, wide))
                except (ValueError, CheckpointError) as err:
                    raise CheckpointError(f"{what} {file} (mask head widened to {wide}): "
                                          f"{err}") from None
                return
            try:
                load_checkpoint(model, state, source=str(file))  # read once, errors name the file
            except CheckpointError as err:
                hint = _depths_hint(file, model)
                raise (CheckpointError(f"{err}\n{hint}") if hint else err) from None
            return
        load_checkpoint(model, file)
        return
    if name != model.config.name:
        raise CheckpointError(f"{what} {path} names the weights of {name}, but model.name is "
                              f"{model.config.name}: set model.name={name}")
    try:
        source, _ = resolve_model(name, allow_download=True)
    except UserError as err:
        raise CheckpointError(f"{what} {path}: {err}") from None
    try:
        load_checkpoint(model, source.state_dict())
    except CheckpointError as err:
        raise CheckpointError(f"{what} {path}: {err}") from None


def _depths_hint(file: Path, model: EfficientViTSam) -> str | None:
    """What to set when ``file`` lies in a ``save_pretrained`` folder whose config has other
    encoder depths than ``model``'s (a deepened run's ``pretrained/``), else None."""
    try:
        depths = list(read_pretrained_config(file.parent).encoder.depths)
    except CheckpointError:  # no folder config, or not one of ours: nothing to suggest
        return None
    own = list(model.config.encoder.depths)
    if depths == own:
        return None
    return (f"{file.parent / CONFIG_NAME} gives encoder depths {depths}, the model has {own}: "
            f"set model.sizes: {{encoder.depths: {depths}}}")


def load_decoder_from(model: EfficientViTSam, path: str | Path) -> None:
    """Copy ``prompt_encoder.*`` and ``mask_decoder.*`` from any SAM-family checkpoint
    (SAM ViT-H's in the EfficientViT-SAM recipe), strictly for those two modules."""
    state = read_state_dict(weights_file(path, what="model.decoder_from"))
    for prefix in DECODER_PREFIXES:
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        module = getattr(model, prefix.rstrip("."))
        if not sub:
            raise CheckpointError(f"{path} has no {prefix}* weights")
        try:
            load_checkpoint(module, sub)
        except CheckpointError as err:
            raise CheckpointError(f"{path} ({prefix}*): {err}") from None


def build_model(cfg: ModelConfig) -> EfficientViTSam:
    """``build_sam(cfg.name)`` (at ``cfg.input_size`` and with ``cfg.mask_dim`` if given), then
    ``cfg.init`` (all weights; a narrower mask head there is widened to ``mask_dim`` without
    changing the model's output, :mod:`distill.widen`), then ``cfg.decoder_from``.

    Phase 1 trains only the image encoder; ``decoder_from`` (e.g. the teacher's weights) puts a
    prompt encoder and mask decoder next to it, so the run's ``pretrained/`` folder is a
    complete model that can be evaluated before phase 2. Random weights are drawn from the
    global torch RNG, which the engine seeds with ``train.seed`` first.
    """
    spec = get_config(cfg.name)
    if cfg.input_size is not None:
        spec = replace(spec, encoder=replace(spec.encoder, input_size=cfg.input_size))
    if cfg.mask_dim is not None:
        spec = replace(spec, mask_dim=cfg.mask_dim)
    spec = resized(spec, cfg.sizes)
    model = build_sam(spec)
    if cfg.init:
        load_init(model, cfg.init, fresh=cfg.init_fresh)
    elif cfg.init_fresh:
        raise CheckpointError("model.init_fresh names weights that model.init does not give, "
                              "but model.init is not set")
    if cfg.decoder_from:
        load_decoder_from(model, cfg.decoder_from)
    return model
