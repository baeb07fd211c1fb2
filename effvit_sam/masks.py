"""Masks as COCO run-length encodings and boxes: one convention for the whole package.

* RLE: COCO compressed RLE ``{"size": [H, W], "counts": str}`` (what pycocotools and the COCO
  JSON format use); uncompressed ``list`` counts and polygons are accepted on input.
* Every RLE and polygon from outside is checked (:func:`validate_rle`,
  :func:`validate_polygons`) before pycocotools decodes it: pycocotools trusts its input and
  turns a too-short RLE into uninitialised memory. :func:`rle_to_mask` and
  :func:`segmentation_to_rle` check for every caller, and :func:`rles_to_masks` decodes many
  RLEs of one image in one pycocotools call after checking each; nothing else in the package
  hands outside RLEs to pycocotools.
* Boxes of a mask cover whole pixels, as COCO's do: a mask whose pixels span columns
  ``x0..x1`` and rows ``y0..y1`` (inclusive) has XYWH box ``[x0, y0, x1 - x0 + 1, y1 - y0 + 1]``
  and XYXY box ``[x0, y0, x1 + 1, y1 + 1]`` (what :func:`effvit_sam.geometry.xywh_to_xyxy` gives).
  An empty mask has box ``[0, 0, 0, 0]``.

Torch-free: numpy and pycocotools only.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

MAX_PIXELS = 1 << 32
"""pycocotools stores run lengths as 32-bit unsigned ints: no image may have more pixels."""
MAX_CHARS_PER_COUNT = 7
"""A compressed count is a signed difference of two runs below 2^32 (33 bits), at most 7 chars
of 5 data bits; a longer one is garbage (and would overflow pycocotools' shifts)."""


def decode_compressed_counts(counts: str | bytes) -> np.ndarray:
    """COCO's compressed counts string as its run lengths (int64), without pycocotools.

    The format (pycocotools' ``rleToString`` / ``rleFrString``): each value is written as chars
    ``48 + c`` with ``c`` holding 5 data bits (least significant group first) and ``0x20`` set
    on every char but a value's last; bit ``0x10`` of the last char is the sign. From the
    fourth value on (``i > 2``) a value is the difference to the run two before, so
    ``counts[i] += counts[i - 2]``. Raises ``ValueError`` on characters outside ``'0'..'o'``,
    a string that ends inside a value, or a value longer than :data:`MAX_CHARS_PER_COUNT`.
    Negative results are returned as they are (:func:`validate_rle` rejects them).
    """
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError as exn:
            raise ValueError(f"compressed RLE counts hold a non-ASCII character at {exn.start}"
                             ) from None
    codes = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    bad = (codes < 0) | (codes > 63)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"compressed RLE counts hold {chr(codes[i] + 48)!r} at {i}, outside "
                         "the alphabet '0'..'o'")
    ends = np.flatnonzero((codes & 0x20) == 0)  # chars that end a value
    if ends.size == 0 or ends[-1] != codes.size - 1:
        raise ValueError("compressed RLE counts end inside a value (the last character has "
                         "the continuation bit 0x20)")
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > MAX_CHARS_PER_COUNT:
        i = int(np.argmax(lengths))
        raise ValueError(f"compressed RLE count {i} is {int(lengths[i])} characters long; a "
                         f"valid count takes at most {MAX_CHARS_PER_COUNT}")
    position = np.arange(codes.size) - np.repeat(starts, lengths)  # char index in its value
    values = np.add.reduceat((codes & 0x1F) << (5 * position), starts)
    negative = (codes[ends] & 0x10) != 0  # sign-extend: x |= -1 << 5k
    values -= negative.astype(np.int64) << (5 * lengths)
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # counts[i] += counts[i - 2] for i > 2, i.e. a
    runs[2::2] = np.cumsum(values[2::2])  # running sum over the odd and over the even runs >= 2
    return runs


def _check_size(size, what: str) -> tuple[int, int]:
    if (not isinstance(size, list | tuple) or len(size) != 2
            or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in size)
            or min(size) < 1):
        raise ValueError(f"{what} must be two positive ints [H, W], got {size!r}")
    h, w = int(size[0]), int(size[1])
    if h * w >= MAX_PIXELS:
        raise ValueError(f"{what} {h}x{w} has more pixels than COCO RLE can count (2^32)")
    return h, w


