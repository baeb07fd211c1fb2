"""ONNX export (tiny model): graphs, operator types, onnxruntime parity and the numpy predictor."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from effvit_sam import build_sam, geometry
from effvit_sam.export import onnx_predictor as onp
from effvit_sam.export.onnx import (
    DECODER_ATOL,
    DECODER_INPUTS,
    ENCODER_ATOL,
    OFFICIAL_DECODER_INPUTS,
    OFFICIAL_DECODER_OUTPUTS,
    OnnxDecoder,
    example_decoder_inputs,
    export_onnx,
)
from effvit_sam.inference import FastPathOptions
from effvit_sam.inference.fuse import fuse
from effvit_sam.tools.export import main

from .test_fuse import randomise_bn

# Plain operators that TensorRT's ONNX parser builds; anything else in a graph fails the test.
# ArgMax: the official-names single-mask decoder picks the best mask per prompt.
TENSORRT_OPS = {
    "Add", "ArgMax", "Cast", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose",
    "Cos", "Div", "Equal", "Erf", "Gather", "Gemm", "Identity", "LayerNormalization", "MatMul",
    "Mul", "Not",
    "Pad", "Pow", "ReduceMean", "Relu", "Reshape", "Resize", "Shape", "Sin", "Slice", "Softmax",
    "Split", "Sqrt", "Sub", "Tanh", "Transpose", "Unsqueeze",
}
# What repeat_interleave and boolean-indexed writes export to, and control flow.
FORBIDDEN_OPS = {"NonZero", "ScatterND", "ScatterElements", "Loop", "If", "SequenceConstruct",
                 "SplitToSequence", "Range", "CumSum"}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomise_bn(build_sam("efficientvit-sam-tiny"), seed=7)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory) -> dict:
    return export_onnx(tiny, tmp_path_factory.mktemp("onnx"))


def _ops(path: str) -> set[str]:
    return {node.op_type for node in onnx.load(path).graph.node}


def test_export_writes_verified_graphs(exported: dict) -> None:
    assert Path(exported["encoder_path"]).is_file() and Path(exported["decoder_path"]).is_file()
    assert 0 <= exported["encoder_max_abs_diff"] < ENCODER_ATOL
    assert 0 <= exported["decoder_max_abs_diff"] < DECODER_ATOL
    for key in ("encoder_path", "decoder_path"):
        onnx.checker.check_model(onnx.load(exported[key]))


@pytest.fixture(scope="module")
def official(tiny, tmp_path_factory) -> dict:
    """Graphs with the official EfficientViT-SAM export's names: all four masks, and one."""
    return {single: export_onnx(tiny, tmp_path_factory.mktemp(f"official-{single}"),
                                official_names=True, single_mask=single)
            for single in (False, True)}


@pytest.mark.parametrize("graph", ["encoder_path", "decoder_path", "official_decoder",
                                   "official_single"])
def test_graph_operators_are_tensorrt_buildable(exported: dict, official: dict,
                                                graph: str) -> None:
    path = {"official_decoder": official[False]["decoder_path"],
            "official_single": official[True]["decoder_path"]}.get(graph) or exported[graph]
    ops = _ops(path)
    assert not ops & FORBIDDEN_OPS
    assert ops <= TENSORRT_OPS, f"unexpected operators {sorted(ops - TENSORRT_OPS)}"
    assert {"Conv", "Resize"} <= ops if graph == "encoder_path" else "ConvTranspose" in ops
    assert ("ArgMax" in ops) == (graph == "official_single")


