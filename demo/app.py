"""The Gradio page: wires :class:`demo.session.DemoBackend` to components and events.

Per-tab state is one ``gr.State`` holding a :class:`DemoSession` (image, embedding, prompts,
masks). Memory stays bounded across many users because (1) a tab holds one embedding, replaced
on each upload; (2) Gradio drops a tab's state when it closes, and ``time_to_live`` drops idle
ones; (3) ``state_session_capacity`` (set at launch) evicts the least recently used sessions
beyond a fixed count. Each drop calls :func:`demo.session.close_session`.

Every handler is also an API endpoint (``upload``, ``click``, ``undo``, ``clear``, ``select``,
``set_mode``, ``export``) so ``gradio_client`` can drive the page exactly as a browser does.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from .prompts import MODES
from .session import DemoBackend, DemoSession, close_session

logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

RANDOM_WEIGHTS_BANNER = (
    '<div id="random-weights-banner" style="background:#b91c1c;color:white;padding:10px 14px;'
    'border-radius:6px;font-weight:600">&#9888; random weights: masks are meaningless. '
    "This model was started without trained weights (--random-weights); pass --checkpoint PATH "
    "or put the official weights in the Hugging Face cache to get real masks.</div>"
)

HELP = (
    "**point**: click = foreground point (tick *background point* for background). "
    "**box**: click two opposite corners. **everything**: automatic masks for the whole image."
)


def example_images() -> list[Path]:
    """The bundled example photos (``demo/examples/*.jpg``), sorted by name."""
    return sorted(EXAMPLES_DIR.glob("*.jpg"))


def _no_session() -> gr.Error:
    return gr.Error("upload an image (or pick an example) first")


def _user_errors(fn: Callable) -> Callable:
    """Show ``ValueError``/``TypeError`` from a handler as a message on the page."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError) as err:
            raise gr.Error(str(err)) from err

    return wrapper


def build_app(backend: DemoBackend, *, session_ttl: float = 1800.0,
              examples: Sequence[Path] | None = None) -> gr.Blocks:
    """The demo page for ``backend``; launch it with :func:`demo.cli.launch` or ``.launch()``.

    ``session_ttl``: seconds an idle tab's image and embedding are kept before being dropped.
    """
    examples = example_images() if examples is None else list(examples)

    def view(session: DemoSession | None) -> tuple:
        """The outputs every handler refreshes: state, overlay, mask selector, status, and the
        two download slots, emptied so a download never shows a mask other than the one drawn."""
        if session is None:
            return (None, None, gr.Radio(choices=[], value=None, visible=False),
                    backend.status(None), None, None)
        choices = backend.mask_choices(session)
        selector = gr.Radio(choices=choices, value=session.selected if choices else None,
                            visible=bool(choices))
        return session, backend.overlay(session), selector, backend.status(session), None, None

    def require(session: DemoSession | None) -> DemoSession:
        if session is None or session.predictor is None:
            raise _no_session()
        return session

    @_user_errors
    def on_upload(image: np.ndarray | None, session: DemoSession | None) -> tuple:
        if image is None:  # the upload was cleared
            close_session(session)
            return view(None)
        return view(backend.new_session(image, previous=session))

    @_user_errors
    def on_click(session: DemoSession | None, x: float, y: float, mode: str, background: bool,
                 multimask: bool) -> tuple:
        session = backend.click(require(session), x, y, mode=mode, background=background,
                                multimask=multimask)
        return view(session)

    def on_select(session: DemoSession | None, mode: str, background: bool, multimask: bool,
                  evt: gr.SelectData) -> tuple:
        # SelectData.index is (x, y) in the displayed image's own pixels, which is the original
        # frame: the overlay is always drawn at the uploaded image's size.
        x, y = evt.index
        return on_click(session, x, y, mode, background, multimask)

    @_user_errors
    def on_mode(session: DemoSession | None, mode: str) -> tuple:
        if session is None:
            return view(None)
        if mode == "everything":
            return view(backend.everything(session))
        if session.everything:  # leaving "everything": its masks do not belong to any prompt
            backend.clear(session)
        return view(session)

    @_user_errors
    def on_multimask(session: DemoSession | None, multimask: bool) -> tuple:
        if session is None or session.everything:
            return view(session)
        return view(backend.decode(session, multimask=multimask))

    @_user_errors
    def on_undo(session: DemoSession | None, multimask: bool) -> tuple:
        return view(backend.undo(require(session), multimask=multimask))

    @_user_errors
    def on_clear(session: DemoSession | None) -> tuple:
        return view(backend.clear(require(session)))

    @_user_errors
    def on_choose(session: DemoSession | None, index: int | None) -> tuple:
        if index is None:
            return view(session)
        return view(backend.select(require(session), int(index)))

    @_user_errors
    def on_export(session: DemoSession | None) -> tuple[str, str]:
        png, js = backend.export(require(session))
        return str(png), str(js)

    with gr.Blocks(title="EfficientViT-SAM demo", analytics_enabled=False,
                   delete_cache=(600, int(session_ttl))) as app:
        gr.HTML(RANDOM_WEIGHTS_BANNER, visible=backend.random_weights)
        gr.Markdown(f"## EfficientViT-SAM · {backend.model_name}\n{HELP}")
        state = gr.State(None, time_to_live=session_ttl, delete_callback=close_session)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.Image(label="image", type="numpy", sources=["upload"],
                                  elem_id="upload")
                if examples:
                    gr.Examples(examples=[[str(p)] for p in examples], inputs=[upload],
                                label="examples")
                mode = gr.Radio(list(MODES), value="point", label="mode", elem_id="mode")
                background = gr.Checkbox(False, label="background point", elem_id="background")
                multimask = gr.Checkbox(True, label="multimask (3 alternatives)",
                                        elem_id="multimask")
                with gr.Row():
                    undo = gr.Button("undo last prompt", elem_id="undo")
                    clear = gr.Button("clear", elem_id="clear")
            with gr.Column(scale=2):
                overlay = gr.Image(label="click to prompt", type="numpy", format="png",
                                   interactive=False, elem_id="overlay")
                choice = gr.Radio(choices=[], label="alternative masks", type="value",
                                  visible=False, elem_id="choice")
                status = gr.Markdown(backend.status(None), elem_id="status")
                export = gr.Button("export mask (PNG + COCO-RLE JSON)", elem_id="export")
                with gr.Row():
                    png_file = gr.File(label="mask.png", elem_id="png-file")
                    json_file = gr.File(label="masks.json", elem_id="json-file")
        # Clicks by coordinates for API clients (a browser's clicks arrive through .select).
        api_x = gr.Number(visible="hidden", label="x")
        api_y = gr.Number(visible="hidden", label="y")
        api_click = gr.Button(visible="hidden")

        views = [state, overlay, choice, status, png_file, json_file]
        upload.change(on_upload, [upload, state], views, api_name="upload")
        overlay.select(on_select, [state, mode, background, multimask], views, api_name=False)
        api_click.click(on_click, [state, api_x, api_y, mode, background, multimask], views,
                        api_name="click")
        mode.change(on_mode, [state, mode], views, api_name="set_mode")
        multimask.input(on_multimask, [state, multimask], views, api_name="set_multimask")
        undo.click(on_undo, [state, multimask], views, api_name="undo")
        clear.click(on_clear, [state], views, api_name="clear")
        choice.input(on_choose, [state, choice], views, api_name="select")
        export.click(on_export, [state], [png_file, json_file], api_name="export")
    return app
