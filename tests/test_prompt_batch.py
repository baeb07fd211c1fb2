"""``as_prompt_batch``: the one prompt check and batching that the PyTorch and onnxruntime
predictors share."""

from __future__ import annotations

import numpy as np
import pytest

from effvit_sam.predictor_inputs import as_prompt_batch

SIZE = (40, 60)  # H, W


def test_an_unbatched_prompt_is_shared_by_every_batched_one():
    boxes = np.array([[1, 2, 10, 20], [5, 5, 30, 30], [0, 0, 60, 40]])
    got = as_prompt_batch([[3, 4]], [0], boxes, None, SIZE)
    assert got.size == 3 and got.batched
    assert got.points.shape == (3, 1, 2) and got.labels.shape == (3, 1)
    assert got.points.strides[0] == 0  # a view, not three copies
    np.testing.assert_array_equal(got.points[2], [[3, 4]])
    np.testing.assert_array_equal(got.labels[:, 0], [0, 0, 0])
    np.testing.assert_array_equal(got.boxes, boxes)
    assert got.mask_input is None


def test_one_prompt_set_is_a_batch_of_one_that_is_not_batched():
    mask = np.zeros((1, 256, 256), np.float32)
    got = as_prompt_batch([[3, 4], [5, 6]], None, [1, 2, 10, 20], mask, SIZE)
    assert (got.size, got.batched) == (1, False)
    assert got.points.shape == (1, 2, 2) and got.boxes.shape == (1, 4)
    assert got.mask_input.shape == (1, 1, 256, 256)
    np.testing.assert_array_equal(got.labels, [[1, 1]])  # omitted labels: foreground


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(labels=[1]), "labels given without points"),
    (dict(), "give at least one prompt"),
    (dict(points=np.zeros((2, 1, 2)), boxes=np.zeros((3, 4))), "disagree on the batch size"),
    (dict(boxes=[10, 0, 5, 5]), "x0 <= x1"),
])
def test_bad_prompts_name_the_problem(kwargs, message):
    args = {"points": None, "labels": None, "boxes": None, "mask_input": None, **kwargs}
    with pytest.raises(ValueError, match=message):
        as_prompt_batch(**args, original_size=SIZE)
