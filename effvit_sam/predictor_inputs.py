"""Validation of the predictor's user input: images and prompts in the original frame.

Torch-free (a tensor is recognised without importing torch), so the onnxruntime predictor
validates with the same functions as the PyTorch one.

Every check raises a :class:`ValueError` or :class:`TypeError` that names the argument and the
problem, so a bad prompt never reaches the model as a silent wrong answer.

Rules (documented here once, referenced by the predictor's docstrings):

* **Images** are ``H x W x 3`` uint8 numpy arrays or PIL images. Grayscale (``H x W`` or
  ``H x W x 1``) is replicated to three channels; four channels (RGBA/BGRA) drop the alpha channel
  (no compositing: the colour values are used as they are). PIL images are converted with
  ``Image.convert("RGB")`` and are always RGB. Any other dtype, channel count or an empty image
  raises.
* **Points** are ``N x 2`` (one prompt set) or ``B x N x 2`` (B sets), ``(x, y)`` in original-image
  pixels. The image covers ``[0, W] x [0, H]``; a point may lie at most :data:`BORDER_TOLERANCE`
  pixels outside it (rounding at the border), anything further raises naming the point and the
  image size: a click outside the picture is a caller's bug, clipping it would hide that.
* **Labels** have the points' leading shape and values in ``{0, 1}`` (0 background,
  1 foreground); omitted, every point is foreground.
* **Boxes** are XYXY, ``4`` (one) or ``B x 4`` (B boxes), with ``x0 <= x1``, ``y0 <= y1`` and the
  same border rule as points.
* **mask_input** is ``1 x 256 x 256`` logits for one prompt set, ``B x 1 x 256 x 256`` for B.
* **Flags** (``multimask_output``, ``return_logits``, ``fast``) are ``True`` or ``False`` (numpy
  bools too); anything else, ``"no"``, ``1``, ``1.5`` or ``None``, raises a ``TypeError``
  naming the argument: Python would take ``"no"`` as true and silently turn the option on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .geometry import LOW_RES_MASK_SIZE, is_tensor

BORDER_TOLERANCE = 1.0
"""How far (pixels) a point or box corner may lie outside ``[0, W] x [0, H]``."""

IMAGE_FORMATS = ("RGB", "BGR")


def as_rgb_image(image: np.ndarray | Image.Image, image_format: str = "RGB") -> np.ndarray:
    """A user image as a C-contiguous ``H x W x 3`` uint8 RGB array (see the module rules)."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if isinstance(image, Image.Image):
        if image_format != "RGB":
            raise ValueError("PIL images are always RGB; image_format='BGR' applies to numpy "
                             "arrays only")
        if image.width == 0 or image.height == 0:
            raise ValueError(f"image is empty ({image.height}x{image.width})")
        return np.asarray(image.convert("RGB"))
    if is_tensor(image):
        raise TypeError("set_image takes a numpy H x W x 3 uint8 array or a PIL image; for a "
                        "preprocessed tensor use set_torch_image")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array or a PIL image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8 with values 0..255, got dtype {image.dtype} "
                        "(convert floats in [0, 1] with (image * 255).round().astype(np.uint8))")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be H x W, H x W x 1, H x W x 3 or H x W x 4, got shape "
                         f"{image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    image = image[..., :3]
    if image_format == "BGR":
        image = image[..., ::-1]
    return np.ascontiguousarray(image)


def as_flag(value, name: str) -> bool:
    """A flag argument as a Python ``bool``; ``True``/``False`` and numpy bools only."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def to_numpy(value, name: str, dtype=np.float64) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor or a (nested) list; else TypeError."""
    if is_tensor(value):
        value = value.detach().cpu().numpy()
    elif isinstance(value, (list, tuple)):
        value = np.asarray(value)
    elif not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, a torch tensor or a list, got "
                        f"{type(value).__name__}")
    if value.dtype == object or not (np.issubdtype(value.dtype, np.number) or
                                     value.dtype == np.bool_):
        raise TypeError(f"{name} must be numeric, got dtype {value.dtype}")
    return value.astype(dtype)


def _check_finite(values: np.ndarray, name: str) -> None:
    if not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))[0].tolist()
        raise ValueError(f"{name} contains NaN or inf (first at index {bad})")


def _check_inside(xy: np.ndarray, name: str, original_size: tuple[int, int]) -> None:
    """``... x 2`` (x, y) must lie within the image, up to BORDER_TOLERANCE pixels outside."""
    h, w = original_size
    tol = BORDER_TOLERANCE
    outside = ((xy[..., 0] < -tol) | (xy[..., 0] > w + tol) |
               (xy[..., 1] < -tol) | (xy[..., 1] > h + tol))
    if outside.any():
        index = np.argwhere(outside)[0]
        x, y = xy[tuple(index)]
        raise ValueError(f"{name} at index {index.tolist()} is ({x:g}, {y:g}), outside the "
                         f"{w}x{h} (W x H) image (allowed x in [{-tol:g}, {w + tol:g}], "
                         f"y in [{-tol:g}, {h + tol:g}])")


