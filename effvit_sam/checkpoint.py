"""Strict, loud checkpoint loading and the Hugging Face-style save format.

Official EfficientViT-SAM files (``efficientvit_sam_l0.pt`` ...) are plain state dicts, sometimes
wrapped as ``{"state_dict": ...}``; our training checkpoints wrap them as ``{"model": ...}``.
Loading never falls back to random weights: any difference raises :class:`CheckpointError`
listing missing, unexpected and wrongly-shaped keys, and naming the variant the file matches.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
from torch import nn

from .configs import MODEL_CONFIGS, SamConfig, get_config
from .errors import UserError
from .io import atomic_write, read_json, write_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_SHOW = 10


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that does not fit the model it is loaded into, or cannot be read."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file or folder that does not exist (a ``FileNotFoundError`` too)."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pt``/``.pth`` (CPU, ``weights_only``).

    A missing file raises :class:`CheckpointNotFoundError`; a corrupt file, a pickle that is
    not weights-only, or a payload that is not a dict of tensors :class:`CheckpointError`, each
    naming the path.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a weights file (a "
                              f"save_pretrained folder's weights are {path / WEIGHTS_NAME})")
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"could not read {path} as a safetensors file: {err}") from err
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise CheckpointError(f"could not read {path} as a weights-only torch file: {err}") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} holds no state dict (a dict of tensors, or one wrapped "
                              "as {'state_dict': ...} or {'model': ...})")
    return data


@cache
def _signature(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a registered model, built on the meta device (no memory, no compute)."""
    from .modeling import build_efficientvit_sam

    with torch.device("meta"):
        model = build_efficientvit_sam(get_config(name))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def match_variant(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Name of the registered model whose keys and shapes equal ``state_dict``'s, if any."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    for name in MODEL_CONFIGS:
        if _signature(name) == shapes:
            return name
    return None


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"\n  {title} ({len(items)}): {shown}{more}"


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], *,
                     source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` has exactly the model's keys/shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(f"{k} {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in set(expected) & set(state_dict)
                    if state_dict[k].shape != expected[k].shape)
    if not (missing or unexpected or shapes):
        return
    cfg: SamConfig | None = getattr(model, "config", None)
    target = cfg.name if cfg is not None else type(model).__name__
    msg = f"{source} does not fit {target}"
    other = match_variant(state_dict)
    # The variant first: on the command line the first line is the one people read.
    msg += (f": this is a checkpoint of {other}: build that variant instead (--model {other})"
            if other is not None else ":")
    if missing:
        msg += _listing("missing keys", missing)
    if unexpected:
        msg += _listing("unexpected keys", unexpected)
    if shapes:
        msg += _listing("shape mismatches", shapes)
    raise CheckpointError(msg)


def first_nonfinite(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Key of the first floating-point tensor holding a NaN or an infinity, else ``None``."""
    for key, value in state_dict.items():
        if (value.is_floating_point() or value.is_complex()) and not bool(
                torch.isfinite(value).all()):
            return key
    return None


def load_checkpoint(model: nn.Module, checkpoint: str | Path | dict[str, torch.Tensor], *,
                    allow_nonfinite: bool = False, source: str | None = None) -> nn.Module:
    """Load a checkpoint (path or state dict) into ``model`` strictly; returns ``model``.

    Weights holding NaN or inf (a diverged run's) raise :class:`CheckpointError` naming the
    file and the first such tensor; ``allow_nonfinite=True`` loads them anyway (debugging).
    ``source``: what errors call a state dict that was already read (its file), instead of
    "state dict".
    """
    if isinstance(checkpoint, dict):
        state_dict, source = checkpoint, source or "state dict"
    else:
        state_dict, source = read_state_dict(checkpoint), str(checkpoint)
    check_state_dict(model, state_dict, source=source)
    if not allow_nonfinite:
        key = first_nonfinite(state_dict)
        if key is not None:
            raise CheckpointError(f"{source} holds non-finite values (NaN or inf), first in "
                                  f"{key}: the weights of a diverged run? (allow_nonfinite=True "
                                  "loads them anyway, for debugging)")
    model.load_state_dict(state_dict, strict=True)
    return model


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
    from safetensors.torch import save_file

    cfg: SamConfig | None = getattr(model, "config", None)
    if cfg is None:
        raise ValueError("save_pretrained needs a model built by build_sam (it has no config)")
    if type(getattr(model, "image_encoder", None)).__name__ == "FastImageEncoder":
        raise ValueError("save_pretrained got an optimize_for_inference copy (folded, possibly "
                         "bf16 weights under other names): save the model you optimised")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} is a file: save_pretrained writes a folder (config.json "
                         "and model.safetensors)")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p))
    meta = {"model_type": "efficientvit-sam", "config": cfg.to_dict()}
    write_json(directory / CONFIG_NAME, meta)
    return directory


def read_pretrained_config(directory: str | Path) -> SamConfig:
    """The :class:`SamConfig` in a ``save_pretrained`` folder's ``config.json``."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointNotFoundError(f"{directory} is not a save_pretrained folder: no "
                                      f"{CONFIG_NAME}")
    try:
        meta = read_json(path)
    except ValueError as err:  # read_json's message names the file
        raise CheckpointError(str(err)) from None
    if not isinstance(meta, dict) or meta.get("model_type") != "efficientvit-sam":
        raise CheckpointError(f"{path} is not an efficientvit-sam config")
    try:
        return SamConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: bad model config ({err})") from None
