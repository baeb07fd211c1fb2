"""Window reads from images far larger than memory: arrays, TIFF/BigTIFF files, PIL formats.

An :class:`ImageSource` has a size ``(height, width)`` and returns ``h x w x 3`` uint8 RGB
windows in the original (full-image) frame, ``(x, y) = (col, row)``; nothing reads or keeps the
whole image as floats.

* numpy arrays (``H x W x 3``, ``H x W`` or ``H x W x 4`` uint8, as
  :mod:`effvit_sam.predictor_inputs` accepts them) are sliced in place (a ``numpy.memmap`` too).
* TIFF / BigTIFF files are read lazily with ``tifffile`` (the ``tiled`` extra): uncompressed
  contiguous data through a memory map, tiled or compressed data one TIFF segment (tile or
  strip) at a time, with a small LRU of decoded segments; :attr:`TiffSource.bytes_read` counts
  the encoded bytes read.
* PNG, JPEG and every other PIL format are decoded whole into one uint8 array (3 bytes a
  pixel); PIL's decompression-bomb limit is replaced, for this call only, by ``max_pixels``
  (default :data:`PIL_MAX_PIXELS`). Larger images must be converted to a tiled TIFF.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from .errors import UserError
from .predictor_inputs import as_rgb_image

PIL_MAX_PIXELS = 1 << 30
"""Default pixel limit for PIL-decoded images (3 GiB as RGB); TIFF files have none."""

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
SEGMENT_CACHE = 64
"""Decoded TIFF segments kept by a :class:`TiffSource` (adjacent windows share segments)."""

_BLOCK_BYTES = 64 << 20
"""Bytes of native-resolution rows read at a time by :func:`read_reduced`."""


class ImageSource(Protocol):
    """A full-resolution image read window by window (original frame)."""

    height: int
    width: int

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Pixels ``[y0, y1) x [x0, x1)`` as a C-contiguous ``h x w x 3`` uint8 RGB array."""
        ...


def check_window(source: ImageSource, x0: int, y0: int, x1: int, y1: int) -> None:
    if not (0 <= x0 < x1 <= source.width and 0 <= y0 < y1 <= source.height):
        raise ValueError(f"window x {x0}..{x1}, y {y0}..{y1} is not inside the "
                         f"{source.height}x{source.width} image")


