"""An uploaded file to the demo's ``H x W x 3`` uint8 RGB image, or a message saying why not.

The page hands the uploaded file to :func:`read_upload` undecoded (the upload event runs with
``preprocess=False``): Gradio's own preprocessing would decode it first, so a PNG of a few
kilobytes that claims to be 20000 x 20000 would already be 1.2 GB of RGB before any check ran.
Here the size is read from the file's header and checked before a single pixel is decoded.

What is accepted (every refusal is a :class:`effvit_sam.errors.UserError`, a ``ValueError``,
whose message the page shows):

* any format PIL reads (PNG, JPEG, WebP, BMP, TIFF, GIF's first frame, ...), turned the way its
  EXIF orientation says (as a browser shows it);
* greyscale, palette, RGBA (alpha dropped, as :func:`effvit_sam.io.read_image` does) and 16-bit
  images: 16-bit greyscale is scaled to 8 bits (PIL's own ``convert`` would clip every value
  above 255 to white);
* at most ``max_pixels`` pixels (:data:`DEFAULT_MAX_PIXELS`), and not so thin that the short side
  would shrink to nothing at the encoder's input (1 x 10000 is refused, 1 x 300 is fine).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from effvit_sam.errors import UserError
from effvit_sam.geometry import PROMPT_FRAME, preprocess_shape

DEFAULT_MAX_PIXELS = 25_000_000
"""Largest upload, in pixels (W x H): a 24-megapixel (6000 x 4000) photo fits. Per session the
demo keeps the image (3 bytes a pixel) and its masks (1 byte a pixel each), so this bounds one
session's memory; ``--max-sessions`` bounds how many there are."""

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
"""PIL modes of 16-bit greyscale images (16-bit PNG and TIFF open in one of these)."""


def check_image_size(height: int, width: int, *, max_pixels: int, encoder_size: int,
                     name: str = "the image") -> None:
    """Refuse an ``height x width`` image the demo cannot or will not segment.

    Raises ``UserError`` when it has more than ``max_pixels`` pixels, or when its short side
    would round to 0 pixels once the long side is resized to ``encoder_size`` (or to SAM's
    1024-pixel prompt frame): that happens when the long side is more than about
    ``2 * encoder_size`` times the short side. Messages call the image ``name``.
    """
    if height <= 0 or width <= 0:
        raise UserError(f"{name} is empty ({width}x{height} pixels)")
    pixels = height * width
    if pixels > max_pixels:
        raise UserError(f"{name} is {width}x{height} = {pixels:,} pixels, more than this "
                         f"demo's limit of {max_pixels:,} pixels: upload a smaller image")
    for side in sorted({encoder_size, PROMPT_FRAME}):
        if min(preprocess_shape(height, width, side)) == 0:
            raise UserError(
                f"{name} is {width}x{height} pixels: too thin to segment (its short side "
                f"would shrink to 0 pixels at the model's {side}-pixel input); the long side may "
                f"be at most {2 * side} times the short side")


def _to_rgb(image: Image.Image) -> np.ndarray:
    """A decoded PIL image as ``H x W x 3`` uint8 RGB (16-bit greyscale scaled, not clipped)."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.uint32)  # 0..65535
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    return np.asarray(image.convert("RGB"))


def read_upload(path: str | Path, *, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                encoder_size: int = PROMPT_FRAME) -> np.ndarray:
    """Read the uploaded file at ``path`` as an ``H x W x 3`` uint8 RGB image (original frame).

    ``name`` is how the user knows the file (its original name); messages use it, never the
    server's path. Raises ``UserError`` with a message for the page when the file is not an
    image, is truncated or damaged, is larger than ``max_pixels`` or too thin (see
    :func:`check_image_size`). Nothing is decoded before the size has been checked.
    """
    try:
        image = Image.open(path)  # reads the header only
    except Image.DecompressionBombError:
        # PIL refuses before even reporting the size: the file claims more than twice
        # PIL.Image.MAX_IMAGE_PIXELS, far above any limit this demo would accept.
        raise UserError(f"{name} is too large: more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, "
                         f"and this demo's limit is {max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        raise UserError(f"{name} is not an image (expected PNG, JPEG, WebP, BMP, TIFF or "
                         "GIF)") from None
    except OSError as err:
        raise UserError(f"{name} could not be read: {err}") from None
    with image:
        check_image_size(image.height, image.width, max_pixels=max_pixels,
                         encoder_size=encoder_size, name=name)
        try:
            return _to_rgb(ImageOps.exif_transpose(image))
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise UserError(f"{name} could not be decoded, the file is truncated or damaged "
                             f"({err})") from None
