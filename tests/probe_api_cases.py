"""The Python API cases of :mod:`tests.probe_bad_inputs`: snippets run in one namespace
(:func:`namespace`) with a tiny random model, a predictor with an image set, and the bad files
of :mod:`tests.probe_files` (names relative to the working folder)."""

from __future__ import annotations

from pathlib import Path

from tests.probe_bad_inputs import api

PRED = "predictor.predict"
AMG = "SamAutomaticMaskGenerator(model, "


def namespace(workdir: Path) -> dict:
    """The names the snippets use (and ``workdir/wide.png``, a 10000 x 1 picture)."""
    import numpy as np
    import torch
    from PIL import Image

    from demo.upload import read_upload
    from distill.config import load_config
    from effvit_sam import (
        EfficientViTSamAutomaticMaskGenerator,
        EfficientViTSamPredictor,
        FastPathOptions,
        build_sam,
        from_pretrained,
        geometry,
        load_checkpoint,
        masks,
        save_pretrained,
    )
    from effvit_sam.io import read_image, read_json

    Image.new("RGB", (10000, 1), (1, 2, 3)).save(workdir / "wide.png")
    model = build_sam("efficientvit-sam-tiny").eval()
    predictor = EfficientViTSamPredictor(model)
    image = np.zeros((90, 120, 3), np.uint8)
    predictor.set_image(image)
    fresh = EfficientViTSamPredictor(model)
    return {"np": np, "torch": torch, "model": model, "predictor": predictor, "fresh": fresh,
            "image": image, "SamPredictor": EfficientViTSamPredictor,
            "SamAutomaticMaskGenerator": EfficientViTSamAutomaticMaskGenerator,
            "FastPathOptions": FastPathOptions, "build_sam": build_sam,
            "from_pretrained": from_pretrained, "load_checkpoint": load_checkpoint,
            "save_pretrained": save_pretrained, "masks": masks, "geometry": geometry,
            "read_image": read_image, "read_json": read_json, "read_upload": read_upload,
            "load_config": load_config}


PREDICTOR = [
    api("predictor", "predict before set_image", "fresh.predict(points=[[3, 3]])", "set_image"),
    api("predictor", 'multimask_output="no"',
        f'{PRED}(points=[[3, 3]], multimask_output="no")', "multimask_output"),
    api("predictor", "return_logits=0.5", f"{PRED}(points=[[3, 3]], return_logits=0.5)",
        "return_logits"),
    api("predictor", "points N x 3", f"{PRED}(points=[[3, 3, 1]])", "points"),
    api("predictor", "labels of another length", f"{PRED}(points=[[3, 3]], labels=[1, 0])",
        "labels"),
    api("predictor", "labels without points", f"{PRED}(labels=[1])", "labels", "points"),
    api("predictor", "label 7", f"{PRED}(points=[[3, 3]], labels=[7])", "label"),
    api("predictor", "NaN point", f"{PRED}(points=[[float('nan'), 3]])", "point"),
    api("predictor", "point outside the image", f"{PRED}(points=[[500, 3]])", "point",
        "outside"),
    api("predictor", "box of 3 numbers", f"{PRED}(boxes=[1, 2, 3])", "box"),
    api("predictor", "box with x1 < x0", f"{PRED}(boxes=[50, 50, 10, 10])", "box"),
    api("predictor", "mask_input 1 x 64 x 64", f"{PRED}(mask_input=np.zeros((1, 64, 64)))",
        "mask_input"),
    api("predictor", "no prompt at all", f"{PRED}()", "prompt"),
    api("predictor", "batched prompts of different sizes",
        f"{PRED}(points=np.zeros((2, 1, 2)), boxes=np.zeros((3, 4)) + [0, 0, 5, 5])",
        "batch size"),
    api("predictor", "image of 4 dimensions", "predictor.set_image(np.zeros((1, 9, 9, 3), "
        "np.uint8))", "image"),
    api("predictor", "float image", "predictor.set_image(np.random.rand(9, 9, 3))", "image"),
    api("predictor", 'image_format="BGRX"', 'predictor.set_image(image, image_format="BGRX")',
        "image_format"),
    api("predictor", "set_images of an empty list", "predictor.set_images([])", "set_images"),
    api("predictor", "predictor of a string", 'SamPredictor("l0")', "model"),
    api("predictor", "device 'gpu'", 'SamPredictor(model, device="gpu")', "gpu"),
    api("predictor", "set_torch_image of the wrong shape",
        "predictor.set_torch_image(torch.zeros(1, 3, 64, 64), (64, 64))", "transformed_image"),
    api("predictor", "predict_batch prompt with an unknown key",
        "predictor.set_image(image)\npredictor.predict_batch([{'point': [[3, 3]]}])",
        "unknown keys", "point"),
]