class ArraySource:
    """An in-memory (or memory-mapped) ``H x W [x C]`` uint8 array, sliced per window."""

    def __init__(self, array: np.ndarray) -> None:
        if not isinstance(array, np.ndarray):
            raise TypeError(f"image must be a numpy array, got {type(array).__name__}")
        if array.ndim not in (2, 3) or array.shape[0] == 0 or array.shape[1] == 0:
            raise ValueError(f"image must be H x W or H x W x C, got shape {array.shape}")
        self.array = array
        self.height, self.width = int(array.shape[0]), int(array.shape[1])

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        check_window(self, x0, y0, x1, y1)
        return np.ascontiguousarray(as_rgb_image(np.asarray(self.array[y0:y1, x0:x1])))

    def close(self) -> None:
        """Nothing to release (the array belongs to the caller); sources share the API."""

    def __enter__(self) -> ArraySource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TiffSource:
    """Page 0 of a TIFF/BigTIFF file, read by memory map or segment by segment (see module)."""

    def __init__(self, path: str | Path) -> None:
        try:
            import tifffile
        except ImportError as err:
            raise UserError(f"{path}: reading TIFF files needs tifffile: pip install "
                            "'effvit-sam[tiled]'") from err
        self.path = Path(path)
        try:
            self._file = tifffile.TiffFile(self.path)
        except (tifffile.TiffFileError, OSError, ValueError) as err:
            raise UserError(f"{self.path} is not a readable TIFF file: {err}") from None
        page = self._file.pages[0]
        if page.dtype != np.uint8:
            self._file.close()
            raise UserError(f"{self.path}: only 8-bit TIFF images are supported, this one is "
                            f"{page.dtype}")
        if len(page.shape) not in (2, 3) or (len(page.shape) == 3 and page.shape[2] > 4):
            self._file.close()
            raise UserError(f"{self.path}: expected an H x W [x 1..4] image, got shape "
                            f"{page.shape}")
        self.height, self.width = int(page.shape[0]), int(page.shape[1])
        self.page = page
        self.bytes_read = 0
        """Encoded bytes read from the file by segment reads (0 for a memory map)."""
        self.array: np.ndarray | None = None
        if page.is_memmappable:
            self.array = self._file.asarray(out="memmap")
        elif page.planarconfig != 1 and page.samplesperpixel > 1:
            self._file.close()
            raise UserError(f"{self.path}: planar (separate-plane) TIFFs are not supported")
        self._segments: OrderedDict[int, np.ndarray] = OrderedDict()

    @property
    def memory_mapped(self) -> bool:
        return self.array is not None

    def close(self) -> None:
        self.array = None
        self._segments.clear()
        self._file.close()

    def __enter__(self) -> TiffSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _segment(self, index: int) -> np.ndarray:
        """Decoded segment ``index`` (row-major in the segment grid) as ``h x w x C``."""
        cached = self._segments.get(index)
        if cached is not None:
            self._segments.move_to_end(index)
            return cached
        page, fh = self.page, self._file.filehandle
        fh.seek(page.dataoffsets[index])
        data = fh.read(page.databytecounts[index])
        self.bytes_read += len(data)
        segment, _, _ = page.decode(data, index)
        segment = segment.reshape(segment.shape[1], segment.shape[2], -1)
        self._segments[index] = segment
        if len(self._segments) > SEGMENT_CACHE:
            self._segments.popitem(last=False)
        return segment

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        check_window(self, x0, y0, x1, y1)
        if self.array is not None:
            return np.ascontiguousarray(as_rgb_image(np.asarray(self.array[y0:y1, x0:x1])))
        seg_h, seg_w = self.page.chunks[:2]
        across = self.page.chunked[1]
        samples = self.page.samplesperpixel
        out = np.empty((y1 - y0, x1 - x0, samples), dtype=np.uint8)
        for row in range(y0 // seg_h, (y1 - 1) // seg_h + 1):
            for col in range(x0 // seg_w, (x1 - 1) // seg_w + 1):
                segment = self._segment(row * across + col)
                sy, sx = row * seg_h, col * seg_w
                # Overlap of the window and this segment, in image pixels.
                a0, a1 = max(y0, sy), min(y1, sy + segment.shape[0])
                b0, b1 = max(x0, sx), min(x1, sx + segment.shape[1])
                out[a0 - y0: a1 - y0, b0 - x0: b1 - x0] = segment[a0 - sy: a1 - sy,
                                                                  b0 - sx: b1 - sx]
        return np.ascontiguousarray(as_rgb_image(out))


def _open_pil(path: Path, max_pixels: int) -> ArraySource:
    # PIL refuses images over 2 * Image.MAX_IMAGE_PIXELS as "decompression bombs" when
    # opening them. A user asking for a big scan means it, so the limit is ours (max_pixels,
    # checked from the header), and PIL's is lifted only while this one file is opened.
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise UserError(f"{path} has {im.width}x{im.height} pixels, over the "
                                f"{max_pixels}-pixel limit for {im.format} files (decoded "
                                "whole); convert it to a tiled TIFF, which is read lazily")
            array = np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError) as err:
        raise UserError(f"{path} is not a readable image: {err}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    return ArraySource(array)


def open_source(image: np.ndarray | str | Path | ImageSource, *,
                max_pixels: int = PIL_MAX_PIXELS) -> ImageSource:
    """An :class:`ImageSource` for an array, a path (TIFF lazily, others by PIL) or a source."""
    if isinstance(image, np.ndarray):
        return ArraySource(image)
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise UserError(f"image not found: {path}")
        if path.suffix.lower() in TIFF_SUFFIXES:
            return TiffSource(path)
        return _open_pil(path, max_pixels)
    if hasattr(image, "read") and hasattr(image, "height") and hasattr(image, "width"):
        return image
    raise TypeError(f"image must be a numpy array, a path or an ImageSource, got "
                    f"{type(image).__name__}")


def read_reduced(source: ImageSource, x0: int, y0: int, x1: int, y1: int,
                 factor: int) -> np.ndarray:
    """Window ``[y0, y1) x [x0, x1)`` shrunk by the integer ``factor`` (each output pixel the
    mean of a ``factor x factor`` block, partial blocks at the right/bottom edge; PIL's
    ``Image.reduce``): ``ceil(h / factor) x ceil(w / factor) x 3`` uint8.

    Native rows are read a block at a time (whole multiples of ``factor`` rows), so the memory
    used is bounded however large the window; the result equals reducing the whole window.
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if factor == 1:
        return source.read(x0, y0, x1, y1)
    check_window(source, x0, y0, x1, y1)
    rows = max(factor, _BLOCK_BYTES // max(1, 3 * (x1 - x0)) // factor * factor)
    blocks = []
    for top in range(y0, y1, rows):
        block = source.read(x0, top, x1, min(y1, top + rows))
        blocks.append(np.asarray(Image.fromarray(block).reduce(factor)))
    return np.concatenate(blocks)
