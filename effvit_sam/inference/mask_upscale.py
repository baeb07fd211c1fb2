"""SAM's mask upscaling straight to boolean masks, in one pass per mask (CPU, numba).

SAM turns ``B x C x 256 x 256`` decoder logits into masks with two bilinear resizes
(``align_corners=False``) and a threshold: to the ``frame x frame`` square, cropped to the image
(``input_size``), then to the original size, then ``> mask_threshold``
(:func:`effvit_sam.geometry.postprocess_masks`). Done by ATen that is a float32 image per mask
per resize, written and read again, and ATen's generic bilinear kernel gathers every output
pixel's four inputs one by one: for 64 boxes x 3 masks on a 1024 x 768 photo, 0.4 s of a 1.1 s
``predict`` call on a 2-core CPU. :func:`upscale_to_masks` computes the same thing per mask and
band of output rows with a few rows of temporaries: each resize is done as SAM's kernel does it
(the two horizontal taps, then the two vertical ones), each needed row of the horizontal pass
once, and the comparison is made on the final value, so only the boolean mask is written.

It reproduces ATen's generic bilinear kernel bit for bit, which is the one a multi-threaded
``F.interpolate`` of masks uses (tested on random logits, odd sizes and both resizes): the
same source indices and weights (computed with ATen's float32 formula and checked against
``F.interpolate`` of unit vectors before first use; a mismatch falls back to ATen), the same
sums in the same order, with the fused multiply-adds a compiler forms from them. (ATen itself is
not one function: with one thread, three masks per prompt take its separable kernel, which
rounds some values differently in the last bit; a boolean mask differs only where a logit lands
within that bit of the threshold.)

The masks are split into work items (a mask, or a band of its rows when there are fewer masks
than threads) run by ``torch.get_num_threads()`` Python threads; the compiled kernel releases
the GIL. Without numba (not installed, or refusing this numpy) :func:`available` is False and
callers use ATen; ``effvit-sam env`` says which.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading

import numpy as np
import torch
import torch.nn.functional as F

try:  # numba refuses to import with a numpy newer than it supports: that is a fallback too
    import numba
    _NUMBA_ERROR: str | None = None
except Exception as exc:  # noqa: BLE001 - any import failure means "use ATen"
    numba = None
    _NUMBA_ERROR = f"{type(exc).__name__}: {exc}"

__all__ = ["available", "unavailable_reason", "bilinear_taps", "upscale_to_masks"]


def available() -> bool:
    """Whether the compiled upscaling can run (numba imports)."""
    return numba is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (the import error), else None."""
    return _NUMBA_ERROR


def _taps_formula(n_in: int, n_out: int, fused: bool):
    """ATen's ``compute_source_index_and_lambda`` for bilinear, ``align_corners=False``, in
    float32: ``src = max(scale * (dst + 0.5) - 0.5, 0)`` with ``scale = n_in / n_out`` (float
    division), the first index clamped to ``n_in - 1`` and the second one further unless at the
    border. ``fused``: the multiply-add rounded once, as a compiler may form it."""
    scale = np.float32(n_in) / np.float32(n_out)
    dst = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
    if fused:  # a float32 product is exact in float64; one rounding for the sum
        src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(np.float32)
    else:
        src = (scale * dst).astype(np.float32) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    w1 = np.minimum(np.maximum(src - i0.astype(np.float32), np.float32(0.0)), np.float32(1.0))
    i1 = i0 + (i0 < n_in - 1)
    return i0, i1, (np.float32(1.0) - w1).astype(np.float32), w1.astype(np.float32)


def _probe(n_in: int, n_out: int) -> np.ndarray:
    """``n_in x n_out``: row ``k`` is ``F.interpolate`` of the ``k``-th unit vector, i.e. the
    weight of input ``k`` in each output (the two weights summed where both taps coincide)."""
    eye = torch.eye(n_in, dtype=torch.float32).view(n_in, 1, 1, n_in)
    return F.interpolate(eye, size=(1, n_out), mode="bilinear",
                         align_corners=False).view(n_in, n_out).numpy()


@functools.lru_cache(maxsize=32)
def bilinear_taps(n_in: int, n_out: int):
    """``(i0, i1, w0, w1)`` of 1-D bilinear resizing ``n_in -> n_out`` as ATen computes them
    (int64 and float32 arrays of ``n_out``), or None if the formula does not reproduce
    ``F.interpolate`` here (then the caller uses ATen). Cached; never modify the arrays."""
    probe = _probe(n_in, n_out)
    cols = np.arange(n_out)
    for fused in (False, True):
        i0, i1, w0, w1 = _taps_formula(n_in, n_out, fused)
        got = np.zeros((n_in, n_out), np.float32)
        got[i0, cols] = w0
        got[i1, cols] += w1
        if np.array_equal(got, probe):
            for a in (i0, i1, w0, w1):
                a.setflags(write=False)
            return i0, i1, w0, w1
    return None


