"""The running demo: ``python -m demo`` on a free localhost port, driven by gradio_client and by a
real Chromium through Playwright (skipped where no Chromium is installed)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo.app import SESSION_EXPIRED
from demo.load_server import free_port, start_server, stop_server
from effvit_sam.errors import UserError
from effvit_sam.masks import rle_to_mask
from effvit_sam.visualize import (
    BACKGROUND,
    BOX_COLOR,
    FOREGROUND,
    OUTLINE,
    distinct_colors,
)

from .demo_files import image_modes, malformed_uploads

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

MAX_SESSIONS = 3
SHARED_SESSIONS = 64
MARKER_COLORS = [np.array(c, np.uint8) for c in (FOREGROUND, BACKGROUND, BOX_COLOR, OUTLINE)]
STARTUP_S = 240  # importing torch + gradio on a busy 2-core machine
EXAMPLE = Path(__file__).resolve().parents[1] / "demo" / "examples" / "shapes.jpg"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _serve(max_sessions: int):
    """The demo CLI with the tiny model and random weights; yields its printed URL."""
    port = free_port()
    try:
        proc, url = start_server(model="efficientvit-sam-tiny", port=port, points_per_side=4,
                                 max_sessions=max_sessions, startup_s=STARTUP_S)
    except UserError as err:
        pytest.fail(str(err))
    yield {"url": url, "port": port, "log": proc.log}
    code = stop_server(proc)
    assert code == 0, "the demo should shut down cleanly on SIGTERM:\n" + "".join(proc.log)


@pytest.fixture(scope="module")
def server():
    # Room for every session of the module's tests at once: Gradio keeps the states in one LRU
    # for the whole server, and every event of a session it does not hold makes a new one, so
    # late events of an earlier test's clients (their tabs closing, on a loaded machine) must
    # not evict a later test's session (with room for 3 they did, beside a training run).
    yield from _serve(SHARED_SESSIONS)


@pytest.fixture()
def small_server():
    """A server of its own for the capacity test, so no other test's clients count."""
    yield from _serve(MAX_SESSIONS)


def _solid(path: Path, size_wh: tuple[int, int], color: tuple[int, int, int]) -> Path:
    Image.new("RGB", size_wh, color).save(path)  # PNG: lossless, so pixels can be compared
    return path


