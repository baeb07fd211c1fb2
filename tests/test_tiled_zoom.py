"""Tiled everything mode's second, magnified look at small objects (``effvit_sam.tiled_zoom``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from distill.wafer import Wafer
from effvit_sam import cli, from_pretrained
from effvit_sam.automatic import EfficientViTSamAutomaticMaskGenerator
from effvit_sam.masks import rle_to_mask
from effvit_sam.tiled import Window
from effvit_sam.tiled_everything import AutomaticTileSegmenter, TiledMaskGenerator
from effvit_sam.tiled_zoom import (
    ZoomTileSegmenter,
    _meets_inner_edge,
    _nms,
    innermost_pixel,
    zoom_window,
)
from eval.metrics import mask_iou

WAFER_MODEL = "distill/wafer_model"  # the committed wafer fine-tune of the bundled model


def test_innermost_pixel_is_deep_inside():
    mask = np.zeros((20, 30), bool)
    mask[4:11, 6:17] = True  # 7 x 11: one centre pixel
    assert innermost_pixel(mask) == (11, 7)
    ring = np.zeros((21, 21), bool)
    yy, xx = np.mgrid[:21, :21]
    r = np.hypot(yy - 10, xx - 10)
    ring[(r > 5) & (r < 9)] = True
    x, y = innermost_pixel(ring)
    assert ring[y, x] and 6 <= np.hypot(y - 10, x - 10) <= 8  # on the ring, not in the hole
    with pytest.raises(ValueError, match="empty mask"):
        innermost_pixel(np.zeros((4, 4), bool))


def test_zoom_window_is_a_fraction_of_the_tile_inside_it():
    assert zoom_window([100, 100, 10, 10], 2, 256, 256) == (41, 41, 169, 169)
    assert zoom_window([0, 250, 4, 4], 2, 256, 256) == (0, 128, 128, 256)  # moved inside
    assert zoom_window([100, 10, 4, 4], 4, 100, 300) == (64, 0, 139, 75)  # 300 / 4 = 75 wide
    assert zoom_window([100, 10, 4, 4], 2, 100, 300) == (27, 0, 177, 100)  # as tall as allowed
    mask = np.zeros((64, 64), bool)
    mask[10:20, 0:5] = True
    assert not _meets_inner_edge(mask, (0, 0, 64, 64), 256, 256)  # the tile's own edge
    assert _meets_inner_edge(mask, (32, 0, 96, 64), 256, 256)  # cut by the window


def _tile():
    """A 256 tile of a made wafer (1024 pixels, seed 4) around two of its particles (7-15
    pixels across), and those particles' masks in the tile."""
    wafer = Wafer(1024, 1024, seed=4)
    rect = (77, 450, 333, 706)
    inside = [d for d in wafer.defects if d.kind == "particle" and
              rect[0] + 8 <= d.cx < rect[2] - 8 and rect[1] + 8 <= d.cy < rect[3] - 8]
    assert len(inside) == 2
    return wafer.read(*rect), Window(*rect), rect, [d.mask(rect) for d in inside]


@pytest.fixture(scope="module")
def wafer_tile():
    torch.manual_seed(0)
    generator = _generator(16)
    image, window, rect, particles = _tile()
    generator.predictor.set_images([image])
    encoded = generator.predictor.images[0]
    generator.predictor.reset_image()
    return generator, image, encoded, window, rect, particles


def _generator(points_per_side: int):
    return EfficientViTSamAutomaticMaskGenerator(
        from_pretrained(WAFER_MODEL), points_per_side=points_per_side, pred_iou_thresh=0.5,
        stability_score_thresh=0.8)


def test_without_small_objects_the_masks_are_the_plain_generators(wafer_tile):
    _, image, _, window, rect, _ = wafer_tile
    generator = _generator(8)
    generator.predictor.set_images([image])
    encoded = generator.predictor.images[0]
    generator.predictor.reset_image()
    plain = AutomaticTileSegmenter(generator).segment(image, encoded, window, (1024, 1024))
    zoom = ZoomTileSegmenter(generator, max_side=0)  # no second look
    found = zoom.segment(image, encoded, window, (1024, 1024))
    assert zoom.looked_again == 0 and len(plain) >= 2
    assert len(found) == len(plain)
    for (a, ia, sa), (b, ib, sb) in zip(plain, found, strict=True):
        assert (a.x0, a.y0) == (b.x0, b.y0) and np.array_equal(a.mask, b.mask)
        assert ia == pytest.approx(ib, abs=1e-6) and sa == pytest.approx(sb, abs=1e-6)


