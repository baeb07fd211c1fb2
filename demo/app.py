"""The Gradio page: wires :class:`demo.session.DemoBackend` to components and events.

Per-tab state is one ``gr.State`` holding a :class:`DemoSession` (image, embedding, prompts,
masks). Memory stays bounded across many users because (1) a tab holds one embedding, replaced
on each upload; (2) when a tab closes (its heartbeat stops) the page's ``unload`` handler frees
its embedding at once (Gradio itself keeps a closed tab's state for an hour), and
``time_to_live`` drops idle ones; (3) ``state_session_capacity`` (set at launch) evicts the
least recently used sessions beyond a fixed count. A tab whose state was dropped gets
:data:`SESSION_EXPIRED` on its next event (a :class:`demo.session.SessionTracker` remembers
which tabs had uploaded).

Uploads reach :meth:`DemoBackend.read_upload` undecoded (``preprocess=False``), so a file that is
not an image, is truncated, too large or too thin is answered with a message on the page before
anything big is allocated, and the tab keeps its previous image.

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

from .prompts import MODES
from .session import DemoBackend, DemoSession, SessionTracker, close_session

logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

RANDOM_WEIGHTS_BANNER = (
    '<div id="random-weights-banner" style="background:#b91c1c;color:white;padding:10px 14px;'
    'border-radius:6px;font-weight:600">&#9888; random weights: masks are meaningless. '
    "This model was started without trained weights (--random-weights); pass --checkpoint PATH "
    "or put the official weights in the Hugging Face cache to get real masks.</div>"
)

BUNDLED_BANNER = (
    '<div id="bundled-weights-banner" style="background:#1d4ed8;color:white;padding:10px 14px;'
    'border-radius:6px;font-weight:600">&#9432; bundled model: trained on synthetic scenes by '
    "this package, not the official EfficientViT-SAM weights. It segments simple objects; pass "
    "--checkpoint PATH (or put the official weights in the Hugging Face cache) for real "
    "photos.</div>"
)

HELP = (
    "**point**: click = foreground point (tick *background point* for background). "
    "**box**: click two opposite corners. **everything**: automatic masks for the whole image."
)


def example_images() -> list[Path]:
    """The bundled example photos (``demo/examples/*.jpg``), sorted by name."""
    return sorted(EXAMPLES_DIR.glob("*.jpg"))


NO_SESSION = "upload an image (or pick an example) first"
SESSION_EXPIRED = ("session expired: this tab's image was dropped (idle too long, or the server "
                   "made room for other users); upload the image again")
"""What a tab that had uploaded is told once Gradio has dropped its state (``--session-ttl``
idle seconds, or beyond ``--max-sessions``)."""


def _user_errors(fn: Callable) -> Callable:
    """Show ``ValueError``/``TypeError`` from a handler as a message on the page."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:  # already a message (gr.Error is itself a ValueError)
            raise
        except (ValueError, TypeError) as err:
            raise gr.Error(str(err)) from err

    return wrapper


def build_app(backend: DemoBackend, *, session_ttl: float = 1800.0,
              examples: Sequence[Path] | None = None,
              tracker: SessionTracker | None = None) -> gr.Blocks:
    """The demo page for ``backend``; launch it with :func:`demo.cli.launch` or ``.launch()``.

    ``session_ttl``: seconds an idle tab's image and embedding are kept before being dropped.
    ``tracker`` records which tabs uploaded (a new one by default; pass one to count live
    sessions from outside, as the tests do).
    """
    examples = example_images() if examples is None else list(examples)
    tracker = SessionTracker() if tracker is None else tracker

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

    def live(session: DemoSession | None, request: gr.Request) -> DemoSession | None:
        """The tab's session, ``None`` if it never uploaded; raises if its state was dropped."""
        if session is not None and session.predictor is not None:
            return session
        if tracker.uploaded(request.session_hash):
            raise gr.Error(SESSION_EXPIRED)
        return None

    def require(session: DemoSession | None, request: gr.Request) -> DemoSession:
        session = live(session, request)
        if session is None:
            raise gr.Error(NO_SESSION)
        return session

    @_user_errors
    def on_upload(upload: dict | None, session: DemoSession | None,
                  request: gr.Request) -> tuple:
        # ``upload`` is Gradio's undecoded file record ({"path", "orig_name", ...}): see
        # demo.upload for why the page decodes it itself.
        if upload is None:  # the upload was cleared
            close_session(session)
            tracker.forget(request.session_hash)
            return view(None)
        name = upload.get("orig_name") or "the upload"
        if not upload.get("path"):
            raise gr.Error(f"{name} reached the server without its file: upload it again")
        image = backend.read_upload(upload["path"], name=name)
        session = backend.new_session(image, previous=session)
        tracker.opened(request.session_hash, session)
        return view(session)

    @_user_errors
    def on_click(session: DemoSession | None, x: float, y: float, mode: str, background: bool,
                 multimask: bool, request: gr.Request) -> tuple:
        session = backend.click(require(session, request), x, y, mode=mode,
                                background=background, multimask=multimask)
        return view(session)

    def on_select(session: DemoSession | None, mode: str, background: bool, multimask: bool,
                  evt: gr.SelectData, request: gr.Request) -> tuple:
        # SelectData.index is (x, y) in the displayed image's own pixels, which is the original
        # frame: the overlay is always drawn at the uploaded image's size.
        x, y = evt.index
        return on_click(session, x, y, mode, background, multimask, request)

    @_user_errors
    def on_mode(session: DemoSession | None, mode: str, request: gr.Request) -> tuple:
        session = live(session, request)
        if session is None:  # choosing a mode before uploading is fine
            return view(None)
        if mode == "everything":
            return view(backend.everything(session))
        if session.everything:  # leaving "everything": its masks do not belong to any prompt
            backend.clear(session)
        return view(session)

    @_user_errors
    def on_multimask(session: DemoSession | None, multimask: bool,
                     request: gr.Request) -> tuple:
        session = live(session, request)
        if session is None or session.everything:
            return view(session)
        return view(backend.decode(session, multimask=multimask))

    @_user_errors
    def on_undo(session: DemoSession | None, multimask: bool, request: gr.Request) -> tuple:
        return view(backend.undo(require(session, request), multimask=multimask))

    @_user_errors
    def on_clear(session: DemoSession | None, request: gr.Request) -> tuple:
        return view(backend.clear(require(session, request)))

    @_user_errors
    def on_choose(session: DemoSession | None, index: int | None,
                  request: gr.Request) -> tuple:
        if index is None:
            return view(session)
        return view(backend.select(require(session, request), int(index)))

    def on_close(request: gr.Request) -> None:
        # The tab is gone: free its image and embedding now. It stays "uploaded" in the tracker,
        # so a tab that was only disconnected and comes back is told its session expired.
        close_session(tracker.session(request.session_hash))

    @_user_errors
    def on_export(session: DemoSession | None, request: gr.Request) -> tuple[str, str]:
        png, js = backend.export(require(session, request))
        return str(png), str(js)

    with gr.Blocks(title="EfficientViT-SAM demo", analytics_enabled=False,
                   delete_cache=(600, int(session_ttl))) as app:
        gr.HTML(RANDOM_WEIGHTS_BANNER, visible=backend.random_weights)
        gr.HTML(BUNDLED_BANNER, visible=backend.bundled)
        gr.Markdown(f"## EfficientViT-SAM · {backend.model_name}\n{HELP}")
        state = gr.State(None, time_to_live=session_ttl, delete_callback=close_session)
        with gr.Row():
            with gr.Column(scale=1):
                # type/image_mode: the handler gets the file itself, undecoded (preprocess=False)
                upload = gr.Image(label="image", type="filepath", image_mode=None,
                                  sources=["upload"], elem_id="upload")
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
        upload.change(on_upload, [upload, state], views, api_name="upload", preprocess=False)
        overlay.select(on_select, [state, mode, background, multimask], views, api_name=False)
        api_click.click(on_click, [state, api_x, api_y, mode, background, multimask], views,
                        api_name="click")
        mode.change(on_mode, [state, mode], views, api_name="set_mode")
        multimask.input(on_multimask, [state, multimask], views, api_name="set_multimask")
        undo.click(on_undo, [state, multimask], views, api_name="undo")
        clear.click(on_clear, [state], views, api_name="clear")
        choice.input(on_choose, [state, choice], views, api_name="select")
        export.click(on_export, [state], [png_file, json_file], api_name="export")
        app.unload(on_close)
    return app