AUTOMATIC = [
    api("automatic", "pred_iou_thresh=NaN", f'{AMG}pred_iou_thresh=float("nan"))',
        "pred_iou_thresh"),
    api("automatic", "stability_score_thresh=NaN", f'{AMG}stability_score_thresh=float("nan"))',
        "stability_score_thresh"),
    api("automatic", "box_nms_thresh=1.5", f"{AMG}box_nms_thresh=1.5)", "box_nms_thresh"),
    api("automatic", "points_per_side=0", f"{AMG}points_per_side=0)", "points_per_side"),
    api("automatic", "points_per_side=2.5", f"{AMG}points_per_side=2.5)", "points_per_side"),
    api("automatic", "neither points_per_side nor point_grids", f"{AMG}points_per_side=None)",
        "points_per_side", "point_grids"),
    api("automatic", "output_mode='polygons'", f"{AMG}output_mode='polygons')", "output_mode"),
    api("automatic", "crop_n_layers=-1", f"{AMG}crop_n_layers=-1)", "crop_n_layers"),
    api("automatic", "min_mask_region_area=inf", f"{AMG}min_mask_region_area=float('inf'))",
        "min_mask_region_area"),
    api("automatic", "misspelt keyword pred_iou_tresh", f"{AMG}pred_iou_tresh=0.5)",
        "pred_iou_tresh"),
    api("automatic", "point grid outside [0, 1]",
        f"{AMG}points_per_side=None, point_grids=[np.array([[2.0, 0.5]])])", "grid"),
    api("automatic", "generate on a 2 x 2 x 2 array",
        f"{AMG}points_per_side=2).generate(np.zeros((2, 2, 2), np.uint8))", "image"),
]

LOADING = [
    api("loading", "build_sam('l7')", 'build_sam("l7")', "'l7'", "efficientvit-sam-l0"),
    api("loading", "build_sam with a missing checkpoint",
        'build_sam("efficientvit-sam-tiny", checkpoint="/missing.pt")', "/missing.pt"),
    api("loading", "build_sam, checkpoint of another variant",
        'build_sam("efficientvit-sam-mini", checkpoint="tiny.pt")', "tiny.pt", "tiny"),
    api("loading", "build_sam, non-finite checkpoint",
        'build_sam("efficientvit-sam-tiny", checkpoint="nan.pt")', "nan.pt", "finite"),
    api("loading", "build_sam, misspelt keyword", 'build_sam("efficientvit-sam-tiny", '
        'chekpoint="tiny.pt")', "chekpoint"),
    api("loading", "from_pretrained of a missing local folder", 'from_pretrained("/missing/dir")',
        "/missing/dir"),
    api("loading", "from_pretrained, malformed config.json", 'from_pretrained("badcfg")',
        "config.json"),
    api("loading", "from_pretrained, config.json of another variant",
        'from_pretrained("othercfg")', "othercfg", "does not fit"),
    api("loading", "from_pretrained, config.json with an unknown key",
        'from_pretrained("typocfg")', "typocfg", "widht"),
    api("loading", "from_pretrained of a weights file", 'from_pretrained("tiny.pt")', "tiny.pt"),
    api("loading", "from_pretrained of an unknown name, offline",
        'from_pretrained("no-such-model", local_files_only=True)', "no-such-model"),
    api("loading", "load_checkpoint missing keys", 'load_checkpoint(model, "partial.pt")',
        "partial.pt", "does not fit"),
    api("loading", "load_checkpoint pickle payload", 'load_checkpoint(model, "pickled.pt")',
        "pickled.pt"),
    api("loading", "save_pretrained onto a file", 'save_pretrained(model, "a_file")', "a_file"),
    api("loading", "FastPathOptions misspelt field", "FastPathOptions(chanels_last=True)",
        "chanels_last"),
    api("loading", "ONNX predictor of missing graphs",
        "from effvit_sam.export.onnx_predictor import OnnxSamPredictor\n"
        'OnnxSamPredictor("nope/encoder.onnx", "nope/decoder.onnx")', "encoder.onnx"),
    api("loading", "load_config unknown --set key",
        'load_config("smoke_phase1", ["train.lrr=1"])', "lrr"),
]