def _check_runs(runs: np.ndarray, h: int, w: int, what: str) -> None:
    if runs.size and runs.min() < 0:
        i = int(np.argmax(runs < 0))
        raise ValueError(f"{what} run {i} is negative ({int(runs[i])})")
    total = int(runs.sum())
    if total != h * w:
        problem = "too short" if total < h * w else "too long"
        raise ValueError(f"{what} are {problem}: the runs sum to {total}, not H*W = {h}*{w} = "
                         f"{h * w}")


def validate_rle(rle, height: int | None = None, width: int | None = None) -> dict:
    """Check a COCO RLE before anything decodes it; return it compressed for pycocotools.

    pycocotools trusts its input: counts that sum to less than H*W leave the rest of the
    decoded mask uninitialised memory (a random mask, different on every run), and more
    overrun the buffer. So: ``size`` must be two positive ints (equal to ``(height, width)``
    when given); uncompressed ``list`` counts must be non-negative ints, compressed
    ``str``/``bytes`` counts must parse (:func:`decode_compressed_counts`) to non-negative runs;
    either must sum to exactly H*W. Returns ``{"size": [H, W], "counts": bytes}``; raises
    ``ValueError`` naming the problem (``TypeError`` for counts that are none of those types).
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("rle must be a dict with 'size' [H, W] and 'counts'")
    h, w = _check_size(rle["size"], "rle size")
    if height is not None and (h, w) != (int(height), int(width)):
        raise ValueError(f"rle size {h}x{w} is not the image's size {int(height)}x{int(width)}")
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in counts):
            bad = next(c for c in counts if not isinstance(c, int | np.integer)
                       or isinstance(c, bool))
            raise ValueError(f"uncompressed RLE counts must be ints, got {bad!r}")
        try:
            runs = np.asarray(counts, dtype=np.int64)
        except OverflowError:
            raise ValueError("uncompressed RLE counts hold a value beyond int64") from None
        _check_runs(runs, h, w, "uncompressed RLE counts")
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str | bytes):
        _check_runs(decode_compressed_counts(counts), h, w, "compressed RLE counts")
        return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str)
                else bytes(counts)}
    raise TypeError(f"rle counts must be str, bytes or a list of ints, got "
                    f"{type(counts).__name__}")


def validate_polygons(polygons) -> list[list[float]]:
    """COCO polygons: a non-empty list of ``[x0, y0, x1, y1, ...]`` lists, each an even number
    (>= 6, a triangle at least) of finite numbers in pixels. Returns them as float lists;
    raises ``ValueError`` naming the bad polygon."""
    if not isinstance(polygons, list) or not polygons:
        raise ValueError("polygons must be a non-empty list of [x0, y0, x1, y1, ...] lists")
    out = []
    for i, poly in enumerate(polygons):
        if not isinstance(poly, list | tuple) or not all(
                isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
                for v in poly):
            raise ValueError(f"polygon {i} must be a list of numbers, got {poly!r:.80}")
        if len(poly) < 6 or len(poly) % 2:
            raise ValueError(f"polygon {i} has {len(poly)} coordinates; a polygon needs an even "
                             "number, at least 6 (x, y pairs of 3 or more points)")
        coords = np.asarray(poly, dtype=np.float64)
        if not np.isfinite(coords).all():
            raise ValueError(f"polygon {i} has a NaN or infinite coordinate")
        out.append(coords.tolist())
    return out


def mask_to_rle(mask: np.ndarray) -> dict:
    """``H x W`` bool mask to COCO compressed RLE ``{"size": [H, W], "counts": str}``."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {array.shape}")
    rle = mask_utils.encode(np.asfortranarray(array.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict, height: int | None = None, width: int | None = None) -> np.ndarray:
    """COCO RLE (compressed ``str``/``bytes`` counts, or uncompressed list counts) to ``H x W``
    bool; checked by :func:`validate_rle` first (``height`` / ``width``: the image's size)."""
    return mask_utils.decode(validate_rle(rle, height, width)).astype(bool)


def rles_to_masks(rles: list[dict], height: int, width: int) -> np.ndarray:
    """``K`` RLEs of one ``height x width`` image to a ``K x H x W`` bool array, each checked by
    :func:`validate_rle` and then decoded in one batched pycocotools call."""
    checked = [validate_rle(rle, height, width) for rle in rles]
    if not checked:
        return np.zeros((0, int(height), int(width)), dtype=bool)
    return np.ascontiguousarray(mask_utils.decode(checked).transpose(2, 0, 1), dtype=bool)


def segmentation_to_rle(segmentation: list | dict, height: int, width: int) -> dict:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) of an ``height x width``
    image as one compressed RLE (``bytes`` counts); raises ``ValueError`` on bad input
    (:func:`validate_polygons`, :func:`validate_rle`)."""
    if isinstance(segmentation, list):  # polygons: one RLE per part, merged
        polygons = validate_polygons(segmentation)
        _check_size([height, width], "image size")
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict):
        return validate_rle(segmentation, height, width)
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")


def mask_to_box_xywh(mask: np.ndarray) -> list[float]:
    """The whole-pixel XYWH box of an ``H x W`` mask (``[0, 0, 0, 0]`` if empty)."""
    array = np.asarray(mask, dtype=bool)
    if array.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {array.shape}")
    rows, cols = np.flatnonzero(array.any(1)), np.flatnonzero(array.any(0))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = int(cols[0]), int(rows[0])
    return [float(x0), float(y0), float(cols[-1] - x0 + 1), float(rows[-1] - y0 + 1)]


def inclusive_box_to_xywh(box) -> list[float]:
    """An XYXY box of inclusive pixel extents (``x1`` = last column, as SAM's
    ``batched_mask_to_box`` gives) as the whole-pixel XYWH box of this module."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 < x0 or y1 < y0:  # an empty mask's box
        return [0.0, 0.0, 0.0, 0.0]
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def rle_area(rle: dict) -> int:
    """Pixels set in a compressed RLE."""
    return int(mask_utils.area(rle))