def test_small_objects_are_looked_at_again_and_found(wafer_tile):
    generator, image, encoded, window, rect, particles = wafer_tile
    assert particles
    plain = AutomaticTileSegmenter(generator).segment(image, encoded, window, (1024, 1024))
    zoom = ZoomTileSegmenter(generator)
    found = zoom.segment(image, encoded, window, (1024, 1024))
    assert zoom.looked_again >= len(particles) and zoom.replaced >= 1
    # every mask passes the generator's filters and the box NMS left no duplicates
    assert all(iou > 0.5 and stability >= 0.8 for _, iou, stability in found)
    records = [{"bbox": list(crop.bbox_xywh), "predicted_iou": iou} for crop, iou, _ in found]
    assert _nms(records, generator.box_nms_thresh) == list(range(len(found)))
    best = [[max((mask_iou(m, p) for m in (c.region(rect) for c, _, _ in f)), default=0.0)
             for p in particles] for f in (plain, found)]
    # the plain generator misses one particle (best IoU ~0), the zoomed look finds both
    assert min(best[0]) < 0.1 and min(best[1]) > 0.5, best
    assert np.mean(best[1]) > np.mean(best[0]) + 0.2, best


def test_zoom_settings_are_part_of_a_resumable_runs_state(tmp_path):
    generator = _generator(2)
    assert ZoomTileSegmenter(generator).settings()["zoom"] == 2.0
    assert ZoomTileSegmenter(generator, zoom=3).settings() != \
        ZoomTileSegmenter(generator).settings()
    image = np.zeros((256, 256, 3), np.uint8)
    state = tmp_path / "state.json"
    TiledMaskGenerator(ZoomTileSegmenter(generator), tile=256, overlap=32).generate(
        image, state_path=state)
    with pytest.raises(Exception, match="zoom"):
        TiledMaskGenerator(ZoomTileSegmenter(generator, zoom=3), tile=256, overlap=32).generate(
            image, state_path=state)


@pytest.mark.parametrize("kwargs, message", [
    ({"zoom": 1.0}, "zoom must be a finite number > 1"),
    ({"zoom": float("nan")}, "zoom must be a finite number > 1"),
    ({"max_side": -1}, "max_side must be an integer >= 0"),
    ({"candidate_iou": 1.5}, r"candidate_iou must be in \[0, 1\]"),
    ({"clicks": 0}, "clicks must be a positive integer"),
])
def test_bad_options_name_the_problem(wafer_tile, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ZoomTileSegmenter(wafer_tile[0], **kwargs)


def test_crop_layers_are_refused():
    generator = EfficientViTSamAutomaticMaskGenerator(from_pretrained(WAFER_MODEL),
                                                      points_per_side=4, crop_n_layers=1)
    with pytest.raises(ValueError, match="crop_n_layers=0"):
        ZoomTileSegmenter(generator)


def test_segment_cli_zooms_small_objects(tmp_path, wafer_tile, capsys):
    image = tmp_path / "tile.png"
    Image.fromarray(wafer_tile[1]).save(image)
    common = [str(image), "--model", "efficientvit-sam-mini", "--checkpoint", WAFER_MODEL,
              "--tile", "256", "--overlap", "32", "--everything", "--points-per-side", "16",
              "--pred-iou-thresh", "0.5", "--stability-score-thresh", "0.8"]
    out = tmp_path / "zoom.json"
    assert cli.main(["segment", *common, "--zoom-small", "2", "--json", str(out), "--output",
                     str(tmp_path / "zoom.png")]) == 0
    masks = [rle_to_mask(a["segmentation"]) for a in json.loads(out.read_text())["annotations"]]
    # both particles found (the plain generator misses one: the test above)
    best = [max(mask_iou(m, p) for m in masks) for p in wafer_tile[5]]
    assert min(best) > 0.5, best
    capsys.readouterr()
    for extra, message in ((["--zoom-small", "1"], "must be a number > 1"),
                           (["--zoom-small", "2", "--min-mask-region-area", "5"],
                            "does not combine with --min-mask-region-area")):
        assert cli.main(["segment", *common, *extra]) == 2
        assert message in capsys.readouterr().err
