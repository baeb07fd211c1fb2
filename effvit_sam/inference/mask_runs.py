"""Everything mode's run-length encoding and mask boxes in one compiled pass per mask (CPU).

SAM's generator finds each candidate's box with four reductions over its full-resolution mask
(``batched_mask_to_box``) and its RLE from a comparison of neighbouring pixels and a
``nonzero`` over the batch (:func:`effvit_sam.mask_rle.uncrop_rles_transposed` does the RLE so
for all masks at once). With a small decoder those passes are the generator's largest cost (on
a 2-core CPU, 615 masks of a 1024 x 768 photo: ~2.8 s of boxes and ~1.9 s of RLE in a 12 s
call). :func:`mask_runs` reads each mask once: the positions where the value changes, in the
order of the padded rows (a crop's column padded to the image's height, as the RLE of the whole
image needs), and the extents of its pixels, which give SAM's box exactly (a run of ones that
wraps to the next row covers that row's first column and the previous row's last one).

The work is split over ``torch.get_num_threads()`` threads (the kernel releases the GIL), as in
:mod:`.mask_upscale`, whose numba import and thread pool this shares.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

from .mask_upscale import _map_parts, numba

__all__ = ["MaskRuns", "mask_runs"]


@dataclass
class MaskRuns:
    """Per mask: ``changes[i]`` (positions in the padded row-major order where the value
    changes, int64), ``starts_on[i]`` (its first padded value) and ``boxes`` (``K x 4`` int64
    ``[min col, min row, max col, max row]`` of its pixels in the unpadded frame, zeros when
    empty: SAM's ``batched_mask_to_box``). ``length`` is the padded length of one mask."""

    changes: list
    starts_on: list
    boxes: torch.Tensor
    length: int

    def select(self, keep: torch.Tensor) -> MaskRuns:
        idx = torch.as_tensor(keep).nonzero()[:, 0].tolist()
        return MaskRuns([self.changes[i] for i in idx], [self.starts_on[i] for i in idx],
                        self.boxes[idx], self.length)


ONES, ZERO = np.uint64(0x0101010101010101), np.uint64(0)
"""Eight pixels on (off), read as one little-endian 64-bit word of eight bool bytes (uint64
both: numba would unify a uint64 and an int64 to float64)."""

if numba is not None:
    @numba.njit(nogil=True, cache=True)
    def _runs_kernel(masks, cols, lo, hi, before, after, fill, counts, changes, offsets, boxes,
                     starts):
        """Masks ``lo..hi`` of ``masks`` (``K x R x ceil(C / 8)`` uint64, eight bool bytes
        each): each row is read as ``before`` zeros, its ``C`` values, ``after`` zeros.
        ``fill`` False: count the changes into ``counts`` and write ``boxes`` and ``starts``
        (the first padded value); True: write the changes to ``changes`` from ``offsets``.
        Position 0 is never a change."""
        rows, words = masks.shape[1], masks.shape[2]
        whole = cols // 8  # words without padding bytes
        width = before + cols + after
        for m in range(lo, hi):
            cur = np.uint64(0)
            if before == 0 and rows > 0 and cols > 0:
                cur = masks[m, 0, 0] & np.uint64(1)
            if not fill:
                starts[m] = cur
            n = 0
            out = offsets[m]
            r_min, r_max, c_min, c_max = rows, -1, cols, -1
            for r in range(rows):
                base = r * width
                if cur and before:
                    if fill:
                        changes[out + n] = base
                    n += 1
                    cur = np.uint64(0)
                row = masks[m, r]
                first, last = -1, -1
                for q in range(words):
                    word = row[q]
                    if q < whole and word == (ONES if cur else ZERO):  # eight without a change
                        if cur:
                            if first < 0:
                                first = q * 8
                            last = q * 8 + 7
                        continue
                    for j in range(min(8, cols - q * 8)):
                        v = (word >> np.uint64(8 * j)) & np.uint64(1)
                        c = q * 8 + j
                        if v != cur:
                            if fill:
                                changes[out + n] = base + before + c
                            n += 1
                            cur = v
                        if v:
                            if first < 0:
                                first = c
                            last = c
                if first >= 0:
                    r_min = min(r_min, r)
                    r_max = r
                    c_min = min(c_min, first)
                    c_max = max(c_max, last)
                if cur and after:
                    if fill:
                        changes[out + n] = base + before + cols
                    n += 1
                    cur = np.uint64(0)
            if not fill:
                counts[m] = n
                if r_max < 0:  # empty: SAM's [0, 0, 0, 0]
                    r_min, r_max, c_min, c_max = 0, 0, 0, 0
                boxes[m, 0] = c_min
                boxes[m, 1] = r_min
                boxes[m, 2] = c_max
                boxes[m, 3] = r_max


def mask_runs(masks: torch.Tensor, before: int = 0, after: int = 0) -> MaskRuns | None:
    """Runs and boxes of ``K x R x C`` bool CPU masks whose rows are padded with ``before`` and
    ``after`` zeros (the padding is not made); None without numba or for other tensors."""
    if (numba is None or masks.dtype != torch.bool or masks.device.type != "cpu"
            or masks.dim() != 3 or sys.byteorder != "little"):
        return None
    k, rows, cols = masks.shape
    length = rows * (before + cols + after)
    if cols % 8:  # whole 64-bit words per row; the kernel never reads the padding bytes
        masks = torch.nn.functional.pad(masks, (0, 8 - cols % 8))
    data = masks.contiguous().numpy().view(np.uint8).view(np.uint64)
    counts = np.zeros(k, np.int64)
    boxes = np.zeros((k, 4), np.int64)
    offsets = np.zeros(k, np.int64)
    starts = np.zeros(k, np.uint8)

    def run(fill: bool, changes: np.ndarray) -> None:
        _map_parts(k, lambda lo, hi: _runs_kernel(data, cols, lo, hi, before, after, fill,
                                                  counts, changes, offsets, boxes, starts))

    run(False, np.zeros(0, np.int64))  # counts, boxes, first values
    offsets[1:] = np.cumsum(counts)[:-1]
    changes = np.empty(int(counts.sum()), np.int64)
    run(True, changes)
    return MaskRuns(np.split(changes, offsets[1:]) if k else [], (starts != 0).tolist(),
                    torch.from_numpy(boxes), length)
