"""The demo's logic without the web page: one :class:`DemoSession` per browser tab.

A session holds one image, its embedding (inside its own predictor, computed once at upload),
the prompt history and the current masks. Clicks only run the prompt encoder and mask decoder
against the cached embedding, so they cost decoder time, never encoder time.

:class:`DemoBackend` holds what all sessions share: the model (read-only at inference) and how
it was loaded. Its methods are the page's handlers minus Gradio, so tests and the latency
benchmark drive them directly.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from effvit_sam.automatic import EfficientViTSamAutomaticMaskGenerator
from effvit_sam.inference.optimize import optimize_for_inference
from effvit_sam.modeling import EfficientViTSam
from effvit_sam.predictor import EfficientViTSamPredictor
from effvit_sam.predictor_inputs import as_rgb_image

from . import render
from .prompts import BACKGROUND, FOREGROUND, PromptHistory, add_click, to_predictor_inputs
from .upload import DEFAULT_MAX_PIXELS, check_image_size, read_upload

logger = logging.getLogger(__name__)


@dataclass
class DemoSession:
    """One tab's state: image, predictor (holding the embedding), prompts and results.

    ``masks`` is ``C x H x W`` bool in the original frame (C = 3 with multimask, else 1; or one
    per object after "everything"), ``scores`` the decoder's IoU predictions, ``selected`` the
    mask shown and exported in point/box mode.
    """

    image: np.ndarray
    predictor: EfficientViTSamPredictor
    history: PromptHistory
    encode_ms: float
    decode_ms: float | None = None
    masks: np.ndarray | None = None
    scores: np.ndarray | None = None
    selected: int = 0
    everything: bool = False
    _export_dir: Path | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def reset_results(self) -> None:
        self.masks = self.scores = None
        self.selected = 0
        self.everything = False
        self.decode_ms = None

    def export_dir(self) -> Path:
        """This session's private download folder, made on first export.

        It is deleted by :meth:`close` or, failing that, when the session is garbage collected
        (Gradio evicts sessions beyond ``state_session_capacity`` without a callback).
        """
        if self._export_dir is None or not self._export_dir.is_dir():
            self._export_dir = Path(tempfile.mkdtemp(prefix="effvit-sam-demo-"))
            weakref.finalize(self, shutil.rmtree, self._export_dir, ignore_errors=True)
        return self._export_dir

    def close(self) -> None:
        """Free the embedding and delete exported files (called when Gradio drops the state)."""
        if self._export_dir is not None:
            shutil.rmtree(self._export_dir, ignore_errors=True)
            self._export_dir = None
        self.predictor = None  # type: ignore[assignment]  # drops the features tensor
        self.masks = self.scores = None


def close_session(session: DemoSession | None) -> None:
    """``gr.State`` delete callback."""
    if session is not None:
        session.close()


class SessionTracker:
    """Which clients (Gradio session hashes) uploaded an image, and which sessions still live.

    Gradio drops a tab's state after ``--session-ttl`` idle seconds or, beyond
    ``--max-sessions``, the least recently used one; the tab's next event then arrives with no
    session. :meth:`uploaded` tells that case ("session expired, upload again") from a tab that
    never uploaded. Only the ids and weak references are kept, at most ``remember`` of them (the
    oldest forgotten first), so the tracker never keeps a session's memory alive.
    """

    def __init__(self, *, remember: int = 10_000) -> None:
        if remember < 1:
            raise ValueError(f"remember must be at least 1, got {remember}")
        self.remember = remember
        self._clients: OrderedDict[str, weakref.ref[DemoSession]] = OrderedDict()
        self._lock = threading.Lock()  # Gradio runs handlers in a thread pool

    def opened(self, client: str | None, session: DemoSession) -> None:
        """Record that ``client`` now holds ``session``."""
        if client is None:
            return
        with self._lock:
            self._clients[client] = weakref.ref(session)
            self._clients.move_to_end(client)
            while len(self._clients) > self.remember:
                self._clients.popitem(last=False)

    def forget(self, client: str | None) -> None:
        """``client`` removed its image itself: it is a new tab again, not an expired one."""
        with self._lock:
            self._clients.pop(client, None)

    def session(self, client: str | None) -> DemoSession | None:
        """``client``'s session if it is still in memory (closed or not), else ``None``."""
        with self._lock:
            ref = self._clients.get(client)
        return None if ref is None else ref()

    def uploaded(self, client: str | None) -> bool:
        """Whether ``client`` has uploaded an image (and not removed it since)."""
        with self._lock:
            return client in self._clients

    def alive(self) -> int:
        """Sessions still holding an embedding: neither closed nor garbage collected."""
        with self._lock:
            sessions = [ref() for ref in self._clients.values()]
        return sum(s is not None and s.predictor is not None for s in sessions)


