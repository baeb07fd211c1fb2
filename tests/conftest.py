"""Shared fixtures. Everything is made by the tests; nothing is downloaded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from effvit_sam import build_sam, list_models

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
OFFICIAL = list_models(official_only=True)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def reference_dir() -> Path:
    """``../shared/reference`` beside the checkout, or skip (a user's fresh clone has none)."""
    if not (REFERENCE_DIR / "deterministic_weights.py").is_file():
        pytest.skip(f"reference fixtures not found at {REFERENCE_DIR} (outside the dev workplace)")
    return REFERENCE_DIR


def key_table(variant: str) -> Path:
    return reference_dir() / f"keys_{variant}.tsv"


def deterministic_model(variant: str):
    """The variant loaded with the reference's deterministic weights, in eval mode."""
    ref = reference_dir()
    if str(ref) not in sys.path:
        sys.path.insert(0, str(ref))
    from deterministic_weights import deterministic_state_dict

    model = build_sam(variant)
    model.load_state_dict(deterministic_state_dict(ref / f"keys_{variant}.tsv"), strict=True)
    return model.eval()


def parity_fixture(variant: str) -> dict:
    data = torch.load(reference_dir() / f"parity_{variant}.pt", weights_only=False)
    image = data["image"]
    data["image"] = image.numpy() if isinstance(image, torch.Tensor) else image
    return data


@pytest.fixture
def tiny_model():
    """A randomly initialised few-MFLOP model of the real structure, in eval mode."""
    return build_sam("efficientvit-sam-tiny").eval()


@pytest.fixture
def trained_tiny(tmp_path):
    """``efficientvit-sam-tiny`` with weights no random initialisation would draw (each moved by
    0.1 x N(0, 1)), in eval mode, and the ``save_pretrained`` folder holding them."""
    from effvit_sam.checkpoint import save_pretrained

    torch.manual_seed(0)
    model = build_sam("efficientvit-sam-tiny").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_pretrained(model, tmp_path / "trained")
    return model, tmp_path / "trained"


@pytest.fixture()
def one_thread():
    """One intra-op thread for the training tests: faster on a shared 2-core box, and the same
    in the subprocesses they start. Opt in with ``pytestmark = pytest.mark.usefixtures``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
