"""``EfficientViTSamPredictor``: encode an image once, then decode many prompts against it.

One API for the students (every EfficientViT-SAM variant) and the teachers (``segment_anything``
``Sam`` models): prompts are given in original-image pixels and mapped to the model's prompt
frame (SAM's 1024 frame) through :mod:`effvit_sam.geometry`; masks come back in the original
frame. Input rules (image formats, point/box/label/mask checks) are in
:mod:`effvit_sam.predictor_inputs`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from segment_anything.modeling import Sam
from torch import nn

from . import geometry
from .inference import FastPathOptions, mask_upscale, optimize_for_inference
from .modeling import EfficientViTSam
from .predictor_inputs import as_flag, as_prompt_batch, as_rgb_image

logger = logging.getLogger(__name__)

Prediction = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(masks, scores, low_res_logits)`` as numpy arrays (shapes in :meth:`predict`)."""

_PROMPT_KEYS = frozenset({"points", "labels", "boxes", "mask_input", "point_coords",
                          "point_labels", "box", "multimask_output", "return_logits"})
_UPSCALE_ELEMENTS = 1 << 26
"""Full-resolution logits upscaled at once at most (256 MB of float32): bounded memory."""


class ImageNotSetError(RuntimeError, ValueError):
    """Prediction asked for before ``set_image``. A RuntimeError like SamPredictor's (code
    written for SAM keeps working) and a ValueError like every other input error here."""