def _image(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _client(server) -> Client:
    return Client(server["url"], verbose=False)


def _own_pixels(overlay: np.ndarray, color: tuple[int, int, int]) -> float:
    """Share of pixels explained by an image of plain ``color`` under the first mask colour:
    the colour itself, the 50% blend inside the mask, the mask colour on its outline, or the
    prompt markers' colours."""
    mask_color = distinct_colors(1)[0]
    blend = np.rint(0.5 * np.array(color) + 0.5 * mask_color).astype(np.uint8)
    explained = np.zeros(overlay.shape[:2], bool)
    for c in (np.array(color, np.uint8), blend, mask_color, *MARKER_COLORS):
        explained |= (overlay == c).all(-1)
    return float(explained.mean())


def _shows(overlay: np.ndarray, color: tuple[int, int, int]) -> bool:
    """Whether any pixel is ``color``, plain or under the first mask colour."""
    blend = np.rint(0.5 * np.array(color) + 0.5 * distinct_colors(1)[0]).astype(np.uint8)
    return bool(((overlay == np.array(color, np.uint8)).all(-1) | (overlay == blend).all(-1)).any())


def test_cli_prints_the_local_url_and_the_page_warns_about_random_weights(server):
    assert server["url"] == f"http://127.0.0.1:{server['port']}/"
    with urllib.request.urlopen(server["url"] + "config", timeout=30) as r:
        config = json.load(r)
    banners = [c["props"] for c in config["components"]
               if "random weights: masks are meaningless" in str(c["props"].get("value", ""))]
    assert banners and banners[0].get("visible", True) is True


def test_sessions_beyond_capacity_are_dropped(small_server, tmp_path):
    server = small_server
    image = _solid(tmp_path / "s.png", (32, 32), (90, 90, 90))
    clients = [_client(server) for _ in range(MAX_SESSIONS + 1)]
    for c in clients:
        c.predict(handle_file(str(image)), api_name="/upload")
    # The least recently used session lost its image and embedding, and is told so; the newest
    # kept them.
    with pytest.raises(Exception, match=re.escape(SESSION_EXPIRED)):
        clients[0].predict(5, 5, "point", False, True, api_name="/click")
    clients[-1].predict(5, 5, "point", False, True, api_name="/click")


@pytest.mark.parametrize("random_weights", [True, False])
def test_the_banner_shows_exactly_when_the_weights_are_random(random_weights):
    import gradio as gr

    from demo.app import build_app
    from demo.session import DemoBackend
    from effvit_sam import build_sam

    backend = DemoBackend(model=build_sam("efficientvit-sam-tiny"), model_name="tiny",
                          weights="w", random_weights=random_weights)
    app = build_app(backend, examples=[])
    (banner,) = [b for b in app.blocks.values()
                 if isinstance(b, gr.HTML) and "masks are meaningless" in b.value]
    assert banner.visible is random_weights


def test_two_clients_never_see_each_other(server, tmp_path):
    red, blue = (200, 30, 30), (30, 30, 200)
    a_img = _solid(tmp_path / "a.png", (160, 120), red)
    b_img = _solid(tmp_path / "b.png", (100, 140), blue)
    a, b = _client(server), _client(server)
    a.predict(handle_file(str(a_img)), api_name="/upload")
    b.predict(handle_file(str(b_img)), api_name="/upload")
    # (150, 110) lies inside A's 160x120 image but outside B's 100x140 one.
    a_out = a.predict(150, 110, "point", False, True, api_name="/click")
    b.predict(10, 10, "box", False, True, api_name="/click")
    b_out = b.predict(90, 130, "box", False, True, api_name="/click")
    a_overlay, b_overlay = _image(a_out[0]), _image(b_out[0])
    assert a_overlay.shape == (120, 160, 3) and b_overlay.shape == (140, 100, 3)
    assert _own_pixels(a_overlay, red) > 0.95 and _own_pixels(b_overlay, blue) > 0.95
    assert not _shows(a_overlay, blue) and not _shows(b_overlay, red)
    assert "encoder" in a_out[2] and "decoder" in a_out[2]
    a_doc = json.loads(Path(a.predict(api_name="/export")[1]).read_text())
    b_doc = json.loads(Path(b.predict(api_name="/export")[1]).read_text())
    assert a_doc["image_size"] == [120, 160] and b_doc["image_size"] == [140, 100]
    assert a_doc["annotations"][0]["point_coords"] == [[150.0, 110.0]]
    assert a_doc["annotations"][0]["box"] is None
    assert b_doc["annotations"][0]["box"] == [10.0, 10.0, 90.0, 130.0]
    assert b_doc["annotations"][0]["point_coords"] == []


def test_prompt_editing_and_export_through_the_api(server, tmp_path):
    image = _solid(tmp_path / "g.png", (64, 48), (40, 160, 60))
    c = _client(server)
    c.predict(handle_file(str(image)), api_name="/upload")
    c.predict(10, 10, "point", False, True, api_name="/click")
    _, choice, *_ = c.predict(50, 30, "point", True, True, api_name="/click")
    assert [i for _, i in choice["choices"]] == [0, 1, 2] and choice["visible"]
    c.predict(api_name="/undo")
    _, choice, *_ = c.predict(0, api_name="/select")
    assert choice["value"] == 0
    png, js = c.predict(api_name="/export")
    doc = json.loads(Path(js).read_text())
    (rec,) = doc["annotations"]
    assert rec["point_coords"] == [[10.0, 10.0]] and rec["point_labels"] == [1]
    np.testing.assert_array_equal(np.asarray(Image.open(png)) > 0,
                                  rle_to_mask(rec["segmentation"]))
    overlay, choice, _, png_slot, json_slot = c.predict(api_name="/clear")
    assert png_slot is None and json_slot is None  # stale downloads are removed from the page
    np.testing.assert_array_equal(_image(overlay), _image(str(image)))  # nothing drawn
    assert not choice["visible"]


def test_everything_mode_through_the_api(server):
    c = _client(server)
    c.predict(handle_file(str(EXAMPLE)), api_name="/upload")
    overlay, _, status, *_ = c.predict("everything", api_name="/set_mode")
    assert "**everything**" in status and re.search(r"\*\*\d+ masks\*\*", status)
    assert _image(overlay).shape == (360, 480, 3)
    png, js = c.predict(api_name="/export")
    doc = json.loads(Path(js).read_text())
    labels = np.asarray(Image.open(png))
    assert labels.max() == len(doc["annotations"])  # label i+1 = i-th annotation


def test_user_errors_are_messages(server):
    c = _client(server)
    with pytest.raises(Exception, match="upload an image"):
        c.predict(5, 5, "point", False, True, api_name="/click")
    c.predict(handle_file(str(EXAMPLE)), api_name="/upload")
    with pytest.raises(Exception, match="outside the 480x360 image"):
        c.predict(500, 5, "point", False, True, api_name="/click")


def test_malformed_uploads_are_messages_and_the_session_lives_on(server, tmp_path):
    first = _solid(tmp_path / "first.png", (64, 48), (20, 120, 220))
    c = _client(server)
    c.predict(handle_file(str(first)), api_name="/upload")
    for case, (path, message) in malformed_uploads(tmp_path).items():
        with pytest.raises(Exception, match=message):
            c.predict(handle_file(str(path)), api_name="/upload")
        # The refused file left the tab as it was: its image, embedding and prompts still work.
        overlay, _, status, *_ = c.predict(10, 10, "point", False, True, api_name="/click")
        assert _image(overlay).shape == (48, 64, 3), case
        assert "**decoder**" in status, case
    second = _solid(tmp_path / "second.png", (50, 70), (200, 200, 30))
    overlay, *_ = c.predict(handle_file(str(second)), api_name="/upload")
    np.testing.assert_array_equal(_image(overlay), _image(str(second)))
    with pytest.raises(Exception, match="no mask to export yet"):
        c.predict(api_name="/export")


def test_greyscale_rgba_16bit_and_palette_uploads_are_shown_as_rgb(server, tmp_path):
    c = _client(server)
    for mode, (path, expected) in image_modes(tmp_path).items():
        overlay, *_ = c.predict(handle_file(str(path)), api_name="/upload")
        np.testing.assert_array_equal(_image(overlay), expected, err_msg=mode)
        overlay, _, status, *_ = c.predict(5, 5, "point", False, True, api_name="/click")
        assert _image(overlay).shape == expected.shape and "**decoder**" in status, mode


# -- real browser --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def _save_screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    stable = os.environ.get("EFFVIT_SCREENSHOT_DIR")
    if stable:
        Path(stable).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(stable) / name)
    return path