if numba is not None:
    _jit = numba.njit(nogil=True, cache=True, fastmath={"contract"})

    @numba.njit(nogil=True, cache=True, fastmath={"contract"}, inline="always")
    def _horizontal(src_row, c0, c1, w0, w1, dst):
        for c in range(dst.shape[0]):
            dst[c] = src_row[c0[c]] * w0[c] + src_row[c1[c]] * w1[c]

    @numba.njit(nogil=True, cache=True, fastmath={"contract"}, inline="always")
    def _source_rows(plane, i0, i1, c0, c1, w0, w1, rows, tags):
        """The horizontal pass of source rows ``i0`` and ``i1`` of ``plane`` into their slots of
        ``rows`` (row ``i`` in slot ``i & 1``), unless ``tags`` says a slot holds it already."""
        for i in (i0, i1):
            slot = i & 1
            if tags[slot] != i:
                _horizontal(plane[i], c0, c1, w0, w1, rows[slot])
                tags[slot] = i

    @_jit
    def _masks_kernel(x, items, r0a, r1a, h0a, h1a, c0a, c1a, w0a, w1a, two_stage,
                      r0b, r1b, h0b, h1b, c0b, c1b, w0b, w1b, threshold, out,
                      rows_a, tags_a, mid, rows_b, tags_b, count, above, counts):
        """Work items ``items[k] = (mask, first row, end row)`` of ``out`` (``N x H x W``
        bool) from ``x`` (``N x L x L`` float32 logits). Stage a: ``L x L`` -> the cropped
        frame (``r0a``.. index output rows, ``c0a``.. output columns); stage b (when
        ``two_stage``): the crop -> ``H x W``. Each stage keeps the horizontal pass of its two
        latest source rows in ``rows_*`` (tagged with the source row; a row's two taps are
        consecutive, so they never share a slot). With ``count``, ``counts[k]`` gets item k's
        number of values above ``above[0]`` and above ``above[1]``."""
        for k in range(items.shape[0]):
            m, lo, hi = items[k, 0], items[k, 1], items[k, 2]
            tags_a[0] = -1
            tags_a[1] = -1
            tags_b[0] = -1
            tags_b[1] = -1
            counts[k, 0] = 0
            counts[k, 1] = 0
            for r in range(lo, hi):
                if two_stage:
                    for s in range(2):  # the two crop rows this output row reads
                        j = r0b[r] if s == 0 else r1b[r]
                        slot_b = j & 1
                        if tags_b[slot_b] == j:
                            continue
                        # crop row j from stage a, then its horizontal pass of stage b
                        _source_rows(x[m], r0a[j], r1a[j], c0a, c1a, w0a, w1a, rows_a, tags_a)
                        ra, rb = rows_a[r0a[j] & 1], rows_a[r1a[j] & 1]
                        ha, hb = h0a[j], h1a[j]
                        for c in range(mid.shape[0]):
                            mid[c] = ra[c] * ha + rb[c] * hb
                        _horizontal(mid, c0b, c1b, w0b, w1b, rows_b[slot_b])
                        tags_b[slot_b] = j
                    ra, rb = rows_b[r0b[r] & 1], rows_b[r1b[r] & 1]
                    ha, hb = h0b[r], h1b[r]
                else:
                    _source_rows(x[m], r0a[r], r1a[r], c0a, c1a, w0a, w1a, rows_a, tags_a)
                    ra, rb = rows_a[r0a[r] & 1], rows_a[r1a[r] & 1]
                    ha, hb = h0a[r], h1a[r]
                row = out[m, r]
                if count:
                    t_hi, t_lo = above[0], above[1]
                    n_hi, n_lo = 0, 0
                    for c in range(row.shape[0]):
                        v = ra[c] * ha + rb[c] * hb
                        row[c] = v > threshold
                        n_hi += v > t_hi
                        n_lo += v > t_lo
                    counts[k, 0] += n_hi
                    counts[k, 1] += n_lo
                else:
                    for c in range(row.shape[0]):
                        row[c] = ra[c] * ha + rb[c] * hb > threshold


_POOL_LOCK = threading.Lock()
_POOL: list = [None, 0]


