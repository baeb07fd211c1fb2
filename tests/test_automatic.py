"""EfficientViTSamAutomaticMaskGenerator: SAM's records on a SAM model, valid records on an
EfficientViT-SAM model, the RLE uncropping and the option checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import mask_to_rle_pytorch, uncrop_masks
from torchvision.ops import box_iou

from effvit_sam import EfficientViTSamAutomaticMaskGenerator, build_sam, mask_rle
from effvit_sam import automatic as automatic_module
from effvit_sam.inference import mask_upscale
from effvit_sam.masks import rle_to_mask

from .tiny_sam import smooth_upscaling_, tiny_sam


def _scene(h: int = 150, w: int = 230) -> np.ndarray:
    """Dark background with a few bright discs and a square: distinct regions to segment."""
    canvas = Image.new("RGB", (w, h), (20, 30, 40))
    draw = ImageDraw.Draw(canvas)
    draw.ellipse((20, 20, 90, 90), fill=(230, 200, 40))
    draw.ellipse((130, 60, 200, 130), fill=(40, 200, 230))
    draw.rectangle((100, 10, 140, 50), fill=(220, 60, 60))
    return np.asarray(canvas)


def _same(a, b) -> bool:
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, abs_tol=1e-6)
    return a == b


@pytest.mark.parametrize("options", [
    dict(points_per_side=8, points_per_batch=64),
    dict(points_per_side=4, points_per_batch=5, crop_n_layers=1, box_nms_thresh=1.0,
         crop_n_points_downscale_factor=2, min_mask_region_area=60),
], ids=["grid", "crops+small-regions"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch"])
def test_records_equal_sam_generator(options, compiled, monkeypatch):
    if not compiled:  # the paths taken where numba is missing: ATen's resizes, torch's runs
        monkeypatch.setattr(mask_upscale, "upscale_to_masks", lambda *a, **k: None)
        monkeypatch.setattr(mask_rle, "mask_runs", lambda *a, **k: None)
    elif not mask_upscale.available():
        pytest.skip(f"numba: {mask_upscale.unavailable_reason()}")
    model = smooth_upscaling_(tiny_sam())
    image = _scene()
    # Thresholds off: a random decoder's IoU predictions and stability are low.
    kw = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, output_mode="uncompressed_rle",
              **options)
    want = SamAutomaticMaskGenerator(model, **kw).generate(image)
    # One mask per full-resolution chunk: chunking must not change any record.
    monkeypatch.setattr(automatic_module, "_CHUNK_BYTES", 1)
    got = EfficientViTSamAutomaticMaskGenerator(model, **kw).generate(image)
    assert len(want) >= 3
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(w)
        # SAM's records give w = x1 - x0 of the inclusive extents; ours, the package's one
        # convention (COCO's, effvit_sam.masks), one whole pixel more. Same box otherwise.
        x, y, bw, bh = w["bbox"]
        assert g["bbox"] == [x, y, bw + 1, bh + 1]
        for key in w.keys() - {"bbox"}:
            assert _same(g[key], w[key]), key


def test_uncropped_rles_equal_padding_the_masks():
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(4, 7, 5, generator=gen) > 0.5
    masks[0] = True
    masks[1] = False
    masks[2, 0, 0] = True
    for crop_box in ([0, 0, 5, 7], [3, 0, 8, 7], [0, 2, 5, 9], [2, 4, 7, 11], [6, 1, 11, 8]):
        want = mask_to_rle_pytorch(uncrop_masks(masks, crop_box, 11, 11))
        assert mask_rle.uncrop_rles(masks, crop_box, (11, 11)) == want, crop_box


@pytest.fixture(scope="module")
def tiny_records():
    torch.manual_seed(0)
    model = smooth_upscaling_(build_sam("efficientvit-sam-tiny").eval())
    generator = EfficientViTSamAutomaticMaskGenerator(
        model, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.3,
        box_nms_thresh=0.7)
    return generator.generate(_scene()), model


def test_records_valid_on_efficientvit_model(tiny_records):
    records, _ = tiny_records
    assert records, "the scene should give at least one mask"
    for r in records:
        seg = r["segmentation"]
        assert seg.shape == (150, 230) and seg.dtype == bool
        assert r["area"] == int(seg.sum()) > 0
        ys, xs = np.nonzero(seg)
        # the package's one box convention: whole pixels, w = x1 - x0 + 1 (as COCO's)
        assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                             ys.max() - ys.min() + 1]
        assert r["stability_score"] >= 0.3
        assert r["crop_box"] == [0, 0, 230, 150]
        (x, y), = r["point_coords"]
        assert 0 <= x <= 230 and 0 <= y <= 150
    boxes = torch.tensor([r["bbox"] for r in records], dtype=torch.float)
    boxes[:, 2:] += boxes[:, :2]
    iou = box_iou(boxes, boxes).fill_diagonal_(0)
    assert iou.max() <= 0.7
    scores = [r["predicted_iou"] for r in records]
    assert scores == sorted(scores, reverse=True)  # NMS keeps them best first


def test_fast_options_reach_the_predictor(tiny_records):
    """fast=FastPathOptions.exact() is the float32 fast path (auto may be bf16 on AMX CPUs): the
    records are the eager model's."""
    from effvit_sam.inference import FastPathOptions

    _, model = tiny_records
    kw = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.3,
              box_nms_thresh=0.7)
    opts = FastPathOptions.exact().with_(compiled_gelu=False)
    exact = EfficientViTSamAutomaticMaskGenerator(model, fast=opts, **kw)
    assert exact.predictor.model.image_encoder.options == opts
    eager = EfficientViTSamAutomaticMaskGenerator(model, fast=False, **kw).generate(_scene())
    got = exact.generate(_scene())
    assert len(got) == len(eager) > 0
    for a, b in zip(got, eager, strict=True):  # exact up to float32 rounding
        assert (a["segmentation"] == b["segmentation"]).mean() >= 0.9999