def _open_with_example(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server["url"], timeout=120_000)
    page.locator("#upload input[type=file]").set_input_files(str(EXAMPLE))
    page.wait_for_selector("#overlay img", timeout=120_000)
    return page


def _click_image(page, x: float, y: float, *, size=(480, 360)) -> None:
    """Click the overlay at image pixel ``(x, y)`` and wait until the overlay is redrawn."""
    img = page.locator("#overlay img")
    src = img.get_attribute("src")
    box = img.bounding_box()
    img.click(position={"x": x * box["width"] / size[0], "y": y * box["height"] / size[1]})
    page.wait_for_function("s => document.querySelector('#overlay img').src !== s", arg=src,
                           timeout=120_000)


def _overlay_pixels(page) -> np.ndarray:
    src = page.locator("#overlay img").get_attribute("src")
    body = page.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


@pytest.mark.slow
def test_browser_point_click_draws_a_mask_and_the_star(browser, server, tmp_path):
    page = _open_with_example(browser, server)
    assert page.locator("#random-weights-banner").is_visible()
    _click_image(page, 130, 160)
    pixels = _overlay_pixels(page)
    assert pixels.shape == (360, 480, 3)
    assert tuple(pixels[160, 130]) == FOREGROUND  # the star's centre, where we clicked
    page.wait_for_selector("#status :text('decoder')", timeout=30_000)
    shot = _save_screenshot(page, tmp_path, "demo_point.png")
    assert shot.stat().st_size > 10_000
    # The background toggle gives a red star; "undo last prompt" takes it away again.
    page.locator("#background label").click()
    _click_image(page, 400, 300)
    assert tuple(_overlay_pixels(page)[300, 400]) == BACKGROUND
    src = page.locator("#overlay img").get_attribute("src")
    page.locator("#undo").click()
    page.wait_for_function("s => document.querySelector('#overlay img').src !== s", arg=src,
                           timeout=120_000)
    pixels = _overlay_pixels(page)
    assert tuple(pixels[300, 400]) != BACKGROUND and tuple(pixels[160, 130]) == FOREGROUND
    page.close()


@pytest.mark.slow
def test_browser_box_from_two_clicks(browser, server, tmp_path):
    page = _open_with_example(browser, server)
    page.locator("#mode label", has_text="box").click()
    _click_image(page, 250, 60)  # first corner: a yellow cross appears
    _click_image(page, 420, 170)
    pixels = _overlay_pixels(page)
    top_edge = pixels[58:63, 300:370].reshape(-1, 3)
    assert (top_edge == np.array(BOX_COLOR)).all(-1).sum() > 50  # the box's top side
    _save_screenshot(page, tmp_path, "demo_box.png")
    page.close()
