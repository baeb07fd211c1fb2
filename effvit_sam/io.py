"""File I/O shared by every part of the package: atomic writes, JSON, reading images.

Nothing here imports torch, so the onnxruntime predictor and the data tools can use it too.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so a crash never leaves half a file.

    The temporary file sits next to ``path`` as ``.<name>.<random>.tmp`` (same file system, so
    the rename is atomic) and is removed if ``write`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """``obj`` as JSON at ``path``, written atomically, with a trailing newline."""
    text = json.dumps(obj, indent=indent) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_json(path: str | Path) -> Any:
    """The JSON document at ``path``; a malformed file raises ``ValueError`` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def read_image(source: str | Path | bytes) -> np.ndarray:
    """An image file (a path, or its bytes) as an ``H x W x 3`` uint8 RGB array.

    Greyscale and palette images are converted to RGB and alpha is dropped, by PIL's
    ``convert("RGB")``. Unreadable data raises ``ValueError`` naming the file.
    """
    import io

    from PIL import Image, UnidentifiedImageError

    name = "image bytes" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise FileNotFoundError(f"image not found: {source}")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            array = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{name} is not a readable image: {err}") from None
    except Image.DecompressionBombError:  # not an OSError; raised before any pixel is read
        raise ValueError(f"{name} is too large to read: it claims more than "
                         f"{2 * Image.MAX_IMAGE_PIXELS:,} pixels (PIL.Image.MAX_IMAGE_PIXELS "
                         "x 2)") from None
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} is empty ({array.shape[0]}x{array.shape[1]})")
    return array
