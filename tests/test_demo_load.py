"""The demo under load: many ``gradio_client`` sessions at once (``demo.load_test``) against a
server in this process (so the test can count the embeddings it holds), eviction by
``--max-sessions`` and by ``--session-ttl``, and the load test's own leak checks."""

from __future__ import annotations

import gc
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio_client")

from demo import load_test  # noqa: E402
from demo.app import SESSION_EXPIRED, build_app  # noqa: E402
from demo.load_checks import check_overlay, check_point_export, made_image  # noqa: E402
from demo.load_server import free_port  # noqa: E402
from demo.render import coco_records, mask_png_bytes, render_overlay  # noqa: E402
from demo.session import DemoBackend, SessionTracker  # noqa: E402
from effvit_sam import build_sam  # noqa: E402


@pytest.fixture(scope="module")
def backend():
    return DemoBackend(model=build_sam("efficientvit-sam-tiny"), model_name="tiny",
                       weights="random weights", random_weights=True, points_per_side=4)


def _png(image: np.ndarray) -> Path:
    path = Path(tempfile.mkdtemp()) / "image.png"
    Image.fromarray(image).save(path)
    return path


def launch(backend, *, max_sessions: int, session_ttl: float):
    """The page on a free loopback port in this process; returns it and its tracker."""
    tracker = SessionTracker()
    app = build_app(backend, session_ttl=session_ttl, examples=[], tracker=tracker)
    app.queue()
    app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
               state_session_capacity=max_sessions, quiet=True)
    return app, tracker


def test_four_sessions_on_three_slots(backend, tmp_path, monkeypatch):
    # No tab closes during the run (a closing tab frees its embedding: see the next test).
    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "600")
    app, tracker = launch(backend, max_sessions=3, session_ttl=1800)
    try:
        code = load_test.main(["--url", app.local_url, "--sessions", "4", "--clicks", "3",
                               "--idle", "1", "--max-sessions", "3", "--timeout", "300",
                               "--json", str(tmp_path / "report.json")])
        gc.collect()
        held = tracker.alive()
    finally:
        app.close()
    r = json.loads((tmp_path / "report.json").read_text())
    assert r["errors"] == [] and r["leaks"] == [] and code == 0
    idle, *active = r["users"]
    # Three users fit: they did everything and were never told their session expired.
    assert all(u["completed"] for u in active)
    assert [len(u["click_ms"]) for u in active] == [3, 3, 3]
    # The first tab, idle while the others worked, was the least recently used: evicted, and
    # told so on its next click.
    assert not idle["completed"] and idle["alive"] is False and idle["served"] == 1
    assert idle["expired"][0] == SESSION_EXPIRED == r["expired_message"]
    # The counts add up: every user ends alive or evicted, never more alive than the slots.
    assert r["alive"] + r["evicted"] == 4 and 1 <= r["alive"] <= 3
    assert r["requests_served"] == 3 * 7 + 1 + r["alive"]  # active: 7 each; idle: its upload
    assert r["expired_answers"] == 1 + r["evicted"]  # the idle tab's click + each failed probe
    assert r["clicks"] == 9 and r["click_ms_p50"] <= r["click_ms_p95"]
    # Memory is bounded: the server holds exactly the embeddings of the tabs still alive.
    assert held == r["alive"]


def test_an_idle_session_expires_after_the_ttl(backend):
    app, tracker = launch(backend, max_sessions=8, session_ttl=1.0)
    try:
        (user,) = load_test.run_users(app.local_url, sessions=1, clicks=2, idle=1,
                                      idle_seconds=3.5, timeout=120)
        held = tracker.alive()
    finally:
        app.close()
    assert user.errors == [] and user.leaks == []
    assert user.served == 1 and user.expired == [SESSION_EXPIRED] * 2  # the click and the probe
    assert user.alive is False and not user.completed
    assert held == 0  # the TTL's delete callback freed the embedding


def test_closing_the_tab_frees_its_embedding(backend, monkeypatch):
    from gradio_client import Client, handle_file

    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.2")  # notice the closed tab quickly
    app, tracker = launch(backend, max_sessions=8, session_ttl=1800)
    try:
        tabs = [Client(app.local_url, verbose=False) for _ in range(2)]
        image = made_image(0)
        for tab in tabs:
            tab.predict(handle_file(str(_png(image))), api_name="/upload")
        assert tracker.alive() == 2
        tabs[0].close()
        deadline = time.monotonic() + 30
        while tracker.alive() > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tracker.alive() == 1  # the closed tab's, not the open one's
        tabs[1].predict(5, 5, "point", False, True, api_name="/click")
    finally:
        app.close()


def test_made_images_are_all_different():
    shapes = {made_image(i).shape for i in range(50)}
    assert len(shapes) == 50


def test_the_leak_checks_catch_another_sessions_answers(tmp_path):
    mine, theirs = made_image(0), made_image(1)
    save = {}
    for name, array in {"mine": mine, "theirs": theirs}.items():
        save[name] = tmp_path / f"{name}.png"
        Image.fromarray(array).save(save[name])
    assert check_overlay(save["mine"], mine, exact=True) == []
    assert "the user's image is 120x90" in check_overlay(save["theirs"], mine, exact=False)[0]
    # Same size, one foreign patch: caught pixel by pixel, prompts drawn or not.
    patched = mine.copy()
    patched[:4, :4] = theirs[:4, :4]
    Image.fromarray(patched).save(tmp_path / "patched.png")
    assert check_overlay(tmp_path / "patched.png", mine, exact=False) == \
        ["16 overlay pixels are not the user's image"]
    # A point-mode export: fine with the user's own clicks, a leak with anyone else's.
    mask = np.zeros(mine.shape[:2], bool)
    mask[20:60, 30:90] = True
    from demo.prompts import Point, Prompts

    prompts = Prompts(points=(Point(40.0, 30.0, 1),))
    overlay = tmp_path / "overlay.png"
    Image.fromarray(render_overlay(mine, mask[None], prompts)).save(overlay)
    png = tmp_path / "mask.png"
    png.write_bytes(mask_png_bytes(mask))
    doc = {"image_size": [90, 120], "annotations": coco_records(mask[None], prompts=prompts)}
    js = tmp_path / "masks.json"
    js.write_text(json.dumps(doc))
    assert check_point_export(str(png), str(js), mine, [(40, 30, 1)], overlay) == []
    problems = check_point_export(str(png), str(js), mine, [(41, 30, 1)], overlay)
    assert "are not the user's clicks" in problems[0]


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(100, 0, -1)]
    assert load_test.percentile(values, 50) == 50.0 and load_test.percentile(values, 95) == 95.0
    assert load_test.percentile([7.0], 95) == 7.0 and load_test.percentile([], 50) is None
