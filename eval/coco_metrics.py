"""Mask AP with the official scorers: pycocotools ``COCOeval`` and ``lvis.LVISEval``.

``lvis`` 0.5.3 calls ``np.float`` in ``LVISEval.accumulate``, which NumPy 2 removed.
:class:`NumpyCompatLVISEval` runs ``accumulate`` with the ``np`` name *inside the lvis.eval
module only* pointing at a proxy that adds ``float`` back, and restores it afterwards; nothing
in site-packages or in NumPy itself is changed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

COCO_AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
"""Order of ``COCOeval.stats[:6]``."""
LVIS_AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
LVIS_MAX_DETS = 300


def _percent(value: float) -> float | None:
    """Scorer value to percent; the scorers' ``-1`` (no ground truth in that group) to None."""
    return None if value < 0 else 100.0 * float(value)


def coco_segm_ap(dataset: dict, results: list[dict], image_ids: list[int]) -> dict:
    """COCO mask AP (percent) of ``results`` (COCO results with RLE ``segmentation``).

    ``dataset`` is the ground-truth COCO dict; only ``image_ids`` are scored (``--limit``).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        logger.warning("no detections to score: every AP is 0")
        return dict.fromkeys(COCO_AP_KEYS, 0.0)
    gt = COCO()
    gt.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt.createIndex()
        dt = gt.loadRes(copy.deepcopy(results))
        scorer = COCOeval(gt, dt, iouType="segm")
        scorer.params.imgIds = sorted(image_ids)
        scorer.evaluate()
        scorer.accumulate()
        scorer.summarize()
    return {k: _percent(v) for k, v in zip(COCO_AP_KEYS, scorer.stats[:6], strict=True)}


class _NumpyWithFloat(types.ModuleType):
    """``numpy`` as lvis 0.5.3 expects it: every attribute, plus the removed ``np.float``."""

    float = float

    def __getattr__(self, name: str):
        return getattr(np, name)


@contextlib.contextmanager
def _lvis_numpy_shim() -> Iterator[None]:
    import lvis.eval as lvis_eval

    original = lvis_eval.np
    if hasattr(original, "float") and original.float is float:  # NumPy < 1.24: nothing to do
        yield
        return
    lvis_eval.np = _NumpyWithFloat("numpy")
    try:
        yield
    finally:
        lvis_eval.np = original


def _lvis_eval_class():
    from lvis import LVISEval

    class NumpyCompatLVISEval(LVISEval):
        """``LVISEval`` whose ``accumulate`` also runs under NumPy 2."""

        def accumulate(self) -> None:
            with _lvis_numpy_shim():
                super().accumulate()

    return NumpyCompatLVISEval


def lvis_segm_ap(annotations: str | Path, results: list[dict], image_ids: list[int]) -> dict:
    """LVIS mask AP (percent): AP, AP50, AP75, APs/m/l and APr/APc/APf (rare/common/frequent).

    At most :data:`LVIS_MAX_DETS` detections per image count, as in the official protocol.
    """
    from lvis import LVIS, LVISResults

    if not results:
        logger.warning("no detections to score: every AP is 0")
        return dict.fromkeys(LVIS_AP_KEYS, 0.0)
    gt = LVIS(str(annotations))
    dt = LVISResults(gt, copy.deepcopy(results), max_dets=LVIS_MAX_DETS)
    scorer = _lvis_eval_class()(gt, dt, iou_type="segm")
    scorer.params.img_ids = sorted(image_ids)
    scorer.run()
    return {k: _percent(scorer.results[k]) for k in LVIS_AP_KEYS}