@dataclass
class DemoBackend:
    """The shared model and its description; all per-user data lives in :class:`DemoSession`.

    ``model_name`` and ``weights`` are shown on the page; ``random_weights`` turns on the
    warning banner, ``bundled`` the banner saying the weights are the package's own model,
    trained on synthetic scenes. ``points_per_side`` sets the "everything" grid. ``max_pixels``
    is the largest image (W x H pixels) an upload may have (see :mod:`demo.upload`).
    """

    model: EfficientViTSam
    model_name: str
    weights: str
    random_weights: bool
    device: torch.device | None = None
    points_per_side: int = 32
    max_undo: int = 100
    max_pixels: int = DEFAULT_MAX_PIXELS
    bundled: bool = False

    def __post_init__(self) -> None:
        if self.points_per_side < 1:
            raise ValueError(f"points_per_side must be positive, got {self.points_per_side}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        self.model.eval()
        # The fast path (BN folding, channels-last) is applied ONCE here and shared by every
        # session: a predictor built with the default fast=True would deep-copy and re-fold the
        # model on every upload, and each live session would then hold its own model copy.
        self.inference_model = optimize_for_inference(self.model, device=self.device)
        # Warm-up at start-up rather than on the first upload: the first encoder call of a
        # process compiles the CPU GELU kernel (FastPathOptions.compiled_gelu) and grows the heap.
        size = self.inference_model.encoder_size
        with torch.inference_mode():
            self.inference_model.encode(torch.zeros(1, 3, size, size,
                                                    device=self.inference_model.device))

    # -- handlers ------------------------------------------------------------------------------
    def read_upload(self, path: str | Path, *, name: str) -> np.ndarray:
        """The uploaded file at ``path`` as ``H x W x 3`` uint8, checked against this backend's
        ``max_pixels`` and encoder size before decoding; ``ValueError`` with a message if not."""
        return read_upload(path, name=name, max_pixels=self.max_pixels,
                           encoder_size=self.inference_model.encoder_size)

    def new_session(self, image: np.ndarray, previous: DemoSession | None = None) -> DemoSession:
        """Encode an uploaded ``H x W x 3`` uint8 image once; the embedding serves every click.

        ``previous`` (the tab's session) is closed only once the new image is encoded: an image
        that is refused leaves the tab with its old image, still clickable.
        """
        image = as_rgb_image(image)
        check_image_size(*image.shape[:2], max_pixels=self.max_pixels,
                         encoder_size=self.inference_model.encoder_size)
        predictor = EfficientViTSamPredictor(self.inference_model, device=self.device, fast=False)
        start = time.perf_counter()
        predictor.set_image(image)
        encode_ms = (time.perf_counter() - start) * 1000
        logger.info("encoded a %dx%d image in %.1f ms", image.shape[1], image.shape[0], encode_ms)
        if previous is not None:
            previous.close()  # one embedding per tab: the old image's goes now, not at tab close
        return DemoSession(image=image, predictor=predictor,
                           history=PromptHistory(max_undo=self.max_undo), encode_ms=encode_ms)

    def click(self, session: DemoSession, x: float, y: float, *, mode: str, background: bool,
              multimask: bool) -> DemoSession:
        """Add a point (or box corner) at ``(x, y)`` original pixels and decode."""
        if mode == "everything":
            # The automatic masks do not depend on clicks; regenerating them would only cost time.
            raise ValueError("clicks add prompts in 'point' or 'box' mode; 'everything' shows "
                             "automatic masks for the whole image")
        label = BACKGROUND if background else FOREGROUND
        prompts = add_click(session.history.current, x, y, mode=mode, label=label,
                            image_size=session.image_size)
        session.history.push(prompts)
        return self.decode(session, multimask=multimask)

    def decode(self, session: DemoSession, *, multimask: bool) -> DemoSession:
        """Run the decoder on the current prompts (no-op result when there are none)."""
        prompts = session.history.current
        session.reset_results()
        if not prompts.decodable:
            return session
        inputs = to_predictor_inputs(prompts)
        start = time.perf_counter()
        masks, scores, _ = session.predictor.predict(**inputs, multimask_output=multimask)
        session.decode_ms = (time.perf_counter() - start) * 1000
        session.masks = np.asarray(masks, dtype=bool)
        session.scores = np.asarray(scores, dtype=np.float32)
        session.selected = int(np.argmax(session.scores))
        return session

    def undo(self, session: DemoSession, *, multimask: bool) -> DemoSession:
        session.history.undo()
        return self.decode(session, multimask=multimask)

    def clear(self, session: DemoSession) -> DemoSession:
        session.history.clear()
        session.reset_results()
        return session

    def select(self, session: DemoSession, index: int) -> DemoSession:
        """Show alternative ``index`` of a multimask answer."""
        if session.masks is None or session.everything:
            raise ValueError("there are no alternative masks to choose from")
        if not 0 <= index < len(session.masks):
            raise ValueError(f"mask index {index} out of range 0..{len(session.masks) - 1}")
        session.selected = int(index)
        return session

    def everything(self, session: DemoSession) -> DemoSession:
        """Automatic masks for the whole image (prompts are cleared: they do not apply)."""
        session.history.clear()
        session.reset_results()
        # The session's embedding serves the generator too: "everything" decodes, never encodes.
        generator = EfficientViTSamAutomaticMaskGenerator(
            self.inference_model, points_per_side=self.points_per_side, device=self.device,
            fast=False)
        start = time.perf_counter()
        records = generator.generate(session.image, encoded=session.predictor.images[0])
        session.decode_ms = (time.perf_counter() - start) * 1000
        # Largest first, so smaller parts are drawn (and labelled) on top of what contains them.
        records = sorted(records, key=lambda r: int(r["area"]), reverse=True)
        h, w = session.image_size
        session.masks = np.stack([np.asarray(r["segmentation"], dtype=bool) for r in records]) \
            if records else np.zeros((0, h, w), dtype=bool)
        session.scores = np.array([r["predicted_iou"] for r in records], dtype=np.float32)
        session.everything = True
        return session

    # -- views ---------------------------------------------------------------------------------
    def shown_masks(self, session: DemoSession) -> np.ndarray | None:
        """The masks drawn and exported: all of them after "everything", else the selected one."""
        if session.masks is None:
            return None
        if session.everything:
            return session.masks
        return session.masks[session.selected: session.selected + 1]

    def overlay(self, session: DemoSession) -> np.ndarray:
        return render.render_overlay(session.image, self.shown_masks(session),
                                     session.history.current)

    def mask_choices(self, session: DemoSession) -> list[tuple[str, int]]:
        """``(label, index)`` pairs for the alternative-mask selector (empty if there are none)."""
        if session.masks is None or session.everything or len(session.masks) < 2:
            return []
        return [(f"mask {i + 1} (IoU {s:.2f})", i) for i, s in enumerate(session.scores)]

    def status(self, session: DemoSession | None) -> str:
        """One markdown line: model, weights, encoder and decoder time."""
        parts = [f"**model** {self.model_name} ({self.weights})"]
        if session is not None:
            parts.append(f"**encoder** {session.encode_ms:.1f} ms")
            if session.decode_ms is not None:
                what = "everything" if session.everything else "decoder"
                parts.append(f"**{what}** {session.decode_ms:.1f} ms")
            if session.everything and session.masks is not None:
                parts.append(f"**{len(session.masks)} masks**")
            if session.history.current.corner is not None:
                parts.append("box: click the opposite corner")
        return " · ".join(parts)

    def export(self, session: DemoSession) -> tuple[Path, Path]:
        """Write the shown masks as ``mask.png`` and COCO-RLE ``masks.json``; returns both paths.

        Point/box mode: a 0/255 PNG of the selected mask. "Everything": a label PNG (0 background,
        i for the i-th mask of the JSON).
        """
        masks = self.shown_masks(session)
        if masks is None:
            raise ValueError("no mask to export yet: click the image first")
        folder = session.export_dir()
        if session.everything:
            png = render.label_png_bytes(masks)
            records = render.coco_records(masks, session.scores)
        else:
            png = render.mask_png_bytes(masks[0])
            records = render.coco_records(masks, session.scores[session.selected:
                                                                 session.selected + 1],
                                          prompts=session.history.current)
        h, w = session.image_size
        doc = {"model": self.model_name, "weights": self.weights, "image_size": [h, w],
               "annotations": records}
        return (render.write_bytes(folder / "mask.png", png),
                render.write_json(folder / "masks.json", doc))