def test_encoder_dynamic_batch(tiny, exported: dict) -> None:
    session = ort.InferenceSession(exported["encoder_path"], providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 256, 256, generator=torch.Generator().manual_seed(8))
    (out,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        expected = tiny.encode(x).numpy()
    assert out.shape == (3, 32, 64, 64)
    assert np.abs(out - expected).max() < ENCODER_ATOL


def _torch_decode(model, feeds: dict[str, np.ndarray], *, has_box: bool, use_mask: bool):
    coords = torch.from_numpy(feeds["point_coords"])
    labels = torch.from_numpy(feeds["point_labels"]).int()
    boxes = None
    if has_box:
        boxes = coords[:, -2:].reshape(-1, 4)
        coords, labels = coords[:, :-2], labels[:, :-2]
    points = (coords, labels) if coords.shape[1] else None
    mask = torch.from_numpy(feeds["mask_input"]) if use_mask else None
    with torch.no_grad():
        single = model.decode(torch.from_numpy(feeds["image_embeddings"]), points=points,
                              boxes=boxes, mask_input=mask, multimask_output=False)
        multi = model.decode(torch.from_numpy(feeds["image_embeddings"]), points=points,
                             boxes=boxes, mask_input=mask, multimask_output=True)
    return torch.cat([single[0], multi[0]], 1).numpy(), torch.cat([single[1], multi[1]], 1).numpy()


@pytest.mark.parametrize("case", ["points", "points+box", "box", "points+mask", "7 points"])
def test_decoder_graph_matches_model_decode(tiny, exported: dict, case: str) -> None:
    """The rewritten decoder (arithmetic label masks, no repeat_interleave) == model.decode."""
    session = ort.InferenceSession(exported["decoder_path"], providers=["CPUExecutionProvider"])
    n = 7 if case == "7 points" else (0 if case == "box" else 2)
    feeds = example_decoder_inputs(32, num_points=n, seed=len(case))
    has_box = "box" in case
    if not has_box:  # drop the example box, pad like SAM: one (0, 0) point labelled -1
        feeds["point_coords"] = np.concatenate(
            [feeds["point_coords"][:, :-2], np.zeros((1, 1, 2), np.float32)], 1)
        feeds["point_labels"] = np.concatenate(
            [feeds["point_labels"][:, :-2], -np.ones((1, 1), np.float32)], 1)
    use_mask = "mask" in case
    feeds["has_mask_input"] = np.array([1.0 if use_mask else 0.0], np.float32)
    model = fuse(tiny)
    expected_masks, expected_iou = _torch_decode(
        model, {**feeds, "point_coords": feeds["point_coords"][:, :-1] if not has_box
                else feeds["point_coords"],
                "point_labels": feeds["point_labels"][:, :-1] if not has_box
                else feeds["point_labels"]}, has_box=has_box, use_mask=use_mask)
    masks, iou = session.run(None, feeds)
    assert masks.shape == (1, 4, 256, 256) and iou.shape == (1, 4)
    np.testing.assert_allclose(masks, expected_masks, atol=DECODER_ATOL, rtol=0)
    np.testing.assert_allclose(iou, expected_iou, atol=1e-4, rtol=0)
    # The PyTorch module itself is the same computation (tighter: same kernels).
    with torch.no_grad():
        t_masks, _ = OnnxDecoder(model.prompt_encoder, model.mask_decoder)(
            *(torch.from_numpy(feeds[k]) for k in DECODER_INPUTS))
    np.testing.assert_allclose(t_masks.numpy(), expected_masks, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mask", ["per-prompt", "shared", "none"])
def test_batched_decoder_graph_matches_model_decode(tiny, exported: dict, mask: str) -> None:
    """B = 6 prompt sets (3 points and a box each) in one call == model.decode of all six."""
    session = ort.InferenceSession(exported["decoder_path"], providers=["CPUExecutionProvider"])
    feeds = example_decoder_inputs(32, num_points=3, batch=6, seed=11)
    if mask == "shared":
        feeds["mask_input"] = feeds["mask_input"][:1]
    feeds["has_mask_input"] = np.array([0.0 if mask == "none" else 1.0], np.float32)
    torch_feeds = dict(feeds)
    if mask == "shared":
        torch_feeds["mask_input"] = np.repeat(feeds["mask_input"], 6, axis=0)
    expected_masks, expected_iou = _torch_decode(fuse(tiny), torch_feeds, has_box=True,
                                                 use_mask=mask != "none")
    masks, iou = session.run(None, feeds)
    assert masks.shape == (6, 4, 256, 256) and iou.shape == (6, 4)
    np.testing.assert_allclose(masks, expected_masks, atol=DECODER_ATOL, rtol=0)
    np.testing.assert_allclose(iou, expected_iou, atol=1e-4, rtol=0)
    assert np.abs(masks[0] - masks[1]).max() > 1e-2  # the prompts really differ


@pytest.mark.parametrize("single", [False, True], ids=["four-masks", "single-mask"])
def test_official_names_graphs_match_model_decode(tiny, official: dict, single: bool) -> None:
    paths = official[single]
    enc = ort.InferenceSession(paths["encoder_path"], providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(paths["decoder_path"], providers=["CPUExecutionProvider"])
    assert [i.name for i in enc.get_inputs()] == ["input_image"]
    assert [o.name for o in enc.get_outputs()] == ["image_embeddings"]
    assert [i.name for i in dec.get_inputs()] == OFFICIAL_DECODER_INPUTS
    assert [o.name for o in dec.get_outputs()] == OFFICIAL_DECODER_OUTPUTS
    feeds = example_decoder_inputs(32, num_points=2, batch=5, seed=4)
    feeds = {k: feeds[k] for k in OFFICIAL_DECODER_INPUTS}
    expected_masks, expected_iou = _torch_decode(fuse(tiny), feeds, has_box=True,
                                                 use_mask=False)
    masks, iou = dec.run(None, feeds)
    if single:
        best = expected_iou.argmax(1)
        expected_masks = expected_masks[np.arange(5), best][:, None]
        expected_iou = expected_iou[np.arange(5), best][:, None]
    assert masks.shape == (5, 1 if single else 4, 256, 256) and iou.shape == (5, masks.shape[1])
    np.testing.assert_allclose(masks, expected_masks, atol=DECODER_ATOL, rtol=0)
    np.testing.assert_allclose(iou, expected_iou, atol=1e-4, rtol=0)


def test_onnx_predictor_runs_official_names_graphs(tiny, official: dict) -> None:
    from effvit_sam.predictor import EfficientViTSamPredictor

    image = np.random.default_rng(5).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    ref = EfficientViTSamPredictor(tiny, fast=FastPathOptions.exact())
    ref.set_image(image)
    boxes = np.array([[2.0, 3.0, 30.0, 40.0], [10.0, 5.0, 38.0, 20.0], [0.0, 0.0, 20.0, 20.0]])
    four = onp.OnnxSamPredictor(official[False]["encoder_path"], official[False]["decoder_path"])
    four.set_image(image)
    for multimask in (True, False):
        _, scores, low = four.predict(boxes=boxes, multimask_output=multimask)
        _, ref_scores, ref_low = ref.predict(boxes=boxes, multimask_output=multimask)
        np.testing.assert_allclose(low, ref_low, atol=1e-3)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    with pytest.raises(ValueError, match="no mask_input"):
        four.predict(boxes=boxes[0], mask_input=np.zeros((1, 256, 256), np.float32))
    one = onp.OnnxSamPredictor(official[True]["encoder_path"], official[True]["decoder_path"])
    one.set_image(image)
    masks, scores, low = one.predict(boxes=boxes, multimask_output=False)
    assert masks.shape == (3, 1, 48, 40) and scores.shape == (3, 1)
    with pytest.raises(ValueError, match="multimask_output=False"):
        one.predict(boxes=boxes)


def test_single_mask_needs_official_names(tiny, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="official_names=True"):
        export_onnx(tiny, tmp_path, single_mask=True)


def test_geometry_numpy_core_matches_torch_functions() -> None:
    """The onnxruntime predictor's numpy transforms (geometry's numpy core) give the numbers of
    the torch functions the PyTorch predictor uses."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 61, 3), dtype=np.uint8)
    for size in (256, 512):
        np.testing.assert_allclose(geometry.preprocess_image_numpy(image, size),
                                   geometry.preprocess_image(image, size).numpy(), atol=1e-6)
    pts = rng.uniform(0, 60, (5, 2))
    np.testing.assert_allclose(onp.apply_coords(pts, (37, 61)),
                               geometry.apply_coords(torch.from_numpy(pts), (37, 61)).numpy(),
                               rtol=1e-6)
    low = rng.standard_normal((3, 256, 256)).astype(np.float32)
    for original in ((37, 61), (300, 200)):
        input_size = geometry.preprocess_shape(*original, 1024)
        expected = geometry.postprocess_masks(torch.from_numpy(low)[None], input_size,
                                              original)[0].numpy()
        np.testing.assert_allclose(geometry.postprocess_masks_numpy(low, input_size, original),
                                   expected, atol=1e-4)


def test_bilinear_matrix_hand_computed() -> None:
    # 2 -> 4 pixels, half-pixel centres: sources -0.25 (clamped 0), 0.25, 0.75, 1.25 (clamped).
    np.testing.assert_allclose(geometry._bilinear_matrix(2, 4),
                               [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])


def test_geometry_imports_without_torch() -> None:
    code = ("import sys, effvit_sam.geometry, effvit_sam.masks, effvit_sam.io; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_onnx_predictor_imports_without_torch() -> None:
    code = ("import sys, effvit_sam.export.onnx_predictor as p; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(p.OnnxSamPredictor)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("prompt", [
    {"points": [[20.0, 30.0]], "labels": [1]},
    {"points": [[20.0, 30.0], [50.0, 10.0]], "labels": [1, 0], "multimask_output": False},
    {"boxes": [5.0, 8.0, 55.0, 35.0]},
    {"points": [[30.0, 20.0]], "labels": [1], "boxes": [5.0, 8.0, 55.0, 35.0]},
    {"boxes": [[5.0, 8.0, 55.0, 35.0], [0.0, 0.0, 30.0, 30.0]]},
], ids=["point", "two-points-single-mask", "box", "point+box", "batched-boxes"])
def test_onnx_predictor_same_masks_as_torch_predictor(tiny, exported: dict, prompt: dict) -> None:
    from effvit_sam.predictor import EfficientViTSamPredictor

    image = np.random.default_rng(3).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    ours = onp.OnnxSamPredictor(exported["encoder_path"], exported["decoder_path"])
    ours.set_image(image)
    ref = EfficientViTSamPredictor(tiny, fast=FastPathOptions.exact())
    ref.set_image(image)
    masks, scores, low = ours.predict(**prompt)
    ref_masks, ref_scores, ref_low = ref.predict(**prompt)
    assert masks.shape == ref_masks.shape and masks.dtype == bool
    np.testing.assert_allclose(low, ref_low, atol=1e-3)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    assert (masks == ref_masks).mean() >= 0.9999
    # Random weights can give an all-on mask, so the upscaled logits are compared too.
    logits, _, _ = ours.predict(**prompt, return_logits=True)
    ref_logits, _, _ = ref.predict(**prompt, return_logits=True)
    assert logits.std() > 0
    np.testing.assert_allclose(logits, ref_logits, atol=1e-3)


def test_onnx_predictor_keeps_the_models_single_mask(tiny, exported: dict, tmp_path: Path) -> None:
    """The decoder graph records SamConfig.single_mask; a best_of_three model's single mask is the
    best-scored of its three, as in the PyTorch predictor, and SAM's token otherwise."""
    import dataclasses

    from effvit_sam.predictor import EfficientViTSamPredictor

    assert onnx.load(exported["decoder_path"]).metadata_props[0].value == "token"
    model = copy.deepcopy(tiny)
    model.config = dataclasses.replace(model.config, single_mask="best_of_three")
    paths = export_onnx(model, tmp_path)
    image = np.random.default_rng(5).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    ours = onp.OnnxSamPredictor(paths["encoder_path"], paths["decoder_path"])
    assert ours.single_mask_mode == "best_of_three"
    ours.set_image(image)
    ref = EfficientViTSamPredictor(model, fast=FastPathOptions.exact())
    ref.set_image(image)
    boxes = np.array([[5.0, 8.0, 55.0, 35.0], [0.0, 0.0, 30.0, 30.0], [20.0, 5.0, 60.0, 39.0]])
    _, scores, low = ours.predict(boxes=boxes, multimask_output=False)
    _, ref_scores, ref_low = ref.predict(boxes=boxes, multimask_output=False)
    _, three, _ = ours.predict(boxes=boxes, multimask_output=True)
    np.testing.assert_allclose(scores[:, 0], three.max(1), atol=1e-6)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    np.testing.assert_allclose(low, ref_low, atol=1e-3)


def test_onnx_predictor_errors(exported: dict) -> None:
    ours = onp.OnnxSamPredictor(exported["encoder_path"], exported["decoder_path"])
    with pytest.raises(RuntimeError, match="set_image"):
        ours.predict(points=[[1, 1]])
    ours.set_image(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="at least one prompt"):
        ours.predict()
    with pytest.raises(ValueError, match="points"):
        ours.predict(points=[1, 2, 3])
    with pytest.raises(ValueError, match="labels"):
        ours.predict(points=[[1, 1]], labels=[5])
    with pytest.raises(TypeError):
        ours.set_image(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(FileNotFoundError):
        onp.OnnxSamPredictor("missing.onnx", exported["decoder_path"])


def test_cli_writes_both_graphs(tmp_path: Path, capsys) -> None:
    assert main(["--model", "tiny", "--random-weights", "--out", str(tmp_path),
                 "--no-verify"]) == 0
    assert (tmp_path / "encoder.onnx").is_file() and (tmp_path / "decoder.onnx").is_file()
    out = capsys.readouterr().out
    assert "decoder_path" in out and "weights: random (--random-weights, seed 0" in out
    official = tmp_path / "official"
    assert main(["--model", "tiny", "--random-weights", "--out", str(official), "--no-verify",
                 "--official-names", "single-mask"]) == 0
    session = ort.InferenceSession(str(official / "decoder.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == OFFICIAL_DECODER_INPUTS
    assert session.get_outputs()[0].shape[1] == 1
