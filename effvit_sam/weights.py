"""The one weight policy of every entry point: which weights a command runs, and why.

:func:`resolve_model` is what ``segment``, ``eval``, ``export-onnx``, ``demo``, ``bench`` and
``fastpath-accuracy`` call. In order:

1. ``checkpoint``: a weights file (``.pt``/``.pth``/``.safetensors``, loaded strictly) or a
   ``save_pretrained`` folder (``config.json`` + ``model.safetensors``; its config decides the
   model, and a different ``name`` is an error). Without ``name``, a file's variant is
   recognised from its keys and shapes; the ``model.safetensors`` of a folder whose config is
   that variant's with other settings (``model.input_size``) is built with the folder's config.
2. ``random_weights``: random initialisation seeded with ``seed``; only when asked.
3. The official file of an official variant in the local Hugging Face cache (looked up on disk,
   never downloaded), then - only with ``allow_download`` (the demo without ``--offline``) -
   from the hub.
4. A bundled model: package data under ``effvit_sam/bundled/<registry-name>/`` in the
   ``save_pretrained`` format, trained by this package on synthetic scenes.

Without ``name``, the official default (:data:`DEFAULT_MODEL`) is used if its official file is
found, else the bundled :data:`DEFAULT_BUNDLED`. Nothing found: :class:`UserError` listing what
was tried and the three ways out, or (``require_weights=False``, for the tools that only time or
compare) random weights, said so in the description.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .build import build_sam
from .checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    CheckpointNotFoundError,
    match_variant,
    read_pretrained_config,
    read_state_dict,
)
from .configs import HUB_REPO_ID, MODEL_CONFIGS, SamConfig, resolve_name
from .errors import UserError
from .modeling import EfficientViTSam

logger = logging.getLogger(__name__)

WEIGHT_KINDS = ("checkpoint", "pretrained_dir", "hf_cache", "hub", "bundled", "random")
DEFAULT_MODEL = "efficientvit-sam-l0"
"""The model of a command run without ``--model`` when its official file is found."""
DEFAULT_BUNDLED = "efficientvit-sam-mini"
"""The bundled model a command without ``--model`` falls back to."""
BUNDLED_NOTE = "bundled model trained on synthetic scenes by this package; not the official weights"
WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")


@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's weights came from.

    ``kind``: one of :data:`WEIGHT_KINDS`. ``path``: what was found or given (a file or a
    ``save_pretrained`` folder; ``None`` for random weights). ``file``: the weights file that was
    read (for a folder, its ``model.safetensors``). ``model``: the registry name that was built.
    ``description``: one line for people, ``"weights: ... (kind)"``. ``seed``: random weights'
    seed, else ``None``.
    """

    kind: str
    path: Path | None
    file: Path | None
    model: str
    description: str
    seed: int | None = None

    @property
    def is_random(self) -> bool:
        return self.kind == "random"

    def to_dict(self) -> dict:
        """JSON-able record (paths as strings) for reports."""
        data = asdict(self)
        for key in ("path", "file"):
            data[key] = None if data[key] is None else str(data[key])
        return data


def bundled_root() -> Path:
    """``effvit_sam/bundled``: the package data folder holding the bundled models."""
    return Path(str(importlib.resources.files("effvit_sam"))) / "bundled"


