"""An onnxruntime predictor: numpy and PIL only at inference (importing it never imports torch).

``OnnxSamPredictor(encoder_path, decoder_path)`` runs the graphs written by
``effvit-sam export-onnx`` with the call shape of the PyTorch
:class:`~effvit_sam.predictor.EfficientViTSamPredictor`::

    predictor = OnnxSamPredictor("out/encoder.onnx", "out/decoder.onnx")
    predictor.set_image(image)                       # H x W x 3 uint8 RGB
    masks, scores, low_res = predictor.predict(points=[[120, 80]], labels=[1])

The resize/normalise/pad and the prompt and mask transforms are :mod:`effvit_sam.geometry`'s
numpy core (which imports no torch); ``tests/test_export_onnx.py`` checks that they give the same
numbers as the torch functions the PyTorch predictor uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import geometry
from ..geometry import LOW_RES_MASK_SIZE, PROMPT_FRAME

MASK_THRESHOLD = 0.0


def apply_coords(coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """``... x 2`` (x, y) original-frame pixels to the 1024 prompt frame, as float32."""
    return geometry.apply_coords(coords, original_size).astype(np.float32)


class OnnxSamPredictor:
    """Encode an image once with ``encoder.onnx``, decode prompts with ``decoder.onnx``.

    ``providers`` are onnxruntime execution providers (default: CPU); ``threads`` the intra-op
    thread count of both sessions (default: onnxruntime's choice).
    """

    def __init__(self, encoder_path: str | Path, decoder_path: str | Path, *,
                 providers: list[str] | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        for path in (encoder_path, decoder_path):
            if not Path(path).is_file():
                raise FileNotFoundError(f"ONNX graph not found: {path}")
        providers = providers or ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.encoder = ort.InferenceSession(str(encoder_path), sess_options=options,
                                            providers=providers)
        self.decoder = ort.InferenceSession(str(decoder_path), sess_options=options,
                                            providers=providers)
        size = self.encoder.get_inputs()[0].shape[-1]
        if not isinstance(size, int):
            raise ValueError(f"{encoder_path} has no fixed input size (got {size!r})")
        self.encoder_size = size
        self.mask_threshold = MASK_THRESHOLD
        self.features: np.ndarray | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray) -> None:
        """Encode one ``H x W x 3`` uint8 RGB image (``H x W`` grayscale is replicated)."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise TypeError("image must be a uint8 numpy array (H x W x 3, RGB)")
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ValueError(f"image must be H x W x 3, got shape {image.shape}")
        image = np.ascontiguousarray(image)
        x = geometry.preprocess_image_numpy(image, self.encoder_size)
        self.features = self.encoder.run(None, {"images": x})[0]
        self.original_size = (int(image.shape[0]), int(image.shape[1]))
        self.input_size = geometry.preprocess_shape(*self.original_size, PROMPT_FRAME)

    def predict(self, points=None, labels=None, boxes=None, mask_input=None,
                multimask_output: bool = True,
                return_logits: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt set, or B sets (``B x N x 2`` points / ``B x 4`` boxes).

        points: ``N x 2`` (x, y) original-image pixels; labels ``N`` (1 fg, 0 bg; default 1).
        boxes: ``4`` XYXY pixels. mask_input: ``1 x 256 x 256`` logits. Returns
        ``(masks C x H x W, scores C, low_res_logits C x 256 x 256)``, C = 3 with
        ``multimask_output`` else 1 (a leading B axis for batched prompts), like the PyTorch
        predictor.
        """
        if self.features is None:
            raise RuntimeError("no image is set: call set_image(image) before predict")
        if points is None and boxes is None and mask_input is None:
            raise ValueError("give at least one prompt: points, boxes or mask_input")
        if points is None and labels is not None:
            raise ValueError("labels given without points")
        pts = None if points is None else np.asarray(points, dtype=np.float64)
        lbl = None
        if pts is not None:
            if pts.ndim not in (2, 3) or pts.shape[-1] != 2:
                raise ValueError(f"points must be N x 2 or B x N x 2, got shape {pts.shape}")
            lbl = np.ones(pts.shape[:-1]) if labels is None else np.asarray(labels, np.float64)
            if lbl.shape != pts.shape[:-1] or not np.isin(lbl, (0, 1)).all():
                raise ValueError(f"labels must be 0/1 with shape {pts.shape[:-1]}, got {lbl}")
        box = None if boxes is None else np.asarray(boxes, dtype=np.float64)
        if box is not None and (box.shape[-1] != 4 or box.ndim not in (1, 2)):
            raise ValueError(f"boxes must be 4 or B x 4 XYXY, got shape {box.shape}")
        mask = None if mask_input is None else np.asarray(mask_input, dtype=np.float32)
        if mask is not None and mask.shape[-3:] != (1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE):
            raise ValueError(f"mask_input must be 1 x 256 x 256 logits, got {mask.shape}")
        batched = (pts is not None and pts.ndim == 3) or (box is not None and box.ndim == 2) \
            or (mask is not None and mask.ndim == 4)
        if not batched:
            return self._predict_one(pts, lbl, box, mask, multimask_output, return_logits)
        sizes = {len(a) for a, batch_ndim in ((pts, 3), (box, 2), (mask, 4))
                 if a is not None and a.ndim == batch_ndim}
        if len(sizes) != 1:
            raise ValueError(f"batched prompts disagree on the batch size: {sorted(sizes)}")
        results = [self._predict_one(
            None if pts is None else (pts[i] if pts.ndim == 3 else pts),
            None if lbl is None else (lbl[i] if lbl.ndim == 2 else lbl),
            None if box is None else (box[i] if box.ndim == 2 else box),
            None if mask is None else (mask[i] if mask.ndim == 4 else mask),
            multimask_output, return_logits) for i in range(sizes.pop())]
        return tuple(np.stack(parts) for parts in zip(*results, strict=True))

    def _predict_one(self, pts, lbl, box, mask, multimask_output: bool,
                     return_logits: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        coords, labels = [], []
        if pts is not None:
            coords.append(pts)
            labels.append(lbl)
        if box is not None:
            # A box is two corner points with labels 2 (top-left) and 3 (bottom-right).
            coords.append(box.reshape(2, 2))
            labels.append(np.array([2.0, 3.0]))
        else:
            # SAM pads point-only prompts with one "not a point" (label -1).
            coords.append(np.zeros((1, 2)))
            labels.append(np.array([-1.0]))
        point_coords = np.concatenate(coords)
        n_user = len(point_coords) - (0 if box is not None else 1)
        point_coords[:n_user] = apply_coords(point_coords[:n_user], self.original_size)
        feeds = {
            "image_embeddings": self.features,
            "point_coords": point_coords[None].astype(np.float32),
            "point_labels": np.concatenate(labels)[None].astype(np.float32),
            "mask_input": np.zeros((1, 1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE), np.float32)
            if mask is None else mask[None],
            "has_mask_input": np.array([0.0 if mask is None else 1.0], dtype=np.float32),
        }
        low_res, iou = self.decoder.run(None, feeds)
        # Mask 0 is the single-mask output, 1..3 the multimask outputs (MaskDecoder.forward).
        pick = slice(1, None) if multimask_output else slice(0, 1)
        low_res, iou = low_res[0, pick], iou[0, pick]
        masks = geometry.postprocess_masks_numpy(low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou, low_res
