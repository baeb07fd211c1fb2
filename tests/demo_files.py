"""Upload files for the demo's tests, made on the spot: good images in every mode the demo must
handle, and the malformed ones it must refuse with a message."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid-looking 8-bit RGB PNG that claims ``width x height`` but holds two rows of data.

    A few hundred bytes, whatever the size it claims: a decompression bomb's shape. Whoever
    decodes it gets "truncated"; whoever checks the header first can refuse it by its size.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * width) * 2)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows)
                     + _chunk(b"IEND", b""))
    return path


def truncated_png(path: Path, size_wh: tuple[int, int] = (64, 48)) -> Path:
    """A PNG of noise cut off in the middle of its pixel data (its header is intact)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size_wh[1], size_wh[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def malformed_uploads(folder: Path) -> dict[str, tuple[Path, str]]:
    """``{case: (file, regex its message must match)}`` for every upload the demo refuses."""
    text = folder / "notes.txt"
    text.write_text("this is not an image\n")
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    thin = folder / "thin.png"
    Image.new("RGB", (10000, 1), (200, 10, 10)).save(thin)
    return {
        "text file": (text, r"notes\.txt is not an image"),
        "empty file": (empty, r"empty\.png is not an image"),
        "truncated PNG": (truncated_png(folder / "cut.png"),
                          r"cut\.png could not be decoded, the file is truncated or damaged"),
        "1x10000": (thin, r"thin\.png is 10000x1 pixels: too thin to segment"),
        "20000x20000": (png_header_only(folder / "bomb.png", 20000, 20000),
                        r"bomb\.png is too large: .* this demo.s limit is 25,000,000 pixels"),
        "6000x5000": (png_header_only(folder / "big.png", 6000, 5000),
                      r"big\.png is 6000x5000 = 30,000,000 pixels, more than this demo's "
                      r"limit of 25,000,000 pixels"),
    }


def image_modes(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """``{mode: (file, the H x W x 3 uint8 RGB the demo must make of it)}``."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    deep = rng.integers(0, 65536, (30, 40), dtype=np.uint16)
    alpha = rng.integers(0, 256, (30, 40, 1), dtype=np.uint8)
    cases = {
        "L": (Image.fromarray(grey), np.repeat(grey[..., None], 3, axis=2)),
        "RGBA": (Image.fromarray(np.concatenate([rgb, alpha], axis=2)), rgb),  # alpha dropped
        "I;16": (Image.fromarray(deep),  # 16-bit: scaled to 8 bits, not clipped to 255
                 np.repeat(np.rint(deep / 257).astype(np.uint8)[..., None], 3, axis=2)),
        "P": (Image.fromarray(rgb).quantize(16), None),
    }
    out = {}
    for mode, (image, expected) in cases.items():
        path = folder / f"mode_{mode.replace(';', '')}.png"
        image.save(path)
        if expected is None:  # a palette image: whatever its colours are, as RGB
            expected = np.asarray(Image.open(path).convert("RGB"))
        out[mode] = (path, expected)
    return out