def bundled_dir(name: str) -> Path | None:
    """The ``save_pretrained`` folder of bundled model ``name``, or ``None`` if not shipped."""
    folder = bundled_root() / resolve_name(name)
    if (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file():
        return folder
    return None


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (``HF_HUB_CACHE``, else
    ``HF_HOME/hub``, else huggingface_hub's default), so a changed environment is honoured."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def find_in_hf_cache(name: str) -> Path | None:
    """The official file of ``name`` in the local Hugging Face cache (no network), or ``None``."""
    hub_file = MODEL_CONFIGS[resolve_name(name)].hub_file
    if hub_file is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(HUB_REPO_ID, hub_file, cache_dir=hf_cache_dir())
    return Path(found) if isinstance(found, str) else None


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a :class:`torch.device` that exists here; :class:`UserError` naming
    ``--device`` for a malformed string or a CUDA/MPS device this machine does not have."""
    if device is None or isinstance(device, torch.device):
        parsed = device
    else:
        try:
            parsed = torch.device(device)
        except (RuntimeError, ValueError):
            raise UserError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, "
                            "cuda:1)") from None
    if parsed is None or parsed.type in ("cpu", "meta"):
        return parsed
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is available here")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: there are only {torch.cuda.device_count()} "
                            "CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available here")
    return parsed


def _name(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        return resolve_name(name)
    except KeyError:
        raise UserError(f"unknown model {name!r} (--model); valid names: "
                        f"{', '.join(MODEL_CONFIGS)}") from None


def _from_checkpoint(name: str | None, checkpoint: Path) -> tuple[EfficientViTSam, WeightsInfo]:
    if checkpoint.is_dir():
        if not (checkpoint / CONFIG_NAME).is_file():
            raise CheckpointError(f"checkpoint {checkpoint} is a folder but not a save_pretrained "
                                  f"folder: no {CONFIG_NAME}")
        cfg = read_pretrained_config(checkpoint)
        if name is not None and name != cfg.name:
            raise CheckpointError(f"checkpoint {checkpoint} holds {cfg.name} (its {CONFIG_NAME}) "
                                  f"but --model is {name}: drop --model or pass {cfg.name}")
        weights = checkpoint / WEIGHTS_NAME
        model = build_sam(cfg, checkpoint=weights)
        return model, WeightsInfo("pretrained_dir", checkpoint, weights, cfg.name,
                                  f"weights: {checkpoint} (save_pretrained folder, {cfg.name})")
    if not checkpoint.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {checkpoint}")
    if checkpoint.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"checkpoint {checkpoint}: expected a {'/'.join(WEIGHT_SUFFIXES)} "
                              "file or a save_pretrained folder")
    if name is None:
        name = match_variant(read_state_dict(checkpoint))
        if name is None:
            raise CheckpointError(f"checkpoint {checkpoint} matches no registered model; pass "
                                  f"--model (one of {', '.join(MODEL_CONFIGS)})")
    folder_cfg = _folder_config(checkpoint, name)
    model = build_sam(folder_cfg or name, checkpoint=checkpoint)
    note = f", its folder's {CONFIG_NAME}" if folder_cfg else ""
    return model, WeightsInfo("checkpoint", checkpoint, checkpoint, name,
                              f"weights: {checkpoint} (checkpoint, {name}{note})")


def _folder_config(checkpoint: Path, name: str) -> SamConfig | None:
    """The config of the ``save_pretrained`` folder a ``model.safetensors`` file lies in, when
    it is ``name``'s but not the registry's (a run with ``model.input_size``): the weights are
    that model's, and building the registry's would silently change its input size."""
    config = checkpoint.parent / CONFIG_NAME
    if checkpoint.name != WEIGHTS_NAME or not config.is_file():
        return None
    try:
        cfg = read_pretrained_config(checkpoint.parent)
    except CheckpointError:
        return None  # a stray or foreign config.json: the file is loaded as any weights file
    return cfg if cfg.name == name and cfg != MODEL_CONFIGS[name] else None


def _random(name: str, seed: int, why: str) -> tuple[EfficientViTSam, WeightsInfo]:
    # A forked RNG: the same seed gives every process (and every run) the same weights, and the
    # caller's global RNG stream is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_sam(name)
    logger.warning("%s with random weights (seed %d): masks are meaningless", name, seed)
    return model, WeightsInfo("random", None, None, name,
                              f"weights: random ({why}, seed {seed}; masks are meaningless)", seed)


def _official(name: str, allow_download: bool,
              tried: list[str]) -> tuple[EfficientViTSam, WeightsInfo] | None:
    hub_file = MODEL_CONFIGS[name].hub_file
    if hub_file is None:
        return None
    cached = find_in_hf_cache(name)
    if cached is not None:
        return build_sam(name, checkpoint=cached), WeightsInfo(
            "hf_cache", cached, cached, name,
            f"weights: official {hub_file} (Hugging Face cache, {name})")
    tried.append(f"{hub_file} in the Hugging Face cache {hf_cache_dir()}")
    if not allow_download:
        return None
    from huggingface_hub import hf_hub_download

    try:
        file = Path(hf_hub_download(HUB_REPO_ID, hub_file, cache_dir=hf_cache_dir()))
    except Exception as err:  # network, auth and HTTP errors come in many types
        tried.append(f"downloading it from {HUB_REPO_ID} ({type(err).__name__}: {err})")
        return None
    return build_sam(name, checkpoint=file), WeightsInfo(
        "hub", file, file, name, f"weights: official {hub_file} (downloaded from {HUB_REPO_ID})")


def _bundled(name: str, tried: list[str]) -> tuple[EfficientViTSam, WeightsInfo] | None:
    folder = bundled_dir(name)
    if folder is None:
        tried.append(f"a bundled model at {bundled_root() / name}")
        return None
    cfg = read_pretrained_config(folder)
    if cfg.name != name:
        raise CheckpointError(f"bundled folder {folder} holds {cfg.name}, not {name}")
    model = build_sam(cfg, checkpoint=folder / WEIGHTS_NAME)
    return model, WeightsInfo("bundled", folder, folder / WEIGHTS_NAME, name,
                              f"weights: {name}, {BUNDLED_NOTE}")


def resolve_model(name: str | None, *, checkpoint: str | Path | None = None,
                  random_weights: bool = False, device: str | torch.device | None = None,
                  seed: int = 0, allow_download: bool = False,
                  require_weights: bool = True) -> tuple[EfficientViTSam, WeightsInfo]:
    """The model to run and where its weights came from (the order is in the module docstring).

    ``name``: a registry name or short form (``"l0"``), or ``None`` for the default.
    Bad input (unknown name, bad device, missing/corrupt/mismatched checkpoint, nothing found
    with ``require_weights``) raises :class:`UserError` naming the argument or file. The model
    is in eval mode, on ``device`` if given.
    """
    name = _name(name)
    target = resolve_device(device)
    if checkpoint is not None and random_weights:
        raise UserError("give --checkpoint or --random-weights, not both")
    if checkpoint is not None:
        model, info = _from_checkpoint(name, Path(checkpoint).expanduser())
    elif random_weights:
        model, info = _random(name or DEFAULT_MODEL, seed, "--random-weights")
    else:
        tried: list[str] = []
        candidates = [(name, True)] if name is not None else [(DEFAULT_MODEL, False),
                                                              (DEFAULT_BUNDLED, True)]
        found = None
        for candidate, bundled_ok in candidates:
            found = _official(candidate, allow_download, tried)
            if found is None and bundled_ok:
                found = _bundled(candidate, tried)
            if found is not None:
                break
        if found is None:
            wanted = name or DEFAULT_MODEL
            if require_weights:
                hub_file = MODEL_CONFIGS[wanted].hub_file
                cache = (f"(huggingface-cli download {HUB_REPO_ID} {hub_file})" if hub_file
                         else f"(official variants only: {wanted} has none)")
                raise UserError(
                    f"no weights for {wanted}; tried: {'; '.join(tried)}. Ways out: "
                    "--checkpoint PATH (an official efficientvit_sam_*.pt or a save_pretrained "
                    f"folder), put the official file in the Hugging Face cache {cache}, or "
                    "--random-weights (a pipeline test: masks are meaningless)")
            found = _random(wanted, seed, "no weights found")
        model, info = found
    if target is not None:
        model.to(target)
    return model.eval(), info
