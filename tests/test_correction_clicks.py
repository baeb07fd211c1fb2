"""Phase 2's evaluator-style correction clicks (``prompts.correction_click: farthest``)."""

from __future__ import annotations

import pytest
import torch

from distill.config import ConfigError, PromptConfig, load_config
from distill.phase2 import FinetuneStep
from distill.prompts import farthest_correction_clicks
from effvit_sam import build_sam

from .test_distill_units import _two_mask_batch


def _cell(coords: torch.Tensor) -> tuple[int, int]:
    """Low-res (row, col) of a prompt-frame point."""
    col, row = ((coords - 2) / 4).long().tolist()
    return row, col


def test_farthest_clicks_go_to_the_middle_of_the_larger_error() -> None:
    truth = torch.zeros(4, 256, 256, dtype=torch.bool)
    truth[:, 40:80, 40:80] = True
    pred = torch.where(truth, 1.0, -1.0).repeat(1, 1, 1)
    pred[0, 40:80, 60:80] = -1.0  # the right half missed: a positive click in its middle
    pred[1, 100:140, 100:160] = 1.0  # a large spill: a negative click in its middle
    pred[1, 40:80, 79] = -1.0  # ...beside a one-pixel miss, which loses
    # pred[2]: exact, a confirming click at the mask's centre
    truth[3], pred[3] = False, -1.0  # nothing to segment, nothing predicted: a negative click
    # at the centre
    coords, labels = farthest_correction_clicks(pred, truth)
    assert coords.shape == (4, 1, 2) and labels.tolist() == [[1], [0], [1], [0]]
    row, col = _cell(coords[0, 0])
    # 10 px from the missed 40 x 20 band's sides: its middle columns, rows 49-70 (ties go to
    # the first in row-major order, as the evaluator's)
    assert 49 <= row <= 70 and 69 <= col <= 70 and truth[0, row, col]
    row, col = _cell(coords[1, 0])  # 20 px inside the 40 x 60 spill
    assert 119 <= row <= 120 and 119 <= col <= 140 and not truth[1, row, col]
    row, col = _cell(coords[2, 0])
    assert 55 <= row <= 64 and 55 <= col <= 64
    assert _cell(coords[3, 0]) == (128, 128)


def test_unknown_correction_click_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="correction_click must be one of"):
        load_config("smoke_phase2", ["prompts.correction_click=nearest"])


def test_a_round_with_farthest_clicks_gets_the_evaluator_click() -> None:
    torch.manual_seed(0)
    model = build_sam("tiny").eval()
    batch = _two_mask_batch()
    seen = []
    decode = model.decode

    def spy(*args, **kwargs):
        seen.append((kwargs["points"], kwargs["mask_input"]))
        return decode(*args, **kwargs)

    model.decode = spy
    prompts = PromptConfig(box_prob=1.0, box_jitter=0.0, iterative_rounds=1, feed_prob=1.0,
                           correction_click="farthest")
    step = FinetuneStep(model, prompts, mask_loss="focal", fast_decoder=False)
    with torch.no_grad():
        loss, _ = step(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and len(seen) == 2
    (first_points, _), (round_points, fed) = seen
    assert first_points is None  # a box first
    want, want_labels = farthest_correction_clicks(fed[:, 0], batch["masks"][0].float())
    assert torch.equal(round_points[0], want) and torch.equal(round_points[1], want_labels)
