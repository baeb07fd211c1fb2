"""Build EfficientViT-SAM models by name: ``build_sam("l0", checkpoint=path)`` and
``from_pretrained(name_or_folder)``."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    CheckpointNotFoundError,
    load_checkpoint,
    read_pretrained_config,
)
from .configs import HUB_REPO_ID, MODEL_CONFIGS, SamConfig, get_config, list_models, resolve_name
from .modeling import EfficientViTSam, build_efficientvit_sam

__all__ = ["build_sam", "from_pretrained", "get_config", "list_models"]


def build_sam(name: str | SamConfig, *, checkpoint: str | Path | None = None,
              device: str | torch.device | None = None) -> EfficientViTSam:
    """Build a model by registry name (or from a config) and optionally load a checkpoint.

    Without ``checkpoint`` the weights are randomly initialised (for training). A checkpoint is
    loaded strictly: see :func:`effvit_sam.checkpoint.load_checkpoint`.
    """
    cfg = name if isinstance(name, SamConfig) else get_config(name)
    model = build_efficientvit_sam(cfg)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    if device is not None:
        model.to(device)
    return model


def _from_directory(directory: Path) -> EfficientViTSam:
    cfg = read_pretrained_config(directory)
    if not (directory / WEIGHTS_NAME).is_file():
        raise CheckpointNotFoundError(f"{directory} is not a save_pretrained folder: no "
                                      f"{WEIGHTS_NAME}")
    return build_sam(cfg, checkpoint=directory / WEIGHTS_NAME)


def _is_local_path(name_or_path: str | Path) -> bool:
    """A ``Path``, or an absolute, ``~``, ``./`` or ``../`` string: never a hub repo id or a
    model name."""
    text = str(name_or_path)
    return (isinstance(name_or_path, Path) or Path(text).is_absolute()
            or text.startswith(("~", "./", "../", ".\\", "..\\")))


def from_pretrained(name_or_path: str | Path, *, cache_dir: str | Path | None = None,
                    local_files_only: bool = False) -> EfficientViTSam:
    """Load a model from a ``save_pretrained`` directory, an official name, or a hub repo id.

    An official name (``"efficientvit-sam-l0"`` / ``"l0"``) fetches the official file from the
    ``mit-han-lab/efficientvit-sam`` hub repo through ``huggingface_hub`` (or finds it in the local
    Hugging Face cache); without a network it raises a message saying where to put the file.
    This package's own models (``"efficientvit-sam-mini"``) load from the copy shipped inside
    the package (``effvit_sam/bundled/``), with no network.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _from_directory(path)
    if path.is_file():
        raise CheckpointError(f"{name_or_path} is a file, not a save_pretrained directory (load "
                              "a weights file with build_sam(name, checkpoint=PATH))")
    if _is_local_path(name_or_path):
        raise CheckpointNotFoundError(f"no such directory: {name_or_path}")
    try:
        name = resolve_name(str(name_or_path))
    except KeyError:
        name = None
    from huggingface_hub import hf_hub_download

    if name is not None:
        hub_file = MODEL_CONFIGS[name].hub_file
        if hub_file is None:  # this package's own models: the one shipped with it, if any
            from .weights import bundled_dir  # (weights builds on this module)

            folder = bundled_dir(name)
            if folder is None:
                raise CheckpointError(f"{name} has no released checkpoint and none is bundled "
                                      "with this installation")
            return _from_directory(folder)
        try:
            file = hf_hub_download(HUB_REPO_ID, hub_file, cache_dir=cache_dir,
                                   local_files_only=local_files_only)
        except Exception as err:
            raise CheckpointNotFoundError(
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
            raise CheckpointNotFoundError(f"{name_or_path} is no local directory and could not "
                                          f"be fetched from the hub: {err}") from err
        return _from_directory(Path(cfg_file).parent)
    raise CheckpointNotFoundError(f"{name_or_path} is neither a directory, a model name "
                                  f"({', '.join(MODEL_CONFIGS)}) nor a hub repo id")