def rle_to_box_xywh(rle: dict) -> list[float]:
    """The whole-pixel XYWH box of a compressed RLE (pycocotools' ``toBbox``)."""
    return [float(v) for v in mask_utils.toBbox(rle)]


def cropped_mask_to_rle(mask: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict:
    """The compressed RLE, in a whole ``height x width`` image, of an ``h x w`` bool ``mask``
    whose top-left pixel is ``(x0, y0)`` in that image, without making the ``height x width``
    array: run boundaries are computed in the crop and mapped to the image's column-major
    pixel order, so a small mask in a 20000 x 20000 image costs only its own pixels."""
    crop = np.asarray(mask, dtype=bool)
    if crop.ndim != 2:
        raise ValueError(f"mask must be h x w, got shape {crop.shape}")
    h, w = crop.shape
    if x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height:
        raise ValueError(f"a {h}x{w} mask at (x0, y0) = ({x0}, {y0}) does not fit a "
                         f"{height}x{width} image")
    # Column-major crop with one zero row above and below, so no run crosses a column.
    padded = np.zeros((w, h + 2), dtype=np.int8)
    padded[:, 1:-1] = crop.T
    flips = np.flatnonzero(np.diff(padded.ravel()))  # index before each 0->1 / 1->0 change
    col, row = np.divmod(flips + 1, h + 2)  # pixel after the change, in the padded column
    # Full-image column-major index of that pixel (a run end maps to one past its last pixel).
    index = (x0 + col.astype(np.int64)) * height + (y0 + row.astype(np.int64) - 1)
    starts, ends = index[0::2], index[1::2]
    if len(starts) > 1:  # a crop as tall as the image: a run may continue into the next column
        joined = starts[1:] == ends[:-1]
        starts = np.concatenate([starts[:1], starts[1:][~joined]])
        ends = np.concatenate([ends[:-1][~joined], ends[-1:]])
    bounds = np.empty(2 * len(starts) + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, height * width
    bounds[1:-1:2], bounds[2:-1:2] = starts, ends
    counts = np.diff(bounds).tolist()
    if len(counts) > 1 and counts[-1] == 0:  # the mask reaches the last pixel
        counts.pop()
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def rle_union(rles: list[dict]) -> dict:
    """The pixel union of compressed RLEs of one image, as a compressed RLE (pycocotools'
    ``merge``, computed on the runs: no ``H x W`` array is made)."""
    if not rles:
        raise ValueError("rle_union of no masks")
    sizes = {tuple(int(v) for v in r["size"]) for r in rles}
    if len(sizes) != 1:
        raise ValueError(f"rle_union of masks of different image sizes: {sorted(sizes)}")
    coded = [{"size": list(r["size"]), "counts": r["counts"].encode("ascii")
              if isinstance(r["counts"], str) else r["counts"]} for r in rles]
    merged = mask_utils.merge(coded, intersect=False) if len(coded) > 1 else coded[0]
    counts = merged["counts"]
    return {"size": [int(v) for v in merged["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
