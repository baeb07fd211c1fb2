"""Strict, loud checkpoint loading and the Hugging Face-style save format.

Official EfficientViT-SAM files (``efficientvit_sam_l0.pt`` ...) are plain state dicts, sometimes
wrapped as ``{"state_dict": ...}``; our training checkpoints wrap them as ``{"model": ...}``.
Loading never falls back to random weights: any difference raises :class:`CheckpointError`
listing missing, unexpected and wrongly-shaped keys, and naming the variant the file matches.
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import cache
from pathlib import Path

import torch
from torch import nn

from .configs import HUB_REPO_ID, MODEL_CONFIGS, SamConfig, resolve_name

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_SHOW = 10


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the model it is loaded into."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pt``/``.pth`` (CPU, ``weights_only``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
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
    from .build import build_sam

    with torch.device("meta"):
        model = build_sam(name)
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
    msg = f"{source} does not fit {target}:"
    if missing:
        msg += _listing("missing keys", missing)
    if unexpected:
        msg += _listing("unexpected keys", unexpected)
    if shapes:
        msg += _listing("shape mismatches", shapes)
    other = match_variant(state_dict)
    if other is not None:
        msg += f"\n  this is a checkpoint of {other}: build that variant instead"
    raise CheckpointError(msg)


def load_checkpoint(model: nn.Module,
                    checkpoint: str | Path | dict[str, torch.Tensor]) -> nn.Module:
    """Load a checkpoint (path or state dict) into ``model`` strictly; returns ``model``."""
    if isinstance(checkpoint, dict):
        state_dict, source = checkpoint, "state dict"
    else:
        state_dict, source = read_state_dict(checkpoint), str(checkpoint)
    check_state_dict(model, state_dict, source=source)
    model.load_state_dict(state_dict, strict=True)
    return model


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
    from safetensors.torch import save_file

    cfg: SamConfig | None = getattr(model, "config", None)
    if cfg is None:
        raise ValueError("save_pretrained needs a model built by build_sam (it has no config)")
    directory = Path(directory)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p))
    meta = {"model_type": "efficientvit-sam", "config": cfg.to_dict()}
    atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    return directory


def _from_directory(directory: Path):
    from .build import build_sam

    meta = json.loads((directory / CONFIG_NAME).read_text())
    if meta.get("model_type") != "efficientvit-sam":
        raise CheckpointError(f"{directory / CONFIG_NAME} is not an efficientvit-sam config")
    cfg = SamConfig.from_dict(meta["config"])
    return build_sam(cfg, checkpoint=directory / WEIGHTS_NAME)


def from_pretrained(name_or_path: str | Path, *, cache_dir: str | Path | None = None,
                    local_files_only: bool = False):
    """Load a model from a ``save_pretrained`` directory, an official name, or a hub repo id.

    An official name (``"efficientvit-sam-l0"`` / ``"l0"``) fetches the official file from the
    ``mit-han-lab/efficientvit-sam`` hub repo through ``huggingface_hub`` (or finds it in the local
    Hugging Face cache); without a network it raises a message saying where to put the file.
    """
    from .build import build_sam

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _from_directory(path)
    try:
        name = resolve_name(str(name_or_path))
    except KeyError:
        name = None
    from huggingface_hub import hf_hub_download

    if name is not None:
        hub_file = MODEL_CONFIGS[name].hub_file
        if hub_file is None:
            raise CheckpointError(f"{name} has no released checkpoint")
        try:
            file = hf_hub_download(HUB_REPO_ID, hub_file, cache_dir=cache_dir,
                                   local_files_only=local_files_only)
        except Exception as err:
            raise FileNotFoundError(
                f"could not fetch {hub_file} from the hub repo {HUB_REPO_ID} ({err}). Download it "
                f"from https://huggingface.co/{HUB_REPO_ID} and pass its path as "
                f"build_sam({name!r}, checkpoint=PATH), or place it in the Hugging Face cache."
            ) from err
        return build_sam(name, checkpoint=file)
    if "/" in str(name_or_path):
        try:
            cfg_file = hf_hub_download(str(name_or_path), CONFIG_NAME, cache_dir=cache_dir,
                                       local_files_only=local_files_only)
            hf_hub_download(str(name_or_path), WEIGHTS_NAME, cache_dir=cache_dir,
                            local_files_only=local_files_only)
        except Exception as err:
            raise FileNotFoundError(f"could not fetch {name_or_path} from the hub: {err}") from err
        return _from_directory(Path(cfg_file).parent)
    raise FileNotFoundError(f"{name_or_path} is neither a directory, a model name "
                            f"({', '.join(MODEL_CONFIGS)}) nor a hub repo id")