def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    with _POOL_LOCK:
        if _POOL[0] is None or _POOL[1] != workers:
            if _POOL[0] is not None:
                _POOL[0].shutdown(wait=False)
            _POOL[0] = concurrent.futures.ThreadPoolExecutor(
                workers, thread_name_prefix="effvit-sam-upscale")
            _POOL[1] = workers
        return _POOL[0]


def _map_parts(n: int, work) -> None:
    """``work(lo, hi)`` over ``range(n)`` cut into ``min(torch.get_num_threads(), n)``
    contiguous parts, on the shared pool (inline when there is one part)."""
    workers = max(1, min(torch.get_num_threads(), n))
    splits = np.linspace(0, n, workers + 1).astype(np.int64)
    parts = [(int(a), int(b)) for a, b in zip(splits[:-1], splits[1:], strict=True) if b > a]
    if len(parts) == 1:
        work(*parts[0])
    elif parts:
        list(_pool(len(parts)).map(lambda part: work(*part), parts))


def _stage_taps(frame: int, low: int, input_size, original_size):
    """Both stages' taps, or None where ATen must do it."""
    taps_a = bilinear_taps(low, frame)  # the frame is square: rows and columns alike
    if taps_a is None:
        return None
    h, w = input_size
    stage_a = tuple(a[:h] for a in taps_a) + tuple(a[:w] for a in taps_a)
    if tuple(original_size) == (h, w):
        return stage_a, None
    rows_b, cols_b = bilinear_taps(h, original_size[0]), bilinear_taps(w, original_size[1])
    if rows_b is None or cols_b is None:
        return None
    return stage_a, rows_b + cols_b


def upscale_to_masks(low_res: torch.Tensor, input_size: tuple[int, int],
                     original_size: tuple[int, int], frame: int, threshold: float, *,
                     count_above: tuple[float, float] | None = None):
    """``postprocess_masks(low_res, input_size, original_size, frame) > threshold`` for
    ``... x L x L`` float32 CPU logits, as a bool tensor of ``... x H x W``; None where this
    path does not apply (no numba, another device or dtype, taps ATen computes otherwise) and
    the caller must use ATen. ``count_above=(hi, lo)``: also each mask's number of upscaled
    logits above ``hi`` and above ``lo`` (SAM's stability score is their ratio), returned as
    ``(masks, counts)`` with int64 ``counts`` of ``... x 2``."""
    if (numba is None or low_res.device.type != "cpu" or low_res.dtype != torch.float32
            or low_res.dim() < 2 or low_res.shape[-1] != low_res.shape[-2]
            or low_res.requires_grad):
        return None
    low = low_res.shape[-1]
    h, w = (int(v) for v in original_size)
    taps = _stage_taps(int(frame), low, tuple(int(v) for v in input_size), (h, w))
    if taps is None:
        return None
    stage_a, stage_b = taps
    lead = low_res.shape[:-2]
    x = low_res.detach().reshape(-1, low, low).contiguous().numpy()
    n = x.shape[0]
    out = torch.empty((n, h, w), dtype=torch.bool)
    counts = np.zeros((n, 2), np.int64)
    if n and h and w:
        _run(x, out.numpy(), stage_a, stage_b, int(input_size[1]), np.float32(threshold),
             count_above, counts)
    out = out.view(*lead, h, w)
    if count_above is None:
        return out
    return out, torch.from_numpy(counts).view(*lead, 2)


def _run(x: np.ndarray, out: np.ndarray, stage_a, stage_b, in_w: int, threshold: np.float32,
         count_above, counts: np.ndarray) -> None:
    """Split the masks into work items over ``torch.get_num_threads()`` threads and run them."""
    n, h, w = out.shape
    workers = max(1, torch.get_num_threads())
    bands = 1 if n >= workers else -(-workers // n)
    edges = np.linspace(0, h, bands + 1).astype(np.int64)
    items = np.array([(m, edges[b], edges[b + 1]) for m in range(n) for b in range(bands)
                      if edges[b + 1] > edges[b]], dtype=np.int64)
    item_counts = np.zeros((len(items), 2), np.int64)
    count = count_above is not None
    above = np.array(count_above if count else (0.0, 0.0), np.float32)
    two_stage = stage_b is not None
    stage_b = stage_b if two_stage else stage_a  # unused arrays of the right types

    def run(lo: int, hi: int) -> None:
        _masks_kernel(x, items[lo:hi], *stage_a, two_stage, *stage_b, threshold, out,
                      np.empty((2, in_w), np.float32), np.empty(2, np.int64),
                      np.empty(in_w, np.float32), np.empty((2, w), np.float32),
                      np.empty(2, np.int64), count, above, item_counts[lo:hi])

    _map_parts(len(items), run)
    if count:
        np.add.at(counts, items[:, 0], item_counts)
