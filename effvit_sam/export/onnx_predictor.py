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
from ..predictor_inputs import PromptBatch, as_flag, as_prompt_batch, as_rgb_image

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
        self._encoder_input = self.encoder.get_inputs()[0].name
        # Graphs with the official EfficientViT-SAM export's names take no mask input, and with
        # its --return-single-mask give one mask per prompt instead of SAM's four.
        names = [i.name for i in self.decoder.get_inputs()]
        self._official = "mask_input" not in names
        self._single_mask = self.decoder.get_outputs()[0].shape[1] == 1
        # The model's single mask (SamConfig.single_mask, in the graph's metadata since it was
        # recorded there): SAM's first mask token, or the best-scored of the three.
        meta = self.decoder.get_modelmeta().custom_metadata_map
        self.single_mask_mode = meta.get("single_mask", "token")
        self.mask_threshold = MASK_THRESHOLD
        self.features: np.ndarray | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def set_image(self, image, image_format: str = "RGB") -> None:
        """Encode one image, with the PyTorch predictor's rules
        (:func:`effvit_sam.predictor_inputs.as_rgb_image`: ``H x W x 3`` uint8 or PIL; greyscale
        replicated, alpha dropped, ``image_format="BGR"`` for OpenCV arrays)."""
        image = as_rgb_image(image, image_format)
        x = geometry.preprocess_image_numpy(image, self.encoder_size)
        self.features = self.encoder.run(None, {self._encoder_input: x})[0]
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
        multimask_output = as_flag(multimask_output, "multimask_output")
        return_logits = as_flag(return_logits, "return_logits")
        # the PyTorch predictor's validation: shapes, finite values, inside the image, one batch
        prompts = as_prompt_batch(points, labels, boxes, mask_input, self.original_size)
        if prompts.mask_input is not None and self._official:
            raise ValueError("this decoder graph (official EfficientViT-SAM names) takes no "
                             "mask_input")
        out = self._decode(prompts, multimask_output, return_logits)
        return out if prompts.batched else tuple(x[0] for x in out)

    def _decode(self, prompts: PromptBatch, multimask_output: bool,
                return_logits: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All B prompt sets in one decoder call."""
        b, mask = prompts.size, prompts.mask_input
        coords, labels = [], []
        if prompts.points is not None:
            coords.append(apply_coords(prompts.points, self.original_size))
            labels.append(prompts.labels)
        if prompts.boxes is not None:
            # A box is two corner points with labels 2 (top-left) and 3 (bottom-right).
            coords.append(apply_coords(prompts.boxes.reshape(b, 2, 2), self.original_size))
            labels.append(np.broadcast_to(np.array([2.0, 3.0]), (b, 2)))
        else:
            # SAM pads point-only prompts with one "not a point" (label -1).
            coords.append(np.zeros((b, 1, 2)))
            labels.append(-np.ones((b, 1)))
        feeds = {
            "image_embeddings": self.features,
            "point_coords": np.concatenate(coords, 1).astype(np.float32),
            "point_labels": np.concatenate(labels, 1).astype(np.float32),
        }
        if not self._official:
            side = LOW_RES_MASK_SIZE
            feeds["mask_input"] = np.zeros((1, 1, side, side), np.float32) if mask is None \
                else np.ascontiguousarray(mask[:1] if mask.strides[0] == 0 else mask)
            feeds["has_mask_input"] = np.array([0.0 if mask is None else 1.0], np.float32)
        low_res, iou = self.decoder.run(None, feeds)
        if self._single_mask:
            if multimask_output:
                raise ValueError("this decoder graph returns one mask per prompt (exported with "
                                 "single-mask output): pass multimask_output=False")
        elif not multimask_output and self.single_mask_mode == "best_of_three":
            rows, best = np.arange(len(iou)), 1 + iou[:, 1:].argmax(1)
            low_res, iou = low_res[rows, best][:, None], iou[rows, best][:, None]
        else:
            # Mask 0 is the single-mask output, 1..3 the multimask outputs (MaskDecoder.forward).
            pick = slice(1, None) if multimask_output else slice(0, 1)
            low_res, iou = low_res[:, pick], iou[:, pick]
        masks = np.stack([geometry.postprocess_masks_numpy(m, self.input_size,
                                                           self.original_size) for m in low_res])
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou, low_res