def test_coco_rle_output_and_progress(tiny_records, capsys):
    records, model = tiny_records
    generator = EfficientViTSamAutomaticMaskGenerator(
        model, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.3,
        output_mode="coco_rle", progress=True)
    coco = generator.generate(Image.fromarray(_scene()))
    assert "everything" in capsys.readouterr().err
    assert len(coco) == len(records)
    for c, r in zip(coco, records, strict=True):
        assert isinstance(c["segmentation"]["counts"], str)
        assert c["segmentation"]["size"] == [150, 230]
        assert np.array_equal(rle_to_mask(c["segmentation"]), r["segmentation"])
        assert c["bbox"] == r["bbox"] and c["area"] == r["area"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(points_per_side=None), "exactly one of points_per_side and point_grids"),
    (dict(point_grids=[np.zeros((4, 2))]), "exactly one"),
    (dict(points_per_side=None, point_grids=[np.zeros((4, 2))], crop_n_layers=1),
     "one grid per crop layer"),
    (dict(points_per_side=None, point_grids=[np.full((4, 2), 2.0)]), r"normalised to \[0, 1\]"),
    (dict(output_mode="rle"), "output_mode"),
    (dict(points_per_batch=0), "points_per_batch"),
    (dict(box_nms_thresh=1.5), "box_nms_thresh"),
    (dict(points_per_side=0), "points_per_side"),
    (dict(pred_iou_thresh=math.nan), "pred_iou_thresh"),
    (dict(stability_score_thresh=math.nan), "stability_score_thresh"),
    (dict(stability_score_thresh=1.5), "stability_score_thresh"),
    (dict(pred_iou_thresh=-0.1), "pred_iou_thresh"),
    (dict(stability_score_offset=math.inf), "stability_score_offset"),
    (dict(stability_score_offset=math.nan), "stability_score_offset"),
    (dict(crop_nms_thresh=math.nan), "crop_nms_thresh"),
    (dict(min_mask_region_area=math.nan), "min_mask_region_area"),
    (dict(points_per_side=4.5), "points_per_side must be an integer"),
    (dict(points_per_batch=True), "points_per_batch must be an integer"),
])
def test_bad_options_raise(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        EfficientViTSamAutomaticMaskGenerator(tiny_model, **kwargs)


@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_given_embedding_replaces_the_whole_image_encode(crop_n_layers):
    model = smooth_upscaling_(tiny_sam())
    image = _scene()
    kw = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
              crop_n_layers=crop_n_layers, output_mode="uncompressed_rle")
    want = EfficientViTSamAutomaticMaskGenerator(model, **kw).generate(image)
    from effvit_sam import EfficientViTSamPredictor

    predictor = EfficientViTSamPredictor(model)
    predictor.set_image(image)
    calls = []
    hook = model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    got = EfficientViTSamAutomaticMaskGenerator(model, **kw).generate(
        image, encoded=predictor.images[0])
    hook.remove()
    assert len(calls) == (0 if crop_n_layers == 0 else 4)  # only the four layer-1 crops
    assert len(got) == len(want) >= 3
    for g, w in zip(got, want, strict=True):
        for key in w:
            assert _same(g[key], w[key]), key
    with pytest.raises(ValueError, match="encoded is for"):
        EfficientViTSamAutomaticMaskGenerator(model, **kw).generate(
            image[:100], encoded=predictor.images[0])
