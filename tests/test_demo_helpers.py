"""The demo's pure helpers: clicks to prompts, undo, overlays, PNG and COCO-RLE export."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from demo import render
from demo.prompts import (
    Box,
    Point,
    PromptHistory,
    Prompts,
    add_click,
    check_click,
    to_predictor_inputs,
)
from effvit_sam.masks import rle_to_mask
from effvit_sam.visualize import distinct_colors

SIZE = (60, 80)  # (H, W)


def test_point_clicks_append_points_with_their_labels():
    p = add_click(Prompts(), 10, 20, mode="point", label=1, image_size=SIZE)
    p = add_click(p, 30.5, 40, mode="point", label=0, image_size=SIZE)
    assert p.points == (Point(10.0, 20.0, 1), Point(30.5, 40.0, 0))
    assert p.box is None and p.corner is None and p.decodable


def test_two_box_clicks_make_a_box_whatever_the_corner_order():
    p = add_click(Prompts(), 50, 10, mode="box", label=1, image_size=SIZE)
    assert p.corner == (50.0, 10.0) and p.box is None and not p.decodable
    p = add_click(p, 20, 40, mode="box", label=1, image_size=SIZE)
    assert p.box == Box(20.0, 10.0, 50.0, 40.0) and p.corner is None
    # A third and fourth click replace the box; earlier points stay.
    p = add_click(p, 5, 5, mode="point", label=1, image_size=SIZE)
    p = add_click(add_click(p, 1, 2, mode="box", label=1, image_size=SIZE), 3, 9, mode="box",
                  label=1, image_size=SIZE)
    assert p.box == Box(1.0, 2.0, 3.0, 9.0) and p.points == (Point(5.0, 5.0, 1),)


def test_a_zero_area_box_keeps_waiting_for_its_second_corner():
    p = add_click(Prompts(), 10, 10, mode="box", label=1, image_size=SIZE)
    assert add_click(p, 10, 30, mode="box", label=1, image_size=SIZE) == p


@pytest.mark.parametrize("xy", [(80, 0), (0, 60), (-1, 5), (float("nan"), 3)])
def test_clicks_outside_the_image_are_refused(xy):
    with pytest.raises(ValueError, match="outside|finite"):
        check_click(*xy, SIZE)


def test_bad_mode_and_label_are_refused():
    with pytest.raises(ValueError, match="mode"):
        add_click(Prompts(), 1, 1, mode="everything", label=1, image_size=SIZE)
    with pytest.raises(ValueError, match="label"):
        add_click(Prompts(), 1, 1, mode="point", label=2, image_size=SIZE)


def test_predictor_inputs_have_predictor_shapes_and_frames():
    p = Prompts(points=(Point(1, 2, 1), Point(3, 4, 0)), box=Box(0, 1, 10, 11))
    kw = to_predictor_inputs(p)
    np.testing.assert_array_equal(kw["points"], [[1, 2], [3, 4]])
    assert kw["points"].dtype == np.float32 and kw["points"].shape == (2, 2)
    np.testing.assert_array_equal(kw["labels"], [1, 0])
    np.testing.assert_array_equal(kw["boxes"], [0, 1, 10, 11])
    only_box = to_predictor_inputs(Prompts(box=Box(0, 1, 10, 11)))
    assert only_box["points"] is None and only_box["labels"] is None
    with pytest.raises(ValueError, match="no prompt"):
        to_predictor_inputs(Prompts(corner=(1, 1)))


def test_history_undo_clear_and_bound():
    h = PromptHistory(max_undo=3)
    states = [Prompts(points=(Point(i, i),)) for i in range(5)]
    for s in states:
        assert h.push(s)
    assert not h.push(states[-1])  # unchanged: nothing recorded
    assert len(h) == 3  # bounded: the two oldest states are forgotten
    assert h.undo() and h.current == states[3]
    h.clear()
    assert h.current.is_empty
    assert h.undo() and h.current == states[3]  # clearing can be undone
    assert h.undo() and h.undo() and h.current == states[1]
    assert not h.undo() and h.current == states[1]


def test_overlay_blends_the_mask_colour_and_leaves_the_rest():
    image = np.full((*SIZE, 3), 100, np.uint8)
    mask = np.zeros(SIZE, bool)
    mask[10:30, 10:40] = True
    out = render.render_overlay(image, mask[None], Prompts(), alpha=0.5)
    color = distinct_colors(1)[0].astype(float)
    np.testing.assert_array_equal(out[20, 25], np.rint(0.5 * 100 + 0.5 * color))
    np.testing.assert_array_equal(out[50, 70], [100, 100, 100])
    np.testing.assert_array_equal(out[~mask], image[~mask])  # no prompts: only the mask changes


def test_overlay_draws_points_box_and_pending_corner():
    image = np.full((*SIZE, 3), 100, np.uint8)
    prompts = Prompts(points=(Point(20, 20, 1), Point(60, 20, 0)), box=Box(5, 35, 40, 55),
                      corner=(70, 50))
    out = render.render_overlay(image, None, prompts)
    assert out[20, 20, 1] > 200 and out[20, 20, 0] < 50  # green star: foreground
    assert out[20, 60, 0] > 200 and out[20, 60, 1] < 50  # red star: background
    assert tuple(out[35, 20]) == (30, 144, 255)  # box outline
    np.testing.assert_array_equal(out[50, 70], render.PENDING_CORNER_COLOR)
    assert tuple(out[45, 20]) == (100, 100, 100)  # inside the box, no mask: untouched
    assert out.shape == image.shape and out.dtype == np.uint8


def test_mask_png_round_trip():
    mask = np.zeros(SIZE, bool)
    mask[3:7, 5:9] = True
    decoded = np.asarray(Image.open(io.BytesIO(render.mask_png_bytes(mask))))
    assert decoded.dtype == np.uint8 and decoded.shape == SIZE
    np.testing.assert_array_equal(decoded, mask * 255)


def test_label_map_later_masks_win_and_dtype_grows():
    a = np.zeros((2, 4, 4), bool)
    a[0, :2] = True
    a[1, 1:3] = True
    labels = render.label_map(a)
    np.testing.assert_array_equal(labels[:, 0], [1, 2, 2, 0])
    assert labels.dtype == np.uint8
    many = np.zeros((300, 2, 2), bool)
    many[299, 0, 0] = True
    big = render.label_map(many)
    assert big.dtype == np.uint16 and big[0, 0] == 300
    png = np.asarray(Image.open(io.BytesIO(render.label_png_bytes(many))))
    assert png[0, 0] == 300


def test_coco_records_hand_computed():
    mask = np.zeros(SIZE, bool)
    mask[2:5, 3:8] = True  # rows 2..4, cols 3..7: 15 pixels
    prompts = Prompts(points=(Point(4, 3, 1),), box=Box(3, 2, 8, 5))
    (rec,) = render.coco_records(mask[None], np.array([0.75]), prompts=prompts)
    assert rec["area"] == 15 and rec["bbox"] == [3.0, 2.0, 5.0, 3.0]
    assert rec["score"] == 0.75 and rec["segmentation"]["size"] == [60, 80]
    np.testing.assert_array_equal(rle_to_mask(rec["segmentation"]), mask)
    assert rec["point_coords"] == [[4.0, 3.0]] and rec["point_labels"] == [1]
    assert rec["box"] == [3.0, 2.0, 8.0, 5.0]
    json.dumps(rec)  # plain JSON types only
    (empty,) = render.coco_records(np.zeros((1, *SIZE), bool))
    assert empty["area"] == 0 and empty["bbox"] == [0.0, 0.0, 0.0, 0.0] and "score" not in empty
    with pytest.raises(ValueError, match="scores"):
        render.coco_records(mask[None], np.array([0.1, 0.2]))


def test_writes_are_whole_files(tmp_path):
    path = render.write_json(tmp_path / "a" / "m.json", {"x": [1, 2]})
    assert json.loads(path.read_text()) == {"x": [1, 2]}
    assert render.write_bytes(tmp_path / "b.png", b"\x89PNG").read_bytes() == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.png", "m.json"]  # no temp files