@dataclass(frozen=True)
class EncodedImage:
    """One encoded image: ``features`` 1 x C x 64 x 64, sizes as ``(h, w)``.

    ``input_size`` is the image's size in the prompt frame (long side 1024).
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


def _pick(name: str, value, sam_name: str, sam_value):
    if value is not None and sam_value is not None:
        raise ValueError(f"give either {name}= or {sam_name}=, not both")
    return value if value is not None else sam_value


class EfficientViTSamPredictor:
    """Predict masks from points, boxes and low-res masks for an image encoded once.

    ``model`` is an :class:`EfficientViTSam` (any variant) or a ``segment_anything`` ``Sam``. It is
    put in eval mode and moved to ``device`` (default: the model's device); all work runs under
    :func:`torch.inference_mode`. With ``fast`` (the default) an EfficientViTSam is replaced by
    :func:`effvit_sam.inference.optimize_for_inference`'s copy with ``FastPathOptions.auto``
    (float32 within 1e-3 of eager; a bf16 encoder on AMX / AVX512-BF16 CPUs, masks >= 99.5%
    equal); a ``FastPathOptions`` (e.g. ``FastPathOptions.exact()``) picks the options;
    ``fast=False`` runs the model as given. SAM models always run as given.
    """

    def __init__(self, model: nn.Module, *, device: str | torch.device | None = None,
                 fast: bool | FastPathOptions = True) -> None:
        if not isinstance(model, (EfficientViTSam, Sam)):
            raise TypeError("model must be an EfficientViTSam or a segment_anything Sam, got "
                            f"{type(model).__name__}")
        try:
            self.device = torch.device(device) if device is not None else \
                next(model.parameters()).device
        except RuntimeError:  # torch's message lists every backend, not the bad value
            raise ValueError(f"device {device!r} is not a torch device (e.g. cpu, cuda, "
                             "cuda:1)") from None
        options = fast if isinstance(fast, FastPathOptions) else None
        if options is None and not isinstance(fast, bool | np.bool_):
            raise TypeError(f"fast must be True, False or a FastPathOptions, got {fast!r}")
        self.fast = bool(fast) and isinstance(model, EfficientViTSam)
        if self.fast:
            model = optimize_for_inference(model.eval(), device=self.device, options=options)
        self.model = model.to(self.device).eval()
        self.encoder_size = int(model.image_encoder.img_size)
        # The frame of points, boxes and mask post-processing: 1024 for every EfficientViT-SAM
        # variant (also the L models whose encoder sees 512) and for SAM.
        self.prompt_frame = int(model.prompt_encoder.input_image_size[0])
        self.mask_threshold = float(getattr(model, "mask_threshold", 0.0))
        config = getattr(model, "config", None)  # what multimask_output=False returns
        self.single_mask = config.single_mask if config is not None else "token"
        self._images: list[EncodedImage] = []

    # -- image state -------------------------------------------------------------------------

    @property
    def is_image_set(self) -> bool:
        return bool(self._images)

    @property
    def images(self) -> list[EncodedImage]:
        """Every image set by :meth:`set_image` / :meth:`set_images`, in order."""
        return list(self._images)

    def _single(self) -> EncodedImage:
        if not self._images:
            raise ImageNotSetError("no image is set: call set_image(...) before predicting")
        if len(self._images) > 1:
            raise ValueError(f"{len(self._images)} images are set (set_images); use "
                             "predict_batch, or set_image for a single image")
        return self._images[0]

    @property
    def features(self) -> torch.Tensor | None:
        """Embeddings ``B x C x 64 x 64`` of the images set (None when none is set)."""
        if not self._images:
            return None
        return torch.cat([im.features for im in self._images])

    @property
    def original_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the image set with :meth:`set_image`."""
        return self._single().original_size if self._images else None

    @property
    def input_size(self) -> tuple[int, int] | None:
        """``(h, w)`` of the image set, in the prompt frame (long side 1024)."""
        return self._single().input_size if self._images else None

    def reset_image(self) -> None:
        self._images = []

    def get_image_embedding(self) -> torch.Tensor:
        """The ``1 x C x 64 x 64`` embedding of the image set with :meth:`set_image`."""
        return self._single().features

    def _encoder_input(self, image: np.ndarray) -> torch.Tensor:
        """``H x W x 3`` uint8 RGB to the model's ``1 x 3 x S x S`` normalised, padded input."""
        if isinstance(self.model, Sam):
            # SAM normalises 0..255 values with its own buffers; geometry.preprocess_image
            # normalises in [0, 1] (the official EfficientViT arithmetic), which differs from
            # SAM's by ~2e-7. Same resize, SAM's own arithmetic: bit-exact with SamPredictor.
            resized = geometry.resize_longest_side(image, self.encoder_size)
            x = torch.as_tensor(np.array(resized), device=self.device).permute(2, 0, 1)[None]
            return self.model.preprocess(x)
        return geometry.preprocess_image(image, self.encoder_size).to(self.device)

    @torch.inference_mode()
    def _encode(self, inputs: torch.Tensor, sizes: list[tuple[int, int]]) -> None:
        features = self.model.image_encoder(inputs.to(self.device))
        self._images = [
            EncodedImage(features[i: i + 1], size,
                         geometry.preprocess_shape(*size, self.prompt_frame))
            for i, size in enumerate(sizes)
        ]

    def set_image(self, image: np.ndarray | Image.Image, image_format: str = "RGB") -> None:
        """Encode one image: ``H x W x 3`` uint8 (or grayscale / RGBA, see predictor_inputs)."""
        self.set_images([image], image_format=image_format)

    def set_images(self, images: list[np.ndarray | Image.Image], image_format: str = "RGB") -> None:
        """Encode several images (any sizes) in ONE batched encoder call; see predict_batch."""
        if isinstance(images, (np.ndarray, Image.Image)) or not len(images):
            raise TypeError("set_images takes a non-empty list of images")
        self.reset_image()
        arrays = [as_rgb_image(im, image_format) for im in images]
        inputs = torch.cat([self._encoder_input(a) for a in arrays])
        self._encode(inputs, [a.shape[:2] for a in arrays])

    def set_torch_image(self, transformed_image: torch.Tensor,
                        original_image_size: tuple[int, int]) -> None:
        """Encode an already preprocessed ``1 x 3 x S x S`` image (normalised and zero-padded,
        as :func:`geometry.preprocess_image` returns it; S = the encoder size).

        Unlike SamPredictor, this takes the final encoder input, not the un-normalised resize.
        """
        s = self.encoder_size
        if not isinstance(transformed_image, torch.Tensor):
            raise TypeError("transformed_image must be a torch tensor")
        if tuple(transformed_image.shape) != (1, 3, s, s):
            raise ValueError(f"transformed_image must be the 1 x 3 x {s} x {s} normalised, padded "
                             f"encoder input, got shape {tuple(transformed_image.shape)}")
        h, w = (int(v) for v in original_image_size)
        if h <= 0 or w <= 0:
            raise ValueError(f"original_image_size must be positive (H, W), got {(h, w)}")
        self.reset_image()
        self._encode(transformed_image.float(), [(h, w)])

    # -- prediction --------------------------------------------------------------------------

    def predict(self, points=None, labels=None, boxes=None, mask_input=None,
                multimask_output: bool = True, return_logits: bool = False, *,
                point_coords=None, point_labels=None, box=None) -> Prediction:
        """Masks for one prompt set, or for B sets in one decoder call.

        points: ``N x 2`` (x, y) in original-image pixels, or ``B x N x 2``; labels ``N`` /
        ``B x N`` (1 foreground, 0 background; default all 1). boxes: XYXY pixels, ``4`` or
        ``B x 4``.
        mask_input: ``1 x 256 x 256`` or ``B x 1 x 256 x 256`` logits. SAM's keywords
        ``point_coords``, ``point_labels``, ``box`` are accepted too. A single (un-batched) point
        set or box is shared by every prompt of a batch.

        Returns numpy ``(masks C x H x W, scores C, low_res_logits C x 256 x 256)`` for one set,
        ``(B x C x H x W, B x C, B x C x 256 x 256)`` when any prompt is batched (a 2-D boxes
        array, 3-D points or 4-D mask_input). C is 3 with ``multimask_output``, else 1 (the
        model's single mask: :meth:`decode_low_res`); masks are bool, or float logits with
        ``return_logits``.
        """
        image = self._single()
        return self._predict(image, _pick("points", points, "point_coords", point_coords),
                             _pick("labels", labels, "point_labels", point_labels),
                             _pick("boxes", boxes, "box", box), mask_input,
                             multimask_output=multimask_output, return_logits=return_logits)

    def predict_batch(self, prompts: list[dict], *, multimask_output: bool = True,
                      return_logits: bool = False) -> list[Prediction]:
        """One :meth:`predict` per image set by :meth:`set_images`, ``prompts[i]`` for image i.

        Each dict takes :meth:`predict`'s keywords (``points``, ``labels``, ``boxes``,
        ``mask_input`` or SAM's names, optionally its own ``multimask_output`` /
        ``return_logits``). Returns one ``(masks, scores, low_res_logits)`` per image.
        """
        if not self._images:
            raise ImageNotSetError("no image is set: call set_images([...]) before predict_batch")
        if len(prompts) != len(self._images):
            raise ValueError(f"{len(prompts)} prompt dicts for {len(self._images)} images set")
        as_flag(multimask_output, "multimask_output")
        as_flag(return_logits, "return_logits")
        results = []
        for i, (image, prompt) in enumerate(zip(self._images, prompts, strict=True)):
            if not isinstance(prompt, dict):
                raise TypeError(f"prompts[{i}] must be a dict, got {type(prompt).__name__}")
            unknown = set(prompt) - _PROMPT_KEYS
            if unknown:
                raise ValueError(f"prompts[{i}] has unknown keys {sorted(unknown)}; valid: "
                                 f"{sorted(_PROMPT_KEYS)}")
            g = prompt.get
            results.append(self._predict(
                image, _pick("points", g("points"), "point_coords", g("point_coords")),
                _pick("labels", g("labels"), "point_labels", g("point_labels")),
                _pick("boxes", g("boxes"), "box", g("box")), g("mask_input"),
                multimask_output=as_flag(g("multimask_output", multimask_output),
                                         f"prompts[{i}]['multimask_output']"),
                return_logits=as_flag(g("return_logits", return_logits),
                                      f"prompts[{i}]['return_logits']")))
        return results

    def _predict(self, image: EncodedImage, points, labels, boxes, mask_input, *,
                 multimask_output: bool, return_logits: bool) -> Prediction:
        multimask_output = as_flag(multimask_output, "multimask_output")
        return_logits = as_flag(return_logits, "return_logits")
        prompts = as_prompt_batch(points, labels, boxes, mask_input, image.original_size)

        def tensor(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.array(x), dtype=dtype, device=self.device)

        coords = labels_t = boxes_t = mask_t = None
        if prompts.points is not None:
            coords = tensor(geometry.apply_coords(prompts.points, image.original_size,
                                                  self.prompt_frame), torch.float)
            labels_t = tensor(prompts.labels, torch.int)
        if prompts.boxes is not None:
            boxes_t = tensor(geometry.apply_boxes(prompts.boxes, image.original_size,
                                                  self.prompt_frame), torch.float)
        if prompts.mask_input is not None:
            mask_t = tensor(prompts.mask_input, torch.float)
        masks, scores, low_res = self._predict_torch(image, coords, labels_t, boxes_t, mask_t,
                                                     multimask_output, return_logits)
        # float32 out also under a caller's autocast (numpy has no bfloat16)
        out = tuple((t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).cpu().numpy()
                    for t in (masks, scores, low_res))
        return out if prompts.batched else tuple(x[0] for x in out)

    def predict_torch(self, point_coords: torch.Tensor | None, point_labels: torch.Tensor | None,
                      boxes: torch.Tensor | None = None, mask_input: torch.Tensor | None = None,
                      multimask_output: bool = True, return_logits: bool = False,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched tensors already in the prompt frame, like ``SamPredictor.predict_torch``.

        point_coords ``B x N x 2`` (x, y), point_labels ``B x N`` (SAM's labels: 1, 0, -1 padding,
        2/3 box corners), boxes ``B x 4`` XYXY, mask_input ``B x 1 x 256 x 256``. Returns tensors
        on the predictor's device: masks ``B x C x H x W`` (original frame), scores ``B x C``,
        low-res logits ``B x C x 256 x 256``.
        """
        image = self._single()
        multimask_output = as_flag(multimask_output, "multimask_output")
        return_logits = as_flag(return_logits, "return_logits")
        sizes = {}
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords")
            if point_coords.ndim != 3 or point_coords.shape[-1] != 2:
                raise ValueError(f"point_coords must be B x N x 2, got {tuple(point_coords.shape)}")
            if tuple(point_labels.shape) != tuple(point_coords.shape[:2]):
                raise ValueError(f"point_labels must be {tuple(point_coords.shape[:2])}, got "
                                 f"{tuple(point_labels.shape)}")
            sizes["point_coords"] = point_coords.shape[0]
        if boxes is not None:
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"boxes must be B x 4 XYXY, got {tuple(boxes.shape)}")
            sizes["boxes"] = boxes.shape[0]
        if mask_input is not None:
            side = geometry.LOW_RES_MASK_SIZE
            if mask_input.ndim != 4 or tuple(mask_input.shape[1:]) != (1, side, side):
                raise ValueError(f"mask_input must be B x 1 x {side} x {side}, got "
                                 f"{tuple(mask_input.shape)}")
            sizes["mask_input"] = mask_input.shape[0]
        if not sizes:
            raise ValueError("give at least one prompt: point_coords, boxes or mask_input")
        if len(set(sizes.values())) > 1:
            raise ValueError(f"prompt batch sizes disagree: {sizes}")
        return self._predict_torch(image, point_coords, point_labels, boxes, mask_input,
                                   multimask_output, return_logits)

    @torch.inference_mode()
    def decode_low_res(self, image: EncodedImage, point_coords: torch.Tensor | None,
                       point_labels: torch.Tensor | None, boxes: torch.Tensor | None = None,
                       mask_input: torch.Tensor | None = None, multimask_output: bool = True,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder call (prompt frame): ``(low_res_logits B x C x 256 x 256, scores B x C)``.

        C is 1 without ``multimask_output``: the model's single mask, SAM's first mask token or,
        for a model whose ``config.single_mask`` is ``"best_of_three"``, the best-scored of the
        three multimask outputs."""
        multimask_output = as_flag(multimask_output, "multimask_output")
        if not multimask_output and self.single_mask == "best_of_three":
            low_res, scores = self.decode_low_res(image, point_coords, point_labels, boxes,
                                                  mask_input, multimask_output=True)
            rows, best = torch.arange(len(scores), device=scores.device), scores.argmax(1)
            return low_res[rows, best][:, None], scores[rows, best][:, None]
        return self.model.mask_decoder(
            **self.decoder_inputs(image, point_coords, point_labels, boxes, mask_input),
            multimask_output=multimask_output)

    def decoder_inputs(self, image: EncodedImage, point_coords: torch.Tensor | None,
                       point_labels: torch.Tensor | None, boxes: torch.Tensor | None = None,
                       mask_input: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The mask decoder's keyword inputs for prompts in the prompt frame: the image's
        features and positional encoding, the prompt encoder's sparse and dense embeddings."""
        points = (point_coords, point_labels) if point_coords is not None else None
        encoder = self.model.prompt_encoder
        sparse, dense = encoder(points=points, boxes=boxes, masks=mask_input)
        return {"image_embeddings": image.features, "image_pe": encoder.get_dense_pe(),
                "sparse_prompt_embeddings": sparse, "dense_prompt_embeddings": dense}

    def upscale(self, image: EncodedImage, low_res: torch.Tensor, return_logits: bool = False,
                *, lean: bool | None = None) -> torch.Tensor:
        """``B x C x 256 x 256`` logits to ``B x C x H x W`` masks (bool, or logits) in the
        original frame, a few prompts at a time (bounded memory). ``lean`` (default ``fast``):
        SAM's interpolations bit for bit with less work: boolean masks on the CPU straight
        from the logits (``inference.mask_upscale``, no float image per mask), else
        ``geometry.postprocess_masks_lean``."""
        return_logits = as_flag(return_logits, "return_logits")
        h, w = image.original_size
        lean = self.fast if lean is None else lean
        if lean and not return_logits:
            masks = mask_upscale.upscale_to_masks(low_res, image.input_size, image.original_size,
                                                  self.prompt_frame, self.mask_threshold)
            if masks is not None:
                return masks
        step = max(1, _UPSCALE_ELEMENTS // (h * w * max(1, low_res.shape[1])))
        chunks = []
        post = geometry.postprocess_masks_lean if lean else geometry.postprocess_masks
        for i in range(0, len(low_res), step):
            up = post(low_res[i: i + step], image.input_size, image.original_size,
                      self.prompt_frame)
            chunks.append(up if return_logits else up > self.mask_threshold)
        return torch.cat(chunks)

    @torch.inference_mode()
    def _predict_torch(self, image: EncodedImage, point_coords, point_labels, boxes, mask_input,
                       multimask_output: bool, return_logits: bool):
        low_res, scores = self.decode_low_res(image, point_coords, point_labels, boxes,
                                              mask_input, multimask_output)
        return self.upscale(image, low_res, return_logits), scores, low_res