DATA = [
    api("masks", "RLE too short for its size",
        'masks.rle_to_mask({"size": [128, 128], "counts": "0"})', "counts"),
    api("masks", "RLE counts that are garbage",
        'masks.rle_to_mask({"size": [8, 8], "counts": "ab~~"})', "counts"),
    api("masks", "RLE of a negative size", 'masks.validate_rle({"size": [-1, 5], "counts": [5]})',
        "size"),
    api("masks", "RLE counts of floats", 'masks.validate_rle({"size": [2, 2], "counts": 4.0})',
        "counts"),
    api("masks", "RLE of another size than the image",
        'masks.validate_rle({"size": [2, 2], "counts": [4]}, 3, 3)', "size"),
    api("masks", "polygon of 5 numbers", "masks.segmentation_to_rle([[1, 2, 3, 4, 5]], 9, 9)",
        "polygon"),
    api("masks", "polygon with NaN",
        "masks.segmentation_to_rle([[1, 2, float('nan'), 4, 5, 6]], 9, 9)", "polygon"),
    api("masks", "segmentation of a string", 'masks.segmentation_to_rle("abc", 9, 9)',
        "segmentation"),
    api("masks", "mask_to_rle of a 3-D array", "masks.mask_to_rle(np.zeros((2, 3, 4), bool))",
        "mask"),
    api("io", "read_image of a text file", 'read_image("garbage.png")', "garbage.png"),
    api("io", "read_image of no bytes", 'read_image(b"")', "image"),
    api("io", "read_image of a PNG claiming 40000x40000", 'read_image("bomb.png")', "bomb.png"),
    api("io", "read_image of a missing file", 'read_image("none.png")', "none.png"),
    api("io", "read_json of a malformed file", 'read_json("coco/bad_ann.json")', "bad_ann.json"),
    api("geometry", "resize to a long side of 0", "geometry.resize_longest_side(image, 0)",
        "long_side"),
    api("geometry", "preprocess_shape of a 0 x 10 image", "geometry.preprocess_shape(0, 10, 1024)",
        "0x10"),
    api("demo upload", "upload that is not an image",
        'read_upload("garbage.png", name="cat.png")', "cat.png", "not an image"),
    api("demo upload", "upload of 10000 x 1 px", 'read_upload("wide.png", name="wide.png")',
        "wide.png", "thin"),
    api("demo upload", "upload claiming 40000 x 40000 px",
        'read_upload("bomb.png", name="bomb.png")', "bomb.png", "large"),
    api("demo upload", "upload claiming 12000 x 12000 px, over 25 Mpx",
        'read_upload("huge.png", name="huge.png")', "huge.png", "pixels"),
    api("demo upload", "upload of a truncated JPEG",
        'read_upload("truncated.jpg", name="t.jpg")', "t.jpg"),
]

API_CASES = [*PREDICTOR, *AUTOMATIC, *LOADING, *DATA]
