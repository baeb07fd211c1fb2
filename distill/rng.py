"""Every RNG state a training step draws from, saved and restored for exact resume.

A checkpoint is read with ``torch.load(weights_only=True)``, which accepts tensors, lists,
dicts and plain scalars but not tuples of NumPy arrays: :func:`to_plain` stores the states in
that form and :func:`from_plain` turns them back into what ``random``/``numpy`` expect.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state(generator: torch.Generator) -> dict:
    """Python, NumPy, torch (CPU and every CUDA device) and the prompt ``generator``'s states."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                       *np_state[2:]),
             "torch": torch.get_rng_state(), "prompts": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    """Restore what :func:`rng_state` captured (after :func:`from_plain`)."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["prompts"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_plain(obj: Any) -> Any:
    """Tuples to lists recursively, so a checkpoint loads with ``weights_only=True``."""
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def from_plain(state: dict) -> dict:
    """The inverse of :func:`to_plain` for one :func:`rng_state` dict."""
    state = dict(state)
    state["python"] = (state["python"][0], tuple(state["python"][1]), state["python"][2])
    state["numpy"] = tuple(state["numpy"])
    return state