def as_points(points, labels, original_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Validate points ``N x 2`` / ``B x N x 2`` and labels; returns ``(coords, labels)``.

    ``coords`` is float64 in the original frame with the input's shape; ``labels`` is int64 of
    shape ``coords.shape[:-1]`` (all ones when ``labels`` is None).
    """
    coords = to_numpy(points, "points")
    if coords.ndim not in (2, 3) or coords.shape[-1] != 2 or coords.shape[-2] == 0:
        raise ValueError(f"points must be N x 2 (x, y) or B x N x 2 with N >= 1, got shape "
                         f"{coords.shape}")
    _check_finite(coords, "points")
    _check_inside(coords, "point", original_size)
    if labels is None:
        return coords, np.ones(coords.shape[:-1], dtype=np.int64)
    raw = to_numpy(labels, "labels")
    if raw.shape != coords.shape[:-1]:
        raise ValueError(f"labels must have shape {coords.shape[:-1]} (one per point), got "
                         f"{raw.shape}")
    if not np.isin(raw, (0, 1)).all():
        bad = sorted(set(np.unique(raw[~np.isin(raw, (0, 1))]).tolist()))
        raise ValueError(f"labels must be 0 (background) or 1 (foreground), got {bad}")
    return coords, raw.astype(np.int64)


def as_boxes(boxes, original_size: tuple[int, int]) -> np.ndarray:
    """Validate XYXY boxes ``4`` or ``B x 4``; returns float64 with the input's shape."""
    array = to_numpy(boxes, "boxes")
    if array.ndim not in (1, 2) or array.shape[-1] != 4 or (array.ndim == 2 and not len(array)):
        raise ValueError(f"boxes must be XYXY: 4 values or B x 4 with B >= 1, got shape "
                         f"{array.shape}")
    _check_finite(array, "boxes")
    flat = array.reshape(-1, 4)
    reversed_ = (flat[:, 2] < flat[:, 0]) | (flat[:, 3] < flat[:, 1])
    if reversed_.any():
        i = int(np.argmax(reversed_))
        raise ValueError(f"box {i} is {flat[i].tolist()}: boxes must be XYXY with x0 <= x1 and "
                         "y0 <= y1 (got XYWH or swapped corners?)")
    _check_inside(flat.reshape(-1, 2, 2), "box corner", original_size)
    return array


def as_mask_input(mask_input) -> tuple[np.ndarray, bool]:
    """Validate ``1 x 256 x 256`` (one prompt set) or ``B x 1 x 256 x 256`` logits.

    Returns ``(float32 B x 1 x 256 x 256, batched)`` with B = 1 for a single prompt set.
    """
    array = to_numpy(mask_input, "mask_input", np.float32)
    side = LOW_RES_MASK_SIZE
    if array.ndim not in (3, 4) or array.shape[-3:] != (1, side, side) or not len(array):
        raise ValueError(f"mask_input must be 1 x {side} x {side} (one prompt set) or "
                         f"B x 1 x {side} x {side} low-res logits (as returned by predict), got "
                         f"shape {array.shape}")
    _check_finite(array, "mask_input")
    batched = array.ndim == 4
    return (array if batched else array[None]), batched


@dataclass(frozen=True)
class PromptBatch:
    """The checked prompts of one ``predict`` call as ``size`` prompt sets (original frame):
    ``points`` ``B x N x 2`` float64 with ``labels`` ``B x N`` int64, ``boxes`` ``B x 4``,
    ``mask_input`` ``B x 1 x 256 x 256`` float32; ``None`` where not given. An un-batched prompt
    (one point set, one box, one mask) is shared by every set (a broadcast view). ``batched``:
    some prompt came with a batch axis, so the outputs keep one."""

    points: np.ndarray | None
    labels: np.ndarray | None
    boxes: np.ndarray | None
    mask_input: np.ndarray | None
    size: int
    batched: bool


def as_prompt_batch(points, labels, boxes, mask_input,
                    original_size: tuple[int, int]) -> PromptBatch:
    """Validate one ``predict`` call's prompts (the rules above) and put them in one batch;
    batched prompts must agree on the batch size."""
    if points is None and labels is not None:
        raise ValueError("labels given without points")
    if points is None and boxes is None and mask_input is None:
        raise ValueError("give at least one prompt: points, boxes or mask_input")
    sizes: dict[str, int] = {}
    coords = point_labels = box = mask = None
    if points is not None:
        coords, point_labels = as_points(points, labels, original_size)
        if coords.ndim == 3:
            sizes["points"] = len(coords)
        else:
            coords, point_labels = coords[None], point_labels[None]
    if boxes is not None:
        box = as_boxes(boxes, original_size)
        if box.ndim == 2:
            sizes["boxes"] = len(box)
        else:
            box = box[None]
    if mask_input is not None:
        mask, batched_mask = as_mask_input(mask_input)
        if batched_mask:
            sizes["mask_input"] = len(mask)
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batched prompts disagree on the batch size: {sizes}")
    b = next(iter(sizes.values()), 1)

    def shared(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.broadcast_to(a, (b, *a.shape[1:]))

    return PromptBatch(shared(coords), shared(point_labels), shared(box), shared(mask), b,
                       bool(sizes))
